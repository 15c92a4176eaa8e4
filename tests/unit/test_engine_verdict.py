"""Issue 19 on the fake clock: no path taints a running machine, and fencing powers on only its own.

Every World checks, at each write that adds the out-of-service taint, that the machine
is dead at that very moment (`World.assert_dead`): these tests drive the paths where
it once was not.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import attrs
import pytest

from asklepios.core.evidence import HoldReason
from asklepios.core.guard import MaxUnhealthy
from asklepios.core.pod import PodRef
from asklepios.core.records import PAUSE_KEY, NodeRecord, Pause
from asklepios.core.volumes import Attachment
from tests.unit.world import World, running, settings, until

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]
URL = "https://127.0.0.1:8443/redfish/v1/Systems/{}"


def taint_writes(w: World, name: str) -> int:
    return sum(1 for x in w.cluster.writes if x.node == name and "taints" in x.body.get("spec", {}))


async def test_a_stopped_kubelet_whose_kernel_refuses_is_never_tainted() -> None:
    """19.1: the port refuses (a running kernel): held `node answers` for three kickout periods."""
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.stop_kubelet("b")
        await anyio.sleep(3 * 60 + 30)
        assert not w.has_taint("b") and taint_writes(w, "b") == 0
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        address = w.cluster.view("b").addresses[0]
        assert held == [f"node answers: answers on {address}:10250 refused"]
        assert w.healer.holds() == {"b": HoldReason.NODE_ANSWERS}


@pytest.mark.parametrize(("resync", "probe_takes"), [(10, 2.0), (60, 2.0), (10, 2.4)])
async def test_a_silent_port_costs_the_probe_its_timeout_yet_the_taint_lands_at_the_deadline(
    resync: int, probe_takes: float
) -> None:
    """The probe runs ahead of the deadline; the kickout follows at the deadline, not at the next resync
    (found by the demo: kicked out 7 s late with resync 10 s, once the crashed port was silent).
    A probe that ends a little late (a late wake, a busy loop: 2.4 s for its 2 s timeout) still
    ends before the deadline (the lag benchmark at 5,000 nodes: p99 0.5 s with no margin)."""
    w = World(settings(resync_seconds=resync))
    w.probe.timeout = probe_takes
    w.add("a", "b", "c")
    async with running(w):
        await anyio.sleep(3.3)  # off the resync's beat: a deadline that waits for it shows
        w.power_cut("b")
        took = await until(lambda: w.has_taint("b"), 120, "kickout", step=0.01)
        assert 60 - 1e-6 <= took <= 60.1, took


async def test_a_kubelet_a_minute_behind_is_never_tainted_even_after_a_restart() -> None:
    """19.3: renewTime 60 s behind our clock, renewed every second: alive by the change we see."""
    w = World(settings())
    w.add("a", "b", "c")
    w.leases.behind["b"] = 60
    async with running(w):
        w.cluster.set_ready("b", "False")
        await anyio.sleep(5 * 60)
    assert not w.has_taint("b")
    w.healer = w.build()  # a restart with the deadline long past: no earlier look to compare with
    async with running(w):
        await anyio.sleep(3 * 60)
    assert not w.has_taint("b") and taint_writes(w, "b") == 0
    assert w.healer.holds() == {"b": HoldReason.KUBELET_ALIVE}


async def test_after_a_restart_a_dead_node_waits_at_most_one_lease_duration() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(30)  # the countdown runs; the process dies before the deadline
    w.healer = w.build()
    async with running(w):
        took = await until(lambda: w.has_taint("b"), 120, "kickout after the restart")
        assert 30 <= took <= 30 + 40 + 0.5  # the deadline kept; silence watched anew, at most 40 s more


async def test_a_repair_never_taints_a_node_whose_kubelet_renews() -> None:
    """19.2: kicked out, back, admin lifts cordon and taint, a pod lands, a short Ready=False."""
    w = World(settings(kickin_seconds=600))
    w.add("a", "b", "c")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        w.back("b")  # counting up to kickin (600 s)
        await anyio.sleep(20)
        w.cluster.edit("b", {"spec": {"unschedulable": None, "taints": None}})  # the admin lifts both by hand
        kickout = w.kickout("b")
        assert kickout is not None
        new_pod = PodRef(
            "db", "db-0", "uid-new", kickout.at + timedelta(seconds=30), kickout.at + timedelta(seconds=40)
        )
        w.pods.put("b", new_pod)  # a pod landed since, and is being deleted normally
        w.cluster.set_ready("b", "False")  # a short NotReady from a live kubelet
        await anyio.sleep(120)
        assert not w.has_taint("b") and taint_writes(w, "b") == 1  # only the kickout's
        assert w.pods.deleted == []  # force delete needs a verdict in this NotReady period
        assert w.cluster.view("b").unschedulable  # the cordon of ours is put back: harmless


async def test_twenty_bmcs_that_never_confirm_off_do_not_delay_another_kickout() -> None:
    """19.5: fencing waits hold no shared slot: node z (a working BMC) is fenced and tainted on time."""
    w = World(settings(fencing="redfish", fencing_timeout_seconds=600, max_unhealthy=MaxUnhealthy(100, percent=True)))
    hung = [f"h{i:02d}" for i in range(20)]
    w.add("a", "z", *hung)
    for name in ("z", *hung):
        w.give_bmc(name, URL.format(name))
    w.bmc.never_off = {URL.format(n) for n in hung}
    async with running(w):
        for name in hung:
            w.power_cut(name)
        await anyio.sleep(70)  # all twenty are being fenced now, waiting for an Off that never comes
        assert sum(1 for _, _, what in w.bmc.log if what == "ForceOff") == 20
        w.power_cut("z")
        took = await until(lambda: w.has_taint("z"), 200, "z's kickout")
        assert took <= 60 + w.bmc.delay + 2  # deadline + the BMC's own delay + a poll
        assert not any(w.has_taint(n) for n in hung)


async def test_a_machine_found_off_is_never_powered_on() -> None:
    """19.4: an admin powered it off for hardware work; Asklepios taints it but never switches it on."""
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    w.give_bmc("b", URL.format("b"))
    w.bmc.power[URL.format("b")] = "Off"
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        kickout = w.kickout("b")
        assert kickout is not None and kickout.found_off and not kickout.fenced
        w.pods.put("b")
        await anyio.sleep(600)
        assert [what for _, _, what in w.bmc.log] == []  # no ForceOff, no On
        assert w.bmc.power[URL.format("b")] == "Off"


async def test_an_excluded_node_is_never_powered_on() -> None:
    """Kicked out and fenced; an admin excludes it (hardware work) before its pods are gone: it stays Off."""
    w = World(settings(fencing="redfish", force_delete=False))
    w.add("a", "b", "c")
    w.give_bmc("b", URL.format("b"))
    old = PodRef("db", "db-0", "uid-0", w.clock.now() - timedelta(hours=1), w.clock.now())
    w.pods.by_node["b"] = [old]  # Terminating since the power cut, until the test lets it go
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        w.cluster.edit("b", {"metadata": {"labels": {"asklepios.io/exclude": "true"}}})
        w.pods.put("b")  # the pod is gone
        await until(lambda: "PodsReleased" in w.events.reasons("b"), 10, "released")
        await anyio.sleep(600)
        assert [what for _, _, what in w.bmc.log] == ["ForceOff", "Off"]


async def test_a_pod_held_by_a_finalizer_delays_power_on_at_most_the_pod_wait() -> None:
    w = World(settings(fencing="redfish", kickin_pod_wait_seconds=120, force_delete=False))
    w.add("a", "b", "c")
    w.give_bmc("b", URL.format("b"))
    stuck = PodRef("db", "db-0", "uid-0", w.clock.now() - timedelta(hours=1), w.clock.now())
    w.pods.by_node["b"] = [stuck]  # held by a finalizer
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        took = await until(lambda: any(what == "On" for _, _, what in w.bmc.log), 200, "forced power on")
        assert 115 <= took <= 121  # the pod wait (120 s) after the kickout
        forced = [e for e in w.events.emitted if e.reason == "PowerOnForced"]
        assert len(forced) == 1 and "db/db-0" in forced[0].message and forced[0].warning


async def test_a_flapping_node_stays_kicked_out_until_released() -> None:
    """Issue 24.4: the fourth kickout within the window marks it flapping: no kickin until `release`."""
    w = World(settings(kickout_seconds=10, kickin_seconds=10, flap_max_kickouts=3))
    w.add("a", "b", "c")
    async with running(w):
        for _ in range(3):
            w.power_cut("b")
            await until(lambda: w.has_taint("b"), 60, "kickout")
            w.back("b")
            await until(lambda: not w.has_taint("b"), 60, "kickin")
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 60, "fourth kickout")
        assert w.events.reasons("b").count("NodeFlapping") == 1
        w.back("b")
        await anyio.sleep(300)
        assert w.has_taint("b")  # stays kicked out
        record = w.record("b")
        assert record is not None and record.flapping
        w.records.data["node.b"] = attrs.evolve(record, release=w.clock.now()).encode()
        w.healer.records.load(w.records.snapshot())  # the records watch delivers `asklepios release b`
        await until(lambda: not w.has_taint("b"), 10, "kickin after release")
        record = w.record("b")
        assert record is not None and not record.flapping and record.kickout is None


async def test_a_pause_holds_a_due_kickout_and_resume_lets_it_go() -> None:
    w = World(settings())
    w.add("a", "b", "c")
    w.records.data[PAUSE_KEY] = Pause(since=w.clock.now(), reason="maintenance window", by="ops").encode()
    w.healer = w.build()
    async with running(w):
        w.power_cut("b")
        await anyio.sleep(120)
        assert not w.has_taint("b")
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert len(held) == 1 and held[0].startswith("paused: paused by ops") and "maintenance window" in held[0]
        w.records.data.pop(PAUSE_KEY)
        w.healer.records.load(w.records.snapshot())  # `asklepios resume`
        await until(lambda: w.has_taint("b"), 45, "kickout after resume")


@attrs.define
class FakeAttachments:
    """The VolumeAttachment watch: attachments per node (listed from the start)."""

    by_node: dict[str, list[Attachment]] = attrs.Factory(dict)

    def attachments(self, node: str) -> list[Attachment] | None:
        return list(self.by_node.get(node, []))


async def test_volumes_released_once_the_old_attachments_are_gone() -> None:
    """Issue 21: after the pods, the node's pre-kickout VolumeAttachments; then VolumesReleased."""
    w = World(settings())
    w.add("a", "b", "c")
    volumes = FakeAttachments({"b": [Attachment("va-1", "b", "pv-db-0", created=w.clock.now() - timedelta(hours=1))]})
    w.healer.volumes = volumes
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kickout")
        await until(lambda: "PodsReleased" in w.events.reasons("b"), 5, "pods released")
        await anyio.sleep(30)
        assert "VolumesReleased" not in w.events.reasons("b")  # the old attachment is still there
        assert w.healer.judge("b")[2].state.value == "waiting for volumes"
        later = Attachment("va-2", "b", "pv-agent", created=w.clock.now())  # after the kickout: not its business
        volumes.by_node["b"] = [later]
        w.healer.schedule("b")  # the watch's change
        await until(lambda: "VolumesReleased" in w.events.reasons("b"), 5, "volumes released")
        kickout = w.kickout("b")
        assert kickout is not None and kickout.volumes_released is not None


