"""A healer wired to in-memory fakes, running on trio's MockClock: a whole world, no cluster.

`World` builds the real `Healer` (through the same `build_healer` the controller
uses) on fake ports, and `running(world)` runs it in a task group, like the
controller does, until the test's block ends. With `MockClock(autojump_threshold=0)`
every sleep jumps the clock, so a 300 s kickin wait takes no real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from asklepios.config import Settings
from asklepios.core.records import KickoutRecord, NodeRecord, node_key
from asklepios.core.selector import parse_selector
from asklepios.engine.controller import build_healer
from asklepios.engine.gate import WriteGate
from asklepios.engine.healer import Healer
from asklepios.engine.records import RecordBook
from tests.unit.fakes import (
    FakeBmc,
    FakeCluster,
    FakeCredentials,
    FakeEvents,
    FakeGate,
    FakeLeases,
    FakePods,
    FakeProbe,
    FakeRecords,
    LoopClock,
)

CP = {"node-role.kubernetes.io/control-plane": ""}


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "kickout_seconds": 60,
        "kickin_seconds": 60,
        "resync_seconds": 10,
        "node_selector": parse_selector("node-role.kubernetes.io/control-plane"),
        "leader_election": False,
        "kickin_pod_wait_seconds": 300,
    }
    return Settings(**{**base, **overrides})


@attrs.define(eq=False)
class World:
    settings: Settings
    clock: Any = attrs.Factory(LoopClock)
    gate: FakeGate = attrs.Factory(FakeGate)
    events: FakeEvents = attrs.Factory(FakeEvents)
    probe: FakeProbe = attrs.Factory(FakeProbe)
    credentials: FakeCredentials = attrs.Factory(FakeCredentials)
    pods: FakePods = attrs.Factory(FakePods)
    records: FakeRecords = attrs.Factory(FakeRecords)
    cluster: FakeCluster = attrs.field(init=False)
    leases: FakeLeases = attrs.field(init=False)
    bmc: FakeBmc = attrs.field(init=False)
    healer: Healer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.cluster = FakeCluster(self.clock, self.settings.node_selector, self.gate)
        self.leases = FakeLeases(self.clock)
        self.bmc = FakeBmc(self.clock)
        self.cluster.on_taint = self.assert_dead
        self.healer = self.build()

    def build(self, gate: WriteGate | None = None, book: RecordBook | None = None) -> Healer:
        """A new healer on the same world (a restart, or a second replica)."""
        healer = build_healer(
            self.settings,
            clock=self.clock,
            gate=gate or self.gate,
            book=book,
            nodes=self.cluster,
            leases=self.leases,
            probe=self.probe,
            bmc=self.bmc,
            credentials=self.credentials,
            pods=self.pods,
            deleter=self.pods,
            events=self.events,
            records=self.records,
        )
        healer.records.replace({"asklepios-records": self.records.snapshot()})  # its reflector's list
        self.cluster.healer = healer
        self.pods.changed = healer.schedule
        return healer

    def add(self, *names: str, **kw: Any) -> None:
        for name in names:
            self.cluster.add(name, labels={**CP, **kw.pop("labels", {})}, **kw)
            self.leases.alive.add(name)

    def power_cut(self, name: str, skew: float = 0.0) -> None:
        """What a dead node looks like: Lease silent, nothing answers, node-lifecycle says Unknown."""
        self.leases.stop(name)
        self.cluster.set_ready(name, "Unknown", skew)

    def back(self, name: str, skew: float = 0.0) -> None:
        self.leases.alive.add(name)
        self.cluster.set_ready(name, "True", skew)

    def give_bmc(self, name: str, url: str) -> None:
        """Put the node's BMC into the fencing inventory (the Secret's `<node>.url`)."""
        self.credentials.data[f"{name}.url"] = url

    def stop_kubelet(self, name: str) -> None:
        """The kubelet stops (a bad upgrade, a full disk): Lease silent, Unknown, but the kernel refuses."""
        self.leases.stop(name)
        self.probe.refusing_addresses.update(self.cluster.view(name).addresses)
        self.cluster.set_ready(name, "Unknown")

    def assert_dead(self, name: str) -> None:
        """Issue 19: every write that adds the taint happens only while the machine is dead.

        Its kubelet silent for a lease duration (no renewal since, or no Lease at all),
        nothing answering (accepted or refused), and with fencing its BMC reading Off.
        """
        now = self.clock.now()
        assert name not in self.leases.alive, f"{name}: tainted while its kubelet renews its Lease"
        silent = self.leases.silent_since.get(name)
        assert silent is None or now - silent >= timedelta(seconds=40), (
            f"{name}: tainted {now - silent} after a renewal"
        )
        view = self.cluster.view(name)
        assert not any(self.probe.alive(a) for a in view.addresses), f"{name}: tainted while it answers"
        assert self.kickout(name) is not None, f"{name}: tainted before its kickout record was stored"
        if self.settings.fencing_on:
            urls = [u for u, state in self.bmc.power.items() if state == "Off"]
            assert urls, f"{name}: tainted with fencing on but no BMC reads Off"

    def has_taint(self, name: str) -> bool:
        return self.cluster.view(name).has_out_of_service_taint

    def record(self, name: str) -> NodeRecord | None:
        """Asklepios' own record of a node, as stored (not as any replica remembers it)."""
        raw = self.records.data.get(node_key(name))
        return None if raw is None else NodeRecord.decode(raw)

    def kickout(self, name: str) -> KickoutRecord | None:
        record = self.record(name)
        return None if record is None else record.kickout


async def act_due(healer: Healer) -> list[str]:
    """Act on every node whose timer is due, one after the other (the dispatcher does it concurrently).

    For deterministic tests (the hypothesis state machine); returns the nodes acted on.
    """
    due = healer.wheel.pop_due(healer.clock.now().timestamp())
    for name in due:
        await healer.act(name)
        healer.after_act(name)
    return due


@asynccontextmanager
async def running(world: World) -> AsyncIterator[World]:
    """Run the world's healer (timer wheel, resync) until the block ends; no task is left behind."""
    async with anyio.create_task_group() as tg:
        world.cluster.relist()
        tg.start_soon(world.healer.run)
        await anyio.lowlevel.checkpoint()
        yield world
        tg.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Wait (on the fake clock) until `predicate()`; returns the seconds it took."""
    start = anyio.current_time()
    with anyio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state changed by plain calls, on the fake clock
            await anyio.sleep(step)
        return anyio.current_time() - start
    raise AssertionError(f"{what}: not within {timeout}s (fake clock)")
