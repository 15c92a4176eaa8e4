"""More engine edge cases on the fake clock: the balancer's loop, dry run, damaged records,
the write path's own conflicts, the leader's single-request renewal, and log lines."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import attrs
import pytest
from prometheus_client import REGISTRY

from asklepios.core.balance import OwnerRef, PodView
from asklepios.core.node import NodeView
from asklepios.core.records import KICKOUT_ANNOTATION, NodeRecord
from asklepios.engine.balancer import ROUND_GAP, Balancer
from asklepios.engine.gate import CaughtUpGate
from asklepios.engine.leader import LeaderElector
from asklepios.engine.records import RecordBook
from asklepios.kube.client import ApiError, Conflict
from asklepios.kube.lease import LeaseRecord
from tests.unit.fakes import FakeEvents, FakeGate, FakeRecords, LoopClock
from tests.unit.world import World, running, settings, until

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]
STS = OwnerRef("StatefulSet", "db", "uid-sts")


# --- the balancer ---------------------------------------------------------------------------
@attrs.define(eq=False)
class FakeEvictions:
    """Evictions: the test decides where the scheduler puts the replacement."""

    balancer: Balancer | None = None
    land_on: str = "n2"
    evicted: list[str] = attrs.Factory(list)
    counter: int = 0

    async def statefulset_replicas(self, namespace: str, name: str) -> int:
        await anyio.lowlevel.checkpoint()
        return 3

    async def evict(self, pod: PodView, timeout: float) -> None:
        await anyio.lowlevel.checkpoint()
        assert self.balancer is not None
        self.evicted.append(pod.name)
        self.counter += 1
        replacement = attrs.evolve(pod, uid=f"{pod.uid}-{self.counter}", node=self.land_on)
        self.balancer.pods[pod.key] = replacement  # the StatefulSet recreates it; the scheduler places it


def db_pod(name: str, node: str) -> PodView:
    return PodView.of(
        "ns", name, f"uid-{name}", node, STS, created=datetime(2026, 1, 1, tzinfo=UTC).timestamp(), ready=True
    )


def balancer_world(**overrides: object) -> tuple[Balancer, FakeEvictions, FakeEvents]:
    nodes = {n: NodeView(name=n) for n in ("n1", "n2", "n3")}
    evictions, events = FakeEvictions(), FakeEvents()
    balancer = Balancer(
        settings=settings(balancer=True, **overrides),
        evictions=evictions,  # type: ignore[arg-type]
        events=events,
        nodes=lambda: nodes,
        clock=LoopClock(),
    )
    evictions.balancer = balancer
    for pod in (db_pod("db-0", "n1"), db_pod("db-1", "n3"), db_pod("db-2", "n3")):
        balancer.pods[pod.key] = pod
    return balancer, evictions, events


async def test_a_move_is_checked_where_it_landed() -> None:
    balancer, evictions, events = balancer_world()
    await balancer.round()
    assert evictions.evicted == ["db-2"]
    await balancer.round()
    assert [(e.reason, e.message) for e in events.emitted] == [
        ("PodRebalanced", "moved from n3 to n2 (target n2)"),
        ("PodRebalanced", "db-2 moved from n3 to n2 (target n2)"),
    ]
    await balancer.round()
    assert evictions.evicted == ["db-2"]  # spread: nothing more to do


async def test_a_replacement_back_on_the_crowded_node_backs_off_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 12.4: the scheduler puts it back; the next rounds must not evict it every 10 s."""
    monkeypatch.setattr("asklepios.engine.retry.random.uniform", lambda low, high: high)  # no jitter
    balancer, evictions, events = balancer_world()
    evictions.land_on = "n3"
    for _ in range(30):  # five minutes of rounds
        await balancer.round()
        await anyio.sleep(10)
    assert evictions.evicted == ["db-2", "db-2", "db-2"]  # backoff 1 min, 2 min, 4 min
    failed = [e for e in events.emitted if e.reason == "RebalanceFailed"]
    assert len(failed) == 3 and all(e.warning for e in failed) and "landed on n3" in failed[0].message


async def test_evictions_per_hour_are_capped() -> None:
    balancer, evictions, _ = balancer_world(balancer_max_moves_per_hour=2)
    for pod in ("db-0", "db-1", "db-2"):
        balancer.pods[f"ns/{pod}"] = db_pod(pod, "n3" if pod != "db-0" else "n1")
    evictions.land_on = "n2"
    await balancer.round()
    await balancer.round()
    balancer.pods["ns/db-2"] = db_pod("db-2", "n2")
    balancer.pods["ns/db-1"] = db_pod("db-1", "n2")  # doubled up again (someone moved it)
    await balancer.round()
    await balancer.round()
    balancer.pods["ns/db-1"] = db_pod("db-1", "n2")
    balancer.pods["ns/db-2"] = db_pod("db-2", "n2")
    await balancer.round()
    assert len(evictions.evicted) == 2  # the third within the hour is refused