def fenced_b(fencing_timeout: int) -> World:
    """Three nodes, fencing on, a BMC for `b` only."""
    w = World(settings(fencing="redfish", fencing_timeout_seconds=fencing_timeout))
    w.add("a", "b", "c")
    w.give_bmc("b", URL.format("b"))
    return w


def force_off_sent(w: World) -> bool:
    return any(what == "ForceOff" for _, _, what in w.bmc.log)


async def test_an_off_from_our_own_earlier_force_off_is_ours_to_switch_on_after_a_failover() -> None:
    """The soak's find: a ForceOff sent, the Off not confirmed in time (or the leader gone), and the
    next attempt finds the machine Off. It is Asklepios' own Off (recorded before the ForceOff):
    fenced, and switched on again; not an admin's power-off left alone for good."""
    w = fenced_b(2)
    w.bmc.delay = 5.0  # longer than the fencing timeout: the first attempt gives up
    async with running(w):
        w.power_cut("b")
        await until(lambda: "FencingFailed" in w.events.reasons("b"), 120, "the first attempt timed out")
        record = w.record("b")
        assert record is not None and record.force_off is not None  # noted before the ForceOff went out
    w.healer = w.build()  # a failover: the new leader remembers nothing but the records
    async with running(w):
        await until(lambda: w.has_taint("b"), 120, "kickout once the BMC reads Off")
        kickout = w.kickout("b")
        assert kickout is not None and kickout.fenced and not kickout.found_off
        await until(lambda: any(what == "On" for _, _, what in w.bmc.log), 60, "switched on again")


