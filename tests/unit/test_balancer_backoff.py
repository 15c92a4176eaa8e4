"""The balancer on the fake clock: refused evictions back off and stop, its ledgers live in
a record that a new leader reads, followers make no API call, and gone StatefulSets are
forgotten."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import attrs
import orjson
import pytest

from asklepios.core.balance import REFUSALS_BEFORE_GIVING_UP, MoveLedger, OwnerRef, PodView
from asklepios.core.node import NodeView
from asklepios.engine.balancer import Balancer
from asklepios.kube.client import ApiError
from tests.unit.fakes import FakeEvents, LoopClock
from tests.unit.world import settings

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]
STS = OwnerRef("StatefulSet", "db", "uid-sts")
HOUR_OF_ROUNDS = 360  # the default resync is 10 s


@attrs.define(eq=False)
class RefusingEvictions:
    """An Eviction API behind a PodDisruptionBudget that never allows a disruption."""

    status: int = 429
    evictions: int = 0
    gets: int = 0
    budget_lists: int = 0
    budget: str = "db@1"

    async def statefulset_replicas(self, namespace: str, name: str) -> int:
        await anyio.lowlevel.checkpoint()
        self.gets += 1
        return 3

    async def evict(self, pod: PodView, timeout: float) -> None:
        await anyio.lowlevel.checkpoint()
        self.evictions += 1
        raise ApiError(self.status, "Cannot evict pod as it would violate the pod's disruption budget.")

    async def budgets(self, namespace: str) -> str:
        await anyio.lowlevel.checkpoint()
        self.budget_lists += 1
        return self.budget


@attrs.define(eq=False)
class FakeRecord:
    """The ConfigMap `asklepios-balancer`: merge-patched keys."""

    data: dict[str, str] = attrs.Factory(dict)
    loads: int = 0
    writes: int = 0

    async def load(self) -> dict[str, str]:
        await anyio.lowlevel.checkpoint()
        self.loads += 1
        return dict(self.data)

    async def write(self, changes: dict[str, str | None], timeout: float) -> None:
        await anyio.lowlevel.checkpoint()
        self.writes += 1
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


@attrs.define
class Gate:
    leading: bool = True

    def may_write(self) -> bool:
        return self.leading

    def write_budget(self) -> float:
        return 10.0


def db_pod(name: str, node: str, uid: str = "") -> PodView:
    created = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    return PodView.of("ns", name, uid or f"uid-{name}", node, STS, created=created, ready=True)


def doubled_up() -> dict[str, PodView]:
    pods = (db_pod("db-0", "n1"), db_pod("db-1", "n3"), db_pod("db-2", "n3"))
    return {p.key: p for p in pods}


def balancer(
    evictions: RefusingEvictions, record: FakeRecord | None = None, gate: Gate | None = None, **overrides: object
) -> tuple[Balancer, FakeEvents]:
    nodes = {n: NodeView(name=n) for n in ("n1", "n2", "n3")}
    events = FakeEvents()
    b = Balancer(
        settings=settings(balancer=True, **overrides),
        evictions=evictions,
        events=events,
        nodes=lambda: nodes,
        gate=gate or Gate(),
        clock=LoopClock(),
        record=record,
    )
    b.pods.update(doubled_up())
    return b, events


async def rounds(b: Balancer, count: int, every: float = 10) -> None:
    for _ in range(count):
        await b.round()
        await anyio.sleep(every)


async def test_a_pdb_that_never_allows_gets_n_evictions_and_one_event_per_hour() -> None:
    evictions = RefusingEvictions()
    b, events = balancer(evictions)
    await rounds(b, HOUR_OF_ROUNDS)
    assert evictions.evictions == REFUSALS_BEFORE_GIVING_UP == 5
    assert evictions.gets == 5  # the StatefulSet is read only before an eviction
    [failed] = [e for e in events.emitted if e.reason == "RebalanceFailed"]
    assert failed.warning and failed.name == "db"
    assert "refused 5 times in a row" in failed.message and "PodDisruptionBudget" in failed.message
    # left alone: the PDBs are compared once a minute (a watch-cache list), nothing else
    assert evictions.budget_lists <= 62


async def test_refusals_back_off_exponentially_from_the_resync_period() -> None:
    evictions = RefusingEvictions(status=500)
    b, _ = balancer(evictions, resync_seconds=1)
    seen: list[float] = []
    for _ in range(200):
        before = evictions.evictions
        await b.round()
        if evictions.evictions > before:
            seen.append(anyio.current_time())
        await anyio.sleep(1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    assert len(seen) == 5
    # waits of 1, 2, 4, 8 s, jittered over the upper half, then a round's tick
    for gap, ceiling in zip(gaps, (1, 2, 4, 8), strict=True):
        assert ceiling / 2 <= gap <= ceiling + 1, gaps


async def test_a_change_of_its_pods_or_its_pdb_ends_leaving_it_alone() -> None:
    evictions = RefusingEvictions()
    b, events = balancer(evictions)
    await rounds(b, 60)
    assert evictions.evictions == 5
    b.pods["ns/db-1"] = db_pod("db-1", "n3", uid="uid-db-1-restarted")  # its pods changed
    await rounds(b, 120)
    assert evictions.evictions == 10
    evictions.budget = "db@2"  # someone relaxed the PDB
    await rounds(b, 60)  # compared once a minute
    assert evictions.evictions == 15
    assert [e.reason for e in events.emitted] == ["RebalanceFailed"] * 3


async def test_refusals_and_the_hourly_cap_survive_a_leader_change() -> None:
    record, first_gate = FakeRecord(), Gate()
    evictions = RefusingEvictions()
    first, first_events = balancer(evictions, record, first_gate)
    await rounds(first, 3, every=3)  # refusals 1, 2 (the first backoff is 5-10 s)
    refused_before = evictions.evictions
    assert 1 <= refused_before < 5
    [entry] = record.data.items()
    assert entry[0] == "ns.db" and orjson.loads(entry[1])["refusals"] == refused_before

    first_gate.leading = False
    second, second_events = balancer(evictions, record)  # the other replica takes over
    await rounds(second, HOUR_OF_ROUNDS)
    assert evictions.evictions == 5  # it went on counting from the record
    assert [e.reason for e in first_events.emitted + second_events.emitted] == ["RebalanceFailed"]

    third, third_events = balancer(evictions, record)  # and another leader change: still left alone
    await rounds(third, 60)
    assert evictions.evictions == 5 and third_events.emitted == []


async def test_the_hourly_cap_is_read_back_by_a_new_leader() -> None:
    record = FakeRecord()
    now = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    ledger = MoveLedger(name="db", moves=(now, now))
    record.data["ns.db"] = orjson.dumps(ledger.to_record("uid-sts")).decode()
    evictions = RefusingEvictions()
    b, _ = balancer(evictions, record, balancer_max_moves_per_hour=2)
    b.clock = LoopClock(base=now)
    await rounds(b, 6)
    assert evictions.evictions == 0 and evictions.gets == 0
    assert "2 evictions in the last hour" in b._said[("ns", "uid-sts")]


async def test_a_follower_makes_no_api_call_and_reads_the_record_when_it_leads() -> None:
    record, gate = FakeRecord(), Gate(leading=False)
    evictions = RefusingEvictions()
    b, events = balancer(evictions, record, gate)
    await rounds(b, 30)
    assert (evictions.gets, evictions.evictions, evictions.budget_lists, record.loads, record.writes) == (0, 0, 0, 0, 0)
    assert events.emitted == []
    gate.leading = True
    await rounds(b, 1)
    assert record.loads == 1 and evictions.evictions == 1
    gate.leading = False
    await rounds(b, 2)
    gate.leading = True  # leading again: the record may have moved on meanwhile
    await rounds(b, 1)
    assert record.loads == 2


async def test_gone_statefulsets_are_forgotten_once_the_pods_are_listed() -> None:
    record = FakeRecord()
    evictions = RefusingEvictions()
    b, _ = balancer(evictions, record)
    shard = b.shard()
    await rounds(b, 1)
    assert ("ns", "uid-sts") in b.ledgers and ("ns", "uid-sts") in b._said and "ns.db" in record.data
    b.pods.clear()  # before the pod reflector has listed, an empty cache proves nothing
    await rounds(b, 1)
    assert ("ns", "uid-sts") in b.ledgers
    shard.replace({})  # listed: the StatefulSet is gone
    await rounds(b, 1)
    assert b.ledgers == {} and b._said == {} and record.data == {}


async def test_unreadable_record_entries_are_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    good = MoveLedger(name="db", refusals=4).to_record("uid-sts")
    record = FakeRecord(
        {
            "ns.db": orjson.dumps(good).decode(),
            "ns.broken": "{not json",
            "ns.wrong": orjson.dumps({**good, "name": "wrong", "refusals": "four"}).decode(),
            "ns.other": orjson.dumps({**good, "name": "db"}).decode(),  # filed under another name
        }
    )
    evictions = RefusingEvictions()
    b, events = balancer(evictions, record)
    with caplog.at_level(logging.WARNING, logger="asklepios.balancer"):
        await rounds(b, 1)
    skipped = sorted(r.__dict__["key"] for r in caplog.records if "unreadable" in r.getMessage())
    assert skipped == ["ns.broken", "ns.other", "ns.wrong"]
    assert evictions.evictions == 1 and [e.reason for e in events.emitted] == ["RebalanceFailed"]  # 4 + 1


@attrs.define(eq=False)
class FailingRecord(FakeRecord):
    status: int = 503

    async def load(self) -> dict[str, str]:
        await anyio.lowlevel.checkpoint()
        self.loads += 1
        raise ApiError(self.status, "no")


async def test_a_record_it_cannot_read_stops_moves_unless_rbac_forbids_it() -> None:
    evictions = RefusingEvictions()
    b, _ = balancer(evictions, FailingRecord(status=503))
    await rounds(b, 3)
    assert evictions.evictions == 0  # an apiserver hiccup: wait for the record rather than forget the cap
    forbidden = RefusingEvictions()
    b, _ = balancer(forbidden, FailingRecord(status=403))
    await rounds(b, 1)
    assert forbidden.evictions == 1  # no RBAC for the record: the balancer still works, from memory