@attrs.define(eq=False)
class TriggeredDuringItsRound(Balancer):
    rounds: list[float] = attrs.Factory(list)

    async def round(self) -> None:
        self.rounds.append(anyio.current_time())
        if len(self.rounds) == 1:
            self.trigger()  # arrives while this round runs
        await super().round()


async def test_a_trigger_during_a_round_is_not_lost() -> None:
    balancer = TriggeredDuringItsRound(
        settings=settings(resync_seconds=3600),
        evictions=FakeEvictions(),  # type: ignore[arg-type]
        events=FakeEvents(),
        nodes=dict,
    )
    rounds = balancer.rounds
    async with anyio.create_task_group() as tg:
        tg.start_soon(balancer.run)
        await anyio.lowlevel.checkpoint()
        balancer.trigger()
        await until(lambda: len(rounds) >= 2, 5, "a second round right away")
        tg.cancel_scope.cancel()
    assert ROUND_GAP <= rounds[1] - rounds[0] < ROUND_GAP + 1  # right after the gap between rounds


async def test_the_kickin_triggers_a_round_that_sees_the_kickin() -> None:
    """Issue 12.9: the round is triggered from the node cache, after it has the kicked-in node,
    and only once node-lifecycle has removed its cordon taint (until then the scheduler would
    put an evicted pod back next to its sibling: found by bench/recovery.py)."""
    w = World(settings())
    w.add("a", "b", "c")
    seen: list[tuple[str, bool]] = []
    w.healer.on_schedulable = lambda name: seen.append((name, w.healer.views[name].takes_new_pods))
    mirror = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        w.cluster.edit("b", {"spec": {"taints": [*w.cluster.objects["b"]["spec"]["taints"], mirror]}})
        w.back("b")
        await until(lambda: w.healer.views["b"].kickout is None, 70, "kickin")
        await anyio.sleep(5)
        assert seen == []  # kicked in, but the cordon's taint is still there
        w.cluster.edit("b", {"spec": {"taints": []}})  # node-lifecycle saw the uncordon
        await until(lambda: bool(seen), 5, "trigger")
    assert seen == [("b", True)]


# --- the healer's write path and what it says ----------------------------------------------
async def test_marks_are_guarded_and_our_own_writes_never_conflict_with_themselves() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    w.cluster.deliver = False  # no watch events: only what our patches return updates the cache
    async with running(w):
        w.power_cut("b")
        w.cluster.relist()
        await until(lambda: w.has_taint("b"), 70, "kickout")
    bodies = [x.body for x in w.cluster.writes]
    assert all("resourceVersion" in b["metadata"] for b in bodies)
    assert w.cluster.gets == 0  # no 409 re-read was ever needed


async def test_dry_run_decides_announces_once_and_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    w = World(settings(dry_run=True))
    w.add("a", "b", "c")
    caplog.set_level(logging.INFO, logger="asklepios")
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(120)
    assert w.cluster.writes == []
    assert [(e.reason, e.message.split(":")[0]) for e in w.events.emitted] == [("KickoutHeld", "dry run")]
    held = [r for r in caplog.records if r.getMessage() == "kickout held"]
    assert len(held) == 1  # one line per change, not per resync


@pytest.mark.parametrize("annotation", ['{"at":"2026-11-27T03:00:00Z","cordoned":true,"tainted":true}', "{not json"])
async def test_a_forged_or_damaged_annotation_never_undoes_an_admins_quarantine(annotation: str) -> None:
    """Issue 20: the node writes a kickout record of its own on an admin's quarantine, then reports Ready."""
    w = World(settings())
    w.add("a", "b", "c")
    quarantine = {
        "unschedulable": True,
        "taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}],
    }
    w.cluster.edit("b", {"metadata": {"annotations": {KICKOUT_ANNOTATION: annotation}}, "spec": quarantine})
    async with running(w):
        await until(lambda: w.cluster.view("b").mirror is None, 5, "the forged mirror removed (no record of ours)")
        await anyio.sleep(3 * 70)
    view = w.cluster.view("b")
    assert view.unschedulable and view.has_out_of_service_taint and w.record("b") is None
    undone = [x for x in w.cluster.writes if "spec" in x.body]
    assert undone == []


async def test_a_damaged_entry_in_our_records_is_skipped_and_counted_never_undone() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    w.cluster.edit("b", {"spec": {"unschedulable": True}})
    w.records.data["node.b"] = "[" * 100_000  # an admin's slip, or worse
    before = REGISTRY.get_sample_value("asklepios_objects_skipped_total", {"kind": "record"}) or 0.0
    w.healer = w.build()
    async with running(w):
        await anyio.sleep(90)
    assert w.cluster.view("b").unschedulable and w.cluster.writes == []
    assert REGISTRY.get_sample_value("asklepios_objects_skipped_total", {"kind": "record"}) == before + 1


async def test_repair_does_not_retaint_a_node_excluded_since() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        w.cluster.edit("b", {"metadata": {"labels": {"asklepios.io/exclude": "true"}}, "spec": {"taints": None}})
        await anyio.sleep(30)
        assert not w.has_taint("b")


