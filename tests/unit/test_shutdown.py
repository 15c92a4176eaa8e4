"""A SIGTERM in the middle of a kickout leaves Asklepios' record as the node shows it.

The 60-minute soak on 30e7fe4: the leader had stored a node's kickout record and its
node patch met a 409; a SIGTERM came before the retry. The elector released the lease at
once, which shut the write gate, so the record's roll-back was refused: the record
claimed a kickout the node did not show, and the next leader took it for a taint to put
back. Now the patch, once begun, ends under a shield; a kickout cancelled before it (the
record stored ahead of the deadline) rolls its record back, also shielded; and the
elector releases the lease only after the healer's last write (`engine.leader`).

Each test runs the real healer with the real `LeaderElector` as its gate, wired as the
controller wires them, and cancels the whole group as the SIGTERM does.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import attrs
import pytest

from asklepios.core.records import node_key
from asklepios.engine.controller import run_then_set
from asklepios.engine.leader import LeaderElector
from asklepios.kube.lease import LeaseRecord
from tests.unit.fakes import LoopClock
from tests.unit.test_engine_more import FakeLease
from tests.unit.world import World, settings, until

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]


@attrs.define(eq=False)
class Story:
    """What happened, in order: node patches applied, records stored, the lease released."""

    steps: list[str] = attrs.Factory(list)

    def last_write_before_release(self) -> bool:
        return "lease released" in self.steps and self.steps[-1] == "lease released"


@attrs.define(eq=False)
class ToldLease(FakeLease):
    story: Story = attrs.Factory(Story)

    async def write(self, **kw: object) -> LeaseRecord:
        record = await super().write(**kw)
        if kw["holder"] == "":
            self.story.steps.append("lease released")
        return record


def wired(w: World, story: Story) -> LeaderElector:
    """The real elector on a fake Lease, gating a new healer of the world."""
    lease = ToldLease(story=story)
    elector = LeaderElector(lease, "me", 15, 10, 2, clock=w.clock)
    w.healer = w.build(gate=elector)

    def on_taint(name: str) -> None:
        w.assert_dead(name)
        story.steps.append(f"tainted {name}")

    w.cluster.on_taint = on_taint
    w.records.on_put = lambda changes: story.steps.append(f"record {sorted(changes)}")
    return elector


def consistent(w: World, name: str) -> bool:
    """The record claims a kickout exactly when the node shows its taint."""
    return (w.kickout(name) is not None) == w.has_taint(name)


async def run_until_cancelled(w: World, elector: LeaderElector, cut_and_wait: object) -> None:
    stopped = anyio.Event()
    elector.writers_stopped = stopped.wait  # wired as engine.controller wires it
    async with anyio.create_task_group() as tg:
        w.cluster.relist()
        tg.start_soon(run_then_set, w.healer.run, stopped)
        tg.start_soon(elector.run)
        await until(elector.may_write, 5, "leading")
        await cut_and_wait()  # type: ignore[operator]
        tg.cancel_scope.cancel()  # SIGTERM


async def test_a_patch_in_flight_at_sigterm_ends_before_the_lease_is_released() -> None:
    w, story = World(settings(), clock=LoopClock()), Story()
    w.add("a", "b", "c")
    elector = wired(w, story)
    w.cluster.patch_takes = 2.0

    async def cut_and_wait() -> None:
        w.power_cut("b")
        await until(lambda: any("taints" in x.body.get("spec", {}) for x in w.cluster.writes), 70, "patch sent")

    await run_until_cancelled(w, elector, cut_and_wait)
    assert w.has_taint("b") and consistent(w, "b")
    assert story.steps.index("tainted b") < story.steps.index("lease released"), story.steps
    assert story.last_write_before_release()


async def test_a_kickout_stopped_before_its_patch_rolls_its_record_back() -> None:
    """Without fencing the record is stored ahead of the deadline; a SIGTERM in between rolls it back."""
    w, story = World(settings(), clock=LoopClock()), Story()
    w.add("a", "b", "c")
    elector = wired(w, story)

    async def cut_and_wait() -> None:
        cut = w.clock.now()
        w.power_cut("b")
        await until(lambda: w.kickout("b") is not None, 70, "record stored ahead")
        assert w.clock.now() < cut + timedelta(seconds=60), "stored ahead of the deadline"
        assert not w.has_taint("b"), "the record goes ahead of the taint"

    await run_until_cancelled(w, elector, cut_and_wait)
    assert not w.has_taint("b") and w.kickout("b") is None and consistent(w, "b")
    key = node_key("b")
    assert story.steps[-2:] == [f"record [{key!r}]", "lease released"], story.steps  # rolled back, then released


async def test_a_kickin_in_flight_at_sigterm_also_clears_its_record() -> None:
    w, story = World(settings(kickin_seconds=30), clock=LoopClock()), Story()
    w.add("a", "b", "c")
    elector = wired(w, story)

    async def cut_and_wait() -> None:
        w.power_cut("b")
        await until(lambda: w.has_taint("b"), 70, "kicked out")
        w.cluster.patch_takes = 2.0
        sent = len(w.cluster.writes)
        w.back("b")
        await until(lambda: any(x.node == "b" for x in w.cluster.writes[sent:]), 60, "kickin patch sent")

    await run_until_cancelled(w, elector, cut_and_wait)
    assert not w.has_taint("b") and not w.cluster.view("b").unschedulable
    assert w.kickout("b") is None and consistent(w, "b")
    assert story.last_write_before_release()