async def test_a_force_off_still_applying_when_the_node_shows_ready_is_ours() -> None:
    """The 60-minute soak's find: a machine powering on (its power back) is still silent at the
    deadline, so ForceOff goes out; it boots far enough to post Ready once, then the BMC applies
    the ForceOff. The brief Ready must not turn Asklepios' own Off into an admin's power-off
    (found Off, never switched on): the marker stays while a ForceOff may still be applying."""
    w = fenced_b(30)
    w.bmc.delay = 5.0
    async with running(w):
        w.power_cut("b")
        await until(lambda: force_off_sent(w), 120, "ForceOff sent")
        await anyio.sleep(2.0)
        w.back("b")  # it posts Ready once ...
        await until(lambda: w.bmc.power.get(URL.format("b")) == "Off", 30, "the ForceOff applied")
        await anyio.sleep(1.0)
        w.power_cut("b")  # ... and dies again: Asklepios' own ForceOff, a new NotReady period
        await until(lambda: w.has_taint("b"), 300, "kickout of the machine Asklepios switched off")
        kickout = w.kickout("b")
        assert kickout is not None and not kickout.found_off, kickout
        await until(lambda: any(what == "On" for _, _, what in w.bmc.log), 400, "switched on again")


async def test_a_force_off_marker_left_after_a_long_ready_period_is_dropped() -> None:
    """Once a ForceOff can no longer be applying (the fencing timeout after it went out) and the
    node runs, the marker goes: a later Off is someone else's, and is left alone."""
    w = fenced_b(30)
    w.bmc.never_off.add(URL.format("b"))  # the ForceOff never applies: fencing fails
    async with running(w):
        w.power_cut("b")
        await until(lambda: force_off_sent(w), 120, "ForceOff sent")
        w.back("b")
        await until(lambda: (w.record("b") or NodeRecord()).force_off is None, 120, "the marker dropped")
        elapsed = w.clock.now() - w.bmc.log[0][0]
        assert elapsed >= timedelta(seconds=30), elapsed  # not before the ForceOff could still apply