# --- the leader elector ---------------------------------------------------------------------
@attrs.define(eq=False)
class FakeLease:
    record: LeaseRecord | None = None
    gets: int = 0
    writes: int = 0
    rv: int = 0

    async def get(self, timeout: float) -> LeaseRecord | None:
        await anyio.lowlevel.checkpoint()
        self.gets += 1
        return self.record

    async def write(self, **kw: object) -> LeaseRecord:
        await anyio.lowlevel.checkpoint()
        previous = kw["previous"]
        if (previous is None) != (self.record is None) or (
            previous is not None
            and self.record is not None
            and previous.resource_version != self.record.resource_version  # type: ignore[attr-defined]
        ):
            raise Conflict(409, "lease changed")
        self.writes += 1
        self.rv += 1
        self.record = LeaseRecord(
            holder=str(kw["holder"]),
            duration_seconds=int(kw["duration_seconds"]),  # type: ignore[call-overload]
            renewed=kw["now"],  # type: ignore[arg-type]
            transitions=int(kw["transitions"]),  # type: ignore[call-overload]
            resource_version=str(self.rv),
        )
        return self.record


async def test_the_leader_renews_with_one_request_and_stops_writing_in_time() -> None:
    lease, clock, started = FakeLease(), LoopClock(), []
    elector = LeaderElector(lease, "me", 15, 10, 2, on_started=lambda: started.append(1), clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(elector.run)
        await until(elector.may_write, 5, "leading")
        gets = lease.gets
        await anyio.sleep(60)
        assert lease.gets == gets  # renewals are PUTs only
        assert lease.writes >= 25
        assert started == [1] and elector.term == 1
        assert lease.record is not None
        lease.record = attrs.evolve(lease.record, holder="other", resource_version="stolen")
        lease.rv = 10_000  # another replica took it: our next PUT conflicts, the GET shows the new holder
        took = await until(lambda: not elector.may_write(), 15, "writes stopped")
        assert took <= 10
        tg.cancel_scope.cancel()


async def test_leader_gate_in_a_world_stops_writes_when_lost() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.cluster.set_ready("b", "Unknown")
        w.leases.stop("b")
        await anyio.sleep(30)
        w.gate.leader = False
        writes = len(w.cluster.writes)
        await anyio.sleep(120)
        assert len(w.cluster.writes) == writes
        assert not w.has_taint("b")
    assert not any(x.leader is False for x in w.cluster.writes)


async def test_a_new_leader_writes_nothing_from_records_older_than_its_lease() -> None:
    """The 60-minute soak's find: a replica that had just taken the Lease after an apiserver
    outage still held, from its lagging records watch, the kickout record of a node that the
    previous leader had kicked in a minute before, and wrote that node's kickout mirror again.
    A new leader reads its records afresh (a quorum GET after the gain) before any write."""
    w = World(settings(kickout_seconds=30, kickin_seconds=30))
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        lagging = w.records.snapshot()  # what the other replica's watch still shows
        w.back("b")
        await until(lambda: w.kickout("b") is None, 120, "kicked in, the kickout record cleared")
    assert not w.has_taint("b") and not w.cluster.view("b").unschedulable
    done = len(w.cluster.writes)
    w.gate.leader = False  # the replica that led is gone; the lagging one takes the Lease
    gate = CaughtUpGate(w.gate, w.records, book := RecordBook())
    w.healer = w.build(gate=gate, book=book)
    book.replace({"asklepios-records": lagging})
    gate.on_caught_up = w.healer.leadership_gained
    assert (book.of("b") or NodeRecord()).kickout is not None and not gate.may_write()
    async with running(w), anyio.create_task_group() as tg:
        tg.start_soon(gate.run)
        await anyio.sleep(5)
        w.gate.gain()
        gate.gained()
        await until(gate.may_write, 5, "caught up")
        assert (book.of("b") or NodeRecord()).kickout is None  # the quorum read replaced the lagging copy
        await anyio.sleep(60)
        tg.cancel_scope.cancel()
    assert [x.body for x in w.cluster.writes[done:] if x.node == "b"] == []
    assert w.kickout("b") is None


async def test_a_new_leader_that_cannot_read_its_records_writes_nothing() -> None:
    """The read after the gain fails (the apiserver still away): the gate stays shut, and opens
    once a read succeeds; a lost Lease in between needs a new read."""
    leader, records = FakeGate(leader=False), FakeRecords(data={"k": "v"})
    gate = CaughtUpGate(leader, records, book := RecordBook())
    records.failures = [ApiError(503, "unavailable")] * 8
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.run)
        leader.gain()
        gate.gained()
        await anyio.sleep(3)
        assert not gate.may_write() and gate.write_budget() == 0.0
        took = await until(gate.may_write, 30, "caught up once the apiserver answers")
        assert took > 0 and book.resource_version == str(records.rv)
        leader.leader = False
        leader.gain()  # lost and gained again: another leader may have written in between
        assert not gate.may_write()
        gate.gained()
        await until(gate.may_write, 5, "caught up again")
        tg.cancel_scope.cancel()
