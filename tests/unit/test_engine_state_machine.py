"""A hypothesis state machine that tries to make the healer do harm.

It drives the real `Healer` (fake clock, fake node API, leader gate) through Ready,
False and Unknown transitions with transition times skewed both ways, kubelets that
keep renewing their Lease while NotReady, relists, restarts (a new healer from the
cluster state), leadership loss and gain, 409s and 5xx on writes, admin cordons,
foreign taints and exclusions. After every step it checks, from the fake
apiserver's own record of writes, that the healer never

* kicked out a node that was Ready at any moment of the last kickout period, or
  whose kubelet was alive;
* kicked in a node before it was Ready for the kickin period;
* undid something its record does not say it did, or lost someone else's taint;
* kicked out twice in one NotReady period;
* wrote while not the leader.

Bounded in the normal test run; `HYPOTHESIS_PROFILE=long` runs it far longer.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import anyio
import stamina
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from asklepios.core.node import NodeView, Taint
from asklepios.kube.client import ApiError, Conflict
from tests.unit.fakes import ManualClock
from tests.unit.world import World, act_due
from tests.unit.world import settings as healer_settings

NODES = ("n1", "n2", "n3", "n4")
KICKOUT, KICKIN = 30, 20
FOREIGN = Taint("example.com/maintenance", "disk", "NoSchedule")
PROFILES = {"default": (30, 50), "long": (500, 120)}
EXAMPLES, STEPS = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "default")]


class HealerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        stamina.set_testing(True, attempts=2)
        self.clock = ManualClock()
        self.world = World(
            healer_settings(kickout_seconds=KICKOUT, kickin_seconds=KICKIN, resync_seconds=5), self.clock
        )
        self.ready_since: dict[str, datetime | None] = {}  # the truth: Ready since (None while NotReady)
        self.notready_since: dict[str, datetime] = {}
        self.stamps: dict[str, set[str]] = {n: set() for n in NODES}
        self.kickouts_this_period: dict[str, int] = {}
        self.checked = 0

    def teardown(self) -> None:
        stamina.set_testing(False)

    @initialize()
    def start(self) -> None:
        self.world.add(*NODES)
        for name in NODES:
            self.ready_since[name] = self.clock.now()
            self.stamps[name].add(self.world.cluster.objects[name]["status"]["conditions"][0]["lastTransitionTime"])
        self.world.cluster.relist()
        self.step()

    # --- driving ----------------------------------------------------------------------
    def step(self) -> None:
        async def act() -> None:
            for _ in range(20):
                if not await act_due(self.world.healer):
                    return

        anyio.run(act)

    @rule(name=st.sampled_from(NODES), status=st.sampled_from(["True", "False", "Unknown"]),
          skew=st.integers(-3600, 3600), kubelet_alive=st.booleans())  # fmt: skip
    def transition(self, name: str, status: str, skew: int, kubelet_alive: bool) -> None:
        cluster = self.world.cluster
        cond = cluster.objects[name]["status"]["conditions"][0]
        if cond["status"] == status:
            return
        stamp = cluster._stamp(skew)
        if stamp in self.stamps[name]:
            return  # a writer never repeats an earlier transition time exactly (see the module doc)
        self.stamps[name].add(stamp)
        now = self.clock.now()
        if status == "True":
            self.world.leases.alive.add(name)
            self.ready_since[name] = now
            self.kickouts_this_period[name] = 0
        else:
            if self.ready_since.get(name) is not None:
                self.notready_since[name] = now
                self.kickouts_this_period[name] = 0
            self.ready_since[name] = None
            if kubelet_alive:
                self.world.leases.alive.add(name)
            else:
                self.world.leases.stop(name)
        cluster.set_ready(name, status, skew)
        self.step()

    @rule(name=st.sampled_from(NODES), skew=st.integers(-3600, 3600))
    def power_cut(self, name: str, skew: int) -> None:
        """The common case, drawn on its own so that most runs reach kickouts and kickins."""
        self.transition(name, "Unknown", skew, kubelet_alive=False)

    @rule(name=st.sampled_from(NODES), skew=st.integers(-3600, 3600))
    def power_back(self, name: str, skew: int) -> None:
        self.transition(name, "True", skew, kubelet_alive=True)

    @rule(seconds=st.sampled_from([1, 3, 5, 11, 29, 31, 60, 60, 120]))
    def advance(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)
            self.world.healer.resync()
            self.step()

    @rule()
    def relist(self) -> None:
        self.world.cluster.relist()
        self.step()

    @rule()
    def restart(self) -> None:
        self.world.healer = self.world.build()
        self.world.cluster.relist()
        self.step()

    @rule(leader=st.sampled_from([True, True, False]))
    def leadership(self, leader: bool) -> None:
        was = self.world.gate.leader
        self.world.gate.leader = leader
        if leader and not was:
            self.world.healer.leadership_gained()
        self.step()

    @rule(error=st.sampled_from([Conflict(409, "conflict"), ApiError(503, "unavailable"), ApiError(0, "reset")]))
    def failing_write(self, error: ApiError) -> None:
        self.world.cluster.failures.append(error)

    @rule(name=st.sampled_from(NODES), cordon=st.booleans())
    def admin_cordon(self, name: str, cordon: bool) -> None:
        self.world.cluster.edit(name, {"spec": {"unschedulable": True if cordon else None}})
        self.step()

    @rule(name=st.sampled_from(NODES))
    def foreign_taint(self, name: str) -> None:
        taints = [t for t in self.world.cluster.objects[name]["spec"].get("taints") or [] if t["key"] != FOREIGN.key]
        self.world.cluster.edit(name, {"spec": {"taints": [*taints, FOREIGN.to_api()]}})
        self.step()

    @rule(name=st.sampled_from(NODES), excluded=st.sampled_from([False, False, True]))
    def exclude(self, name: str, excluded: bool) -> None:
        value = "true" if excluded else None
        self.world.cluster.edit(name, {"metadata": {"labels": {"asklepios.io/exclude": value}}})
        self.step()

    # --- what must never happen ----------------------------------------------------------
    @invariant()
    def never_harmful(self) -> None:
        history = self.world.cluster.history
        for when, before, after in history[self.checked :]:
            self._check(when, before, after)
        self.checked = len(history)
        assert all(w.leader for w in self.world.cluster.writes), "a write while not the leader"

    def _check(self, when: datetime, before: NodeView, after: NodeView) -> None:
        name = after.name
        foreign = {t for t in before.taints if t.key != "node.kubernetes.io/out-of-service"}
        assert foreign <= set(after.taints), f"{name}: someone else's taint lost"
        if before.kickout is None and after.kickout is not None:  # a kickout
            since = self.notready_since.get(name)
            assert self.ready_since.get(name) is None, f"{name} kicked out while Ready"
            assert since is not None and when - since >= timedelta(seconds=KICKOUT), f"{name} kicked out early"
            assert name not in self.world.leases.alive, f"{name} kicked out while its kubelet was alive"
            event("kickout")
            self.kickouts_this_period[name] = self.kickouts_this_period.get(name, 0) + 1
            assert self.kickouts_this_period[name] == 1, f"{name} kicked out twice in one NotReady period"
        if before.kickout is not None and after.kickout is None:  # a kickin
            ready = self.ready_since.get(name)
            assert ready is not None and when - ready >= timedelta(seconds=KICKIN), f"{name} kicked in early"
            event("kickin")
            record = before.kickout
            if before.unschedulable and not after.unschedulable:
                assert record.cordoned, f"{name}: uncordoned though the record says we did not cordon"
            if before.has_out_of_service_taint and not after.has_out_of_service_taint:
                assert record.tainted, f"{name}: out-of-service taint removed though not ours"


TestHealerMachine = HealerMachine.TestCase
TestHealerMachine.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