async def test_a_repair_is_held_by_the_guard_like_a_kickout() -> None:
    """The 60-minute soak's find: a kickout record whose node patch never landed (the leader lost
    the Lease with the apiserver, and its roll back failed) was repaired by the next leader while
    3 of 5 nodes were NotReady. Re-adding the taint is a new taint: the guard holds it too."""
    w = World(settings(kickout_seconds=30))
    w.add("a", "b", "c", "d", "e")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        w.cluster.edit("b", {"spec": {"taints": None}})  # the taint gone, the node still dead
        w.power_cut("c")
        w.power_cut("d")  # 3 of 5 NotReady: the guard (50%: 2) holds kickouts
        await anyio.sleep(60)
        assert not w.has_taint("b") and taint_writes(w, "b") == 1  # held, not repaired
        assert "taint" not in "".join(w.events.reasons("c")) and not w.has_taint("c")
        w.back("c")
        w.back("d")
        await until(lambda: w.has_taint("b"), 60, "repaired once the guard allows it")


async def test_a_kubelet_that_renews_while_the_force_off_applies_holds_the_taint() -> None:
    """The 3-minute soak's find: the Lease was silent when ForceOff went out, the machine still
    ran while the BMC applied it and its kubelet renewed once; the BMC then confirmed Off and the
    taint followed a renewal 2.7 s old. The Lease is read again after the Off: held until it has
    been silent for a lease duration (World.assert_dead fails any earlier taint)."""
    w = fenced_b(30)
    w.bmc.delay = 5.0
    async with running(w):
        w.power_cut("b")
        await until(lambda: force_off_sent(w), 120, "ForceOff sent")
        await anyio.sleep(1)
        w.leases.stop("b")  # one renewal while the ForceOff applies: the machine still ran
        await until(lambda: w.bmc.power.get(URL.format("b")) == "Off", 30, "the ForceOff applied")
        await anyio.sleep(2)
        assert not w.has_taint("b")
        assert w.healer.holds() == {"b": HoldReason.KUBELET_ALIVE}
        await until(lambda: w.has_taint("b"), 120, "kickout once the Lease was silent for its duration")
        kickout = w.kickout("b")
        assert kickout is not None and kickout.fenced and not kickout.found_off, kickout


async def test_a_kickout_that_never_reached_its_node_is_not_half_repaired_while_held() -> None:
    """The next 60-minute soak's find: a kickout record stored just before an apiserver outage,
    its node patch never sent, and the new leader put back the cordon alone with 5 of 5 NotReady.
    Without its taint the node is not kicked out: while the guard holds, nothing is put back."""
    w = World(settings(kickout_seconds=30))
    w.add("a", "b", "c", "d", "e")
    async with running(w):
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 120, "kickout")
        w.cluster.edit("b", {"spec": {"taints": None, "unschedulable": None}})  # none of it on the node
        w.power_cut("c")
        w.power_cut("d")  # 3 of 5 NotReady: the guard (50%: 2) holds kickouts
        await anyio.sleep(60)
        assert not w.has_taint("b") and not w.cluster.view("b").unschedulable  # held: neither put back
        w.back("c")
        w.back("d")
        await until(lambda: w.has_taint("b") and w.cluster.view("b").unschedulable, 60, "repaired once allowed")
