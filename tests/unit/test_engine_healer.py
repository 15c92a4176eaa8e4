"""The healer on a fake clock against in-memory fakes: kickout, kickin and their edge cases.

Each test names the issue item it proves; each was written to fail on the healer as
it was before the fix (the one-signal kickout, the unbounded kickin wait, the
forgotten relabelled node, ...).
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import anyio
import pytest
from prometheus_client import REGISTRY

from asklepios.core.evidence import HoldReason
from asklepios.core.node import OUT_OF_SERVICE_TAINT
from asklepios.core.pod import PodRef
from asklepios.core.records import KICKOUT_ANNOTATION
from asklepios.kube.client import ApiError
from tests.unit.world import World, running, settings, until

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_power_cut_is_kicked_out_at_the_deadline_and_kicked_in_after_it_is_back() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        await anyio.sleep(5)
        cut = w.clock.now()
        w.power_cut("b")
        took = await until(lambda: w.has_taint("b"), 120, "kickout")
        assert 60 <= took <= 60.5
        view, kickout = w.cluster.view("b"), w.kickout("b")
        assert view.unschedulable and kickout is not None and not kickout.fenced
        assert kickout.since is not None and abs((kickout.since - cut).total_seconds()) < 1
        assert view.mirror == kickout.mirror()  # the annotation mirrors the record, for people
        await until(lambda: "PodsReleased" in w.events.reasons("b"), 1, "released: no pod was on it")
        w.back("b")
        took = await until(lambda: not w.has_taint("b"), 120, "kickin")
        assert 60 <= took <= 60.5
        assert w.kickout("b") is None and not w.cluster.view("b").unschedulable
        assert w.cluster.view("b").mirror is None
        assert w.events.reasons("b") == ["NodeKickedOut", "PodsReleased", "NodeKickedIn"]


async def test_ready_false_with_a_renewed_lease_is_held_kubelet_alive() -> None:
    """Issue 11: Ready=False reported by a running kubelet is not death."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.cluster.set_ready("b", "False")  # the Lease keeps being renewed
        await anyio.sleep(3 * 60)
        assert not w.has_taint("b")
        held = [e for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert len(held) == 1 and held[0].message.startswith("kubelet alive") and held[0].warning
        assert w.healer.holds() == {"b": HoldReason.KUBELET_ALIVE}
        w.leases.stop("b")  # the kubelet dies: the kickout follows once its Lease has expired
        took = await until(lambda: w.has_taint("b"), 60, "kickout once the kubelet is silent")
        assert took <= 40 + w.settings.resync_seconds + 0.5  # the fake's leaseDurationSeconds is 40


async def test_a_partitioned_node_that_answers_is_held_node_answers() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        address = w.cluster.view("b").addresses[0]
        w.probe.answering_addresses.add(address)
        w.power_cut("b")  # silent Lease, Unknown: but the node answers on 10250
        await anyio.sleep(3 * 60)
        assert not w.has_taint("b")
        held = [e for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert [e.message for e in held] == [f"node answers: answers on {address}:10250 accepted"]
        w.probe.answering_addresses.clear()
        await until(lambda: w.has_taint("b"), 15, "kickout once nothing answers")


async def test_no_lease_at_all_counts_as_silent() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    w.leases.alive.discard("b")
    async with running(w):
        w.cluster.set_ready("b", "Unknown")
        await until(lambda: w.has_taint("b"), 70, "kickout")


async def test_clock_behind_gets_a_full_countdown_both_ways() -> None:
    """Issue 12.1: a node back from a power cut with its clock an hour behind."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b", skew=-3600)
        took = await until(lambda: w.has_taint("b"), 120, "kickout")
        assert took >= 60
        w.back("b", skew=-3600)
        await anyio.sleep(1)
        assert w.has_taint("b")  # no kickin on the first Ready event
        record = w.record("b")
        assert record is not None and record.ready is not None  # the Ready period is recorded for restarts
        took = await until(lambda: not w.has_taint("b"), 120, "kickin")
        assert 59 <= took <= 60.5


async def test_restart_keeps_the_kickin_countdown() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        w.back("b", skew=-600)
        await anyio.sleep(30)
    w.healer = w.build()  # a new process: nothing in memory
    async with running(w):
        took = await until(lambda: not w.has_taint("b"), 120, "kickin after the restart")
        assert 29 <= took <= 31


async def test_held_kickout_keeps_its_mark() -> None:
    """Issue 12.5: a held node's NotReady start is recorded, so a restart keeps the countdown."""
    w = World(settings(max_unhealthy=__import__("asklepios.core.guard").core.guard.MaxUnhealthy(1, False)))
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("a")
        w.power_cut("b")
        await anyio.sleep(70)
        assert not w.has_taint("a") and not w.has_taint("b")
        for name in ("a", "b"):
            record = w.record(name)
            assert record is not None and record.notready is not None
        assert sorted(e.name for e in w.events.emitted if e.reason == "KickoutHeld") == ["a", "b"]


async def test_the_guard_does_not_count_excluded_nodes() -> None:
    """Issue 12.6: one excluded node off for maintenance must not hold everyone's kickout."""
    w = World(settings())
    w.add("a", "b")
    w.add("x", labels={"asklepios.io/exclude": "true"})
    async with running(w):
        w.power_cut("x")
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout despite the excluded node")
        assert not w.has_taint("x")
        assert not any(k.startswith("asklepios.io/") for k in w.cluster.annotations("x"))
        assert w.record("x") is None


async def test_kickin_waits_for_stuck_pods_then_is_forced() -> None:
    """Issue 12.2: a pod stuck Terminating (a finalizer) holds kickin at most the pod wait."""
    w = World(settings(kickin_pod_wait_seconds=120, force_delete=False))
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        kicked_at = w.kickout("b")
        assert kicked_at is not None and "b" in w.pods.followed
        stuck = PodRef("db", "db-0", "uid-db-0", kicked_at.at - timedelta(hours=1), kicked_at.at)
        w.pods.put("b", stuck)
        w.back("b")
        await anyio.sleep(61)
        assert w.has_taint("b")
        assert sample("asklepios_kickin_waiting_nodes") == 1
        await until(lambda: not w.has_taint("b"), 130, "forced kickin")
        forced = [e for e in w.events.emitted if e.reason == "KickinForced"]
        assert len(forced) == 1 and "db/db-0" in forced[0].message
        assert sample("asklepios_kickin_waiting_nodes") == 0


async def test_a_kicked_out_node_that_leaves_the_selector_is_kicked_in() -> None:
    """Issue 12.3: followed through the cordoned-nodes watch until it is kicked in."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        w.cluster.edit("b", {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": None}}})
        await anyio.sleep(1)
        assert "b" in w.healer.views
        w.back("b")
        await until(lambda: not w.has_taint("b"), 70, "kickin outside the selector")
        await anyio.sleep(1)
        assert "b" not in w.healer.views  # and forgotten once kicked in


async def test_fencing_powers_off_before_the_taint_and_on_after_the_pods_left() -> None:
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    url = w.credentials.data["b.url"] = "https://127.0.0.1:8443/redfish/v1/Systems/b"
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout after fencing")
        record = w.kickout("b")
        assert record is not None and record.fenced
        off = [t for t, u, what in w.bmc.log if u == url and what == "Off"]
        assert off and off[0] <= record.at + timedelta(seconds=1)
        assert [what for _, _, what in w.bmc.log][:2] == ["ForceOff", "Off"]
        w.pods.put("b")  # the pod watch has listed the node: nothing left on it
        await until(lambda: any(what == "On" for _, _, what in w.bmc.log), 30, "powered on")
        kickout = w.kickout("b")
        assert kickout is not None and kickout.released and kickout.powered_on
        assert "PodsReleased" in w.events.reasons("b")


async def test_a_partitioned_node_is_fenced_and_the_probe_asked_again() -> None:
    """With fencing, "alive but cut off" is what fencing is for; after Off nothing may answer."""
    w = World(settings(fencing="redfish"))
    url = "https://127.0.0.1:8443/redfish/v1/Systems/b"
    w.add("a", "b", "c")
    w.credentials.data["b.url"] = url
    address = w.cluster.view("b").addresses[0]
    w.probe.answering_addresses.add(address)
    w.bmc.on_power = lambda _url, state: w.probe.answering_addresses.discard(address) if state == "Off" else None
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout after fencing")
        assert [what for _, _, what in w.bmc.log][:2] == ["ForceOff", "Off"]


async def test_a_node_still_answering_after_its_bmc_said_off_is_held() -> None:
    """The Secret's row names another machine: the BMC says Off, the node answers. No taint."""
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    w.credentials.data["b.url"] = "https://127.0.0.1:8443/redfish/v1/Systems/other"
    w.probe.answering_addresses.add(w.cluster.view("b").addresses[0])
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(120)
        assert not w.has_taint("b")
        failed = [e.message for e in w.events.emitted if e.reason == "FencingFailed"]
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert not failed and held and "is the inventory row for this machine?" in held[0]


async def test_a_power_on_that_fails_is_retried_not_fatal() -> None:
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    w.credentials.data["b.url"] = "https://127.0.0.1:8443/redfish/v1/Systems/b"
    w.bmc.on_power = lambda _url, state: setattr(w.bmc, "reachable", state != "Off")  # gone once it is Off
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout after fencing")
        await until(lambda: "FencingFailed" in w.events.reasons("b"), 30, "power on failed")
        await anyio.sleep(30)  # the healer is still running (a crash would end this block)
        w.bmc.reachable = True
        await until(lambda: any(what == "On" for _, _, what in w.bmc.log), 120, "powered on after all")
        assert sample("asklepios_fencing_total", action="on", result="failed") >= 1


async def test_fencing_failures_hold_without_a_taint_and_retry() -> None:
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    w.credentials.data["b.url"] = "https://127.0.0.1:8443/redfish/v1/Systems/b"
    w.credentials.data["password"] = "wrong"
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(150)
        assert not w.has_taint("b")
        failed = [e for e in w.events.emitted if e.reason == "FencingFailed"]
        assert len(failed) == 1 and "401" in failed[0].message
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert held and held[0].startswith("fencing failed")
        w.credentials.data["password"] = "secret"
        took = await until(lambda: w.has_taint("b"), 75, "kickout once the password is right")
        assert took <= 60 + w.bmc.delay + 2  # backoff capped at 60 s


async def test_no_url_in_the_secret_holds_whatever_the_annotation_says() -> None:
    w = World(settings(fencing="redfish"))
    w.add("a", "c")
    w.add("b", annotations={"asklepios.io/bmc": "https://127.0.0.1:8443/redfish/v1/Systems/a"})  # never read
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(80)
        assert not w.has_taint("b")
        assert w.bmc.log == []  # not even asked: the annotation names no BMC for Asklepios
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert held and held[0].startswith("no BMC")
        assert "Secret kube-system/asklepios-bmc has no key b.url" in held[0]
        w.credentials.data["b.url"] = "https://127.0.0.1:1/redfish/v1/Systems/b"
        await until(lambda: w.has_taint("b"), 80, "kickout once the Secret has b.url")


async def test_terminating_pods_are_force_deleted_unless_they_tolerate_the_taint() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        record = w.kickout("b")
        assert record is not None
        old = record.at - timedelta(hours=1)
        going = PodRef("db", "db-1", "u1", old, record.at)
        tolerant = PodRef("ops", "agent", "u2", old, record.at, tolerates_out_of_service=True)
        w.pods.put("b", going, tolerant)
        await until(lambda: [p.key for p in w.pods.deleted] == ["db/db-1"], 5, "force delete")
        await anyio.sleep(30)
        assert [p.key for p in w.pods.deleted] == ["db/db-1"]


async def test_a_follower_writes_nothing_and_a_new_leader_announces_the_hold_again() -> None:
    w = World(settings())
    w.gate.leader = False
    w.add("a", "b", "c")
    async with running(w):
        w.cluster.set_ready("b", "False")
        await anyio.sleep(90)
        assert w.cluster.writes == [] and w.records.writes == [] and w.events.emitted == []
        w.gate.leader = True
        w.healer.leadership_gained()
        await until(lambda: "KickoutHeld" in w.events.reasons("b"), 15, "hold announced by the new leader")
        await anyio.sleep(60)
        assert w.events.reasons("b").count("KickoutHeld") == 1


def kickout_attempts(w: World) -> list[float]:
    """When the kickout patch (the one that taints) was sent, in seconds of the fake clock."""
    return [(x.at - w.clock.base).total_seconds() for x in w.cluster.writes if "taints" in x.body.get("spec", {})]


async def test_a_permanent_error_is_not_retried_and_the_node_backs_off() -> None:
    """Issue 12.8: a 403 is not retried at once (one attempt per round, with backoff), a 503 is."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: bool(w.records.writes), 5, "mark write")
        before = sample("asklepios_api_errors_total", operation="kickout")
        w.cluster.failures.extend([ApiError(403, "forbidden")] * 3)
        await until(lambda: w.has_taint("b"), 120, "kickout after the errors")
        attempts = kickout_attempts(w)
        assert len(attempts) == 4
        assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(attempts))
        assert sample("asklepios_api_errors_total", operation="kickout") == before + 3


async def test_a_transient_error_is_retried_at_once_and_429_waits_for_retry_after() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: bool(w.records.writes), 5, "mark write")
        w.cluster.failures.extend([ApiError(503, "unavailable"), ApiError(429, "slow down", retry_after=3.0)])
        await until(lambda: w.has_taint("b"), 120, "kickout after the errors")
        first, second, third = kickout_attempts(w)
        assert second - first <= 2.5  # jittered exponential backoff, within the same write
        assert third - second >= 3.0  # Retry-After honoured


async def test_a_kickout_whose_answer_is_lost_ends_kicked_out_without_spinning() -> None:
    """The apiserver applies the kickout PATCH, but the answer never arrives (a timeout under
    load). Asklepios must not loop on the node (bench mass-outage once saw 4,002 record PATCHes
    in 300 s and 22 nodes never recorded as kicked out): one kickout, recorded as ours."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        await anyio.sleep(5)
        w.power_cut("b")
        await anyio.sleep(59.9)
        w.cluster.lost_answers = 1
        await until(lambda: w.has_taint("b"), 5, "kickout")
        writes = len(w.records.writes)
        await anyio.sleep(60)
        assert len(w.records.writes) - writes <= 3, w.records.writes[writes:]
        kickout = w.kickout("b")
        assert kickout is not None and kickout.tainted and kickout.cordoned  # what Asklepios added is its own
        assert [t.key for t in w.cluster.view("b").taints].count(OUT_OF_SERVICE_TAINT.key) == 1
        w.back("b")
        await until(lambda: not w.has_taint("b") and not w.cluster.view("b").unschedulable, 120, "kickin")


async def _kicked_out(w: World, name: str) -> None:
    """Power `name` off 5 s in and wait for its kickout."""
    await anyio.sleep(5)
    w.power_cut(name)
    await until(lambda: w.has_taint(name), 70, "kickout")


def _taint_changes(w: World, name: str) -> list[bool]:
    """For each of Asklepios' patches of `name` that changed the taint: whether it added it."""
    return [
        after.has_out_of_service_taint
        for _, before, after in w.cluster.history
        if after.name == name and before.has_out_of_service_taint != after.has_out_of_service_taint
    ]


async def test_a_kickin_whose_answer_is_lost_ends_kicked_in_once() -> None:
    """The kickin PATCH is applied but its answer is lost: the retry finds the node already
    kicked in and must neither loop nor leave the record claiming a kickout."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        await _kicked_out(w, "b")
        w.back("b")
        await anyio.sleep(59.9)  # the kickin is the next patch of b (KICKIN 60 s)
        patches = len(w.cluster.writes)
        kickins = sample("asklepios_kickins_total")
        w.cluster.lost_answers = 1
        await until(lambda: w.kickout("b") is None, 30, "kickin recorded")
        lost = w.cluster.writes[patches]  # the kickin's PATCH, applied with its answer lost
        assert w.cluster.lost_answers == 0 and "taints" in lost.body["spec"] and not lost.body["spec"]["taints"], lost
        assert not w.has_taint("b") and not w.cluster.view("b").unschedulable
        assert _taint_changes(w, "b") == [True, False]
        await anyio.sleep(120)
        assert len(w.cluster.writes) - patches <= 3, w.cluster.writes[patches:]
        assert w.events.reasons("b").count("NodeKickedIn") == 1, w.events.reasons("b")
        assert sample("asklepios_kickins_total") == kickins + 1
        assert w.kickout("b") is None and w.record("b") is not None  # the flap history stays


async def test_a_repair_whose_answer_is_lost_ends_repaired_without_spinning() -> None:
    """An admin lifts the taint of a node that is still dead; the repair PATCH is applied but
    its answer is lost: the node ends tainted once, the record still Asklepios' kickout, and
    the kickin later undoes both."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        await _kicked_out(w, "b")
        w.cluster.lost_answers = 1
        repairs = sample("asklepios_repairs_total")
        w.cluster.edit("b", {"spec": {"unschedulable": None, "taints": None}})  # an admin lifts both by hand
        before = len(w.cluster.writes)
        await until(lambda: w.has_taint("b"), 30, "repair")
        await until(lambda: sample("asklepios_repairs_total") == repairs + 1, 5, "the repair counted once")
        assert w.cluster.lost_answers == 0  # the repair's PATCH, applied with its answer lost
        assert sum(1 for p in w.cluster.writes[before:] if p.body.get("spec", {}).get("taints")) == 1
        patches = len(w.cluster.writes)
        await anyio.sleep(120)
        assert len(w.cluster.writes) - patches <= 2, w.cluster.writes[patches:]
        kickout = w.kickout("b")
        assert kickout is not None and kickout.tainted and kickout.cordoned
        assert [t.key for t in w.cluster.view("b").taints].count(OUT_OF_SERVICE_TAINT.key) == 1
        assert w.cluster.view("b").unschedulable
        w.back("b")
        await until(lambda: not w.has_taint("b") and not w.cluster.view("b").unschedulable, 120, "kickin")


async def test_the_guard_is_asked_again_just_before_a_forceoff() -> None:
    """The 60-minute soak (seed 61, 99ef67d): an act judged on a stale node cache (2 of 5
    NotReady where 4 were) sent a ForceOff that the guard of that moment held. The guard
    and pause are asked again just before any power action: no ForceOff, no taint, held."""
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c", "d", "e")
    url = w.credentials.data["b.url"] = "https://127.0.0.1:8443/redfish/v1/Systems/b"
    async with running(w):
        await anyio.sleep(5)
        w.power_cut("b")
        await anyio.sleep(59.9)
        w.leases.delay = 2.0  # the deadline's Lease read is slow: meanwhile two more nodes go down

        def more_down(node: str) -> None:
            if node == "b":
                w.leases.on_read = None
                w.power_cut("c")
                w.power_cut("d")

        w.leases.on_read = more_down
        await until(lambda: "KickoutHeld" in w.events.reasons("b"), 10, "held by the guard")
        await anyio.sleep(60)
        assert not [what for _, u, what in w.bmc.log if u == url], w.bmc.log
        assert not w.has_taint("b")
        assert w.record("b") is None or w.record("b").force_off is None  # type: ignore[union-attr]
        assert any(e.reason == "KickoutHeld" and "too many NotReady" in e.message for e in w.events.emitted), [
            (e.reason, e.message) for e in w.events.emitted
        ]


async def test_the_mirror_is_not_written_for_a_kickout_the_node_does_not_show() -> None:
    """A kickout record whose node patch never landed (the soak: lost in an apiserver outage)
    while the guard holds: the annotation `asklepios.io/kickout` is not written until the
    repair puts the cordon and taint back with it."""
    w = World(settings())
    w.add("a", "b", "c", "d", "e")
    async with running(w):
        await _kicked_out(w, "b")
        w.power_cut("c")
        w.power_cut("d")  # 3 of 5 NotReady: the guard holds kickouts and repairs
        w.cluster.edit(
            "b",
            {"metadata": {"annotations": {KICKOUT_ANNOTATION: None}}, "spec": {"unschedulable": None, "taints": None}},
        )
        patches = len(w.cluster.writes)
        await anyio.sleep(60)
        assert KICKOUT_ANNOTATION not in w.cluster.annotations("b"), w.cluster.writes[patches:]
        assert not w.has_taint("b")
        w.back("c")
        w.back("d")  # the guard allows again: the repair (the verdict passes: b is still off)
        await until(lambda: w.has_taint("b") and KICKOUT_ANNOTATION in w.cluster.annotations("b"), 60, "repair")
