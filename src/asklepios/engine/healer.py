"""The healer: the node cache, the timer wheel, and acting on one node at a time.

Fed by two node reflectors: the nodes matching ASKLEPIOS_NODE_SELECTOR, and the
cordoned nodes (server-side `spec.unschedulable=true`), so that a kicked-out node
that leaves the selector (a relabel, a new selector) stays followed until it is
kicked in. Each event re-judges that node (`core.judge`) and sets its one timer;
a timer firing re-judges with the newest view and carries out what is due now.
The resync re-judges every cached node (no API request), which repairs drift and
catches anything a missed event would hide. Acting on one node never overlaps
with acting on the same node (`dispatch`); acts on different nodes run at once, so
a slow BMC or apiserver answer for one never delays another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.evidence import HoldReason
from asklepios.core.fencing import FencingError
from asklepios.core.judge import Action, Verdict, judge
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory, remember
from asklepios.core.pod import NodePods
from asklepios.core.volumes import NodeVolumes
from asklepios.engine.clock import Clock
from asklepios.engine.dispatch import Dispatcher
from asklepios.engine.gate import WriteGate
from asklepios.engine.kickout import Kickout
from asklepios.engine.nodebook import CORDONED, SELECTED, NodeBook
from asklepios.engine.notes import Notes
from asklepios.engine.ports import EventPort, PodWatchPort, VolumePort
from asklepios.engine.records import RecordBook, RecordWriter
from asklepios.engine.recovery import Recovery
from asklepios.engine.rejudge import Rejudge
from asklepios.engine.retry import backoff_delay
from asklepios.engine.upkeep import Upkeep
from asklepios.engine.verdict import DeathCheck
from asklepios.engine.wheel import TimerWheel
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import ApiError, NotFound
from asklepios.kube.events import node_ref
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")


@attrs.define(eq=False)
class NodeSource:
    """The Store of one node reflector: the healer follows a node delivered by either."""

    healer: Healer
    kind: str

    def replace(self, items: dict[str, NodeView]) -> None:
        self.healer.replace(self.kind, items)

    def upsert(self, key: str, item: NodeView) -> None:
        self.healer.upsert(self.kind, key, item)

    def delete(self, key: str) -> None:
        self.healer.delete(self.kind, key)


@attrs.define(eq=False)
class Healer:
    settings: Settings
    clock: Clock
    gate: WriteGate
    writer: NodeWriter
    kickout: Kickout
    recovery: Recovery
    check: DeathCheck
    records: RecordBook
    record_writer: RecordWriter
    pods: PodWatchPort
    events: EventPort
    notes: Notes
    on_schedulable: Callable[[str], None] = lambda name: None  # a node may take new pods again
    volumes: VolumePort | None = None  # the VolumeAttachment watch (None: volumes not followed)
    book: NodeBook = attrs.Factory(NodeBook)
    memory: dict[str, NodeMemory] = attrs.Factory(dict)
    wheel: TimerWheel = attrs.field(default=None)
    judgements: int = 0  # how many times a node was judged (work, for the storm's unit test)
    _guard_held: bool = False
    _upkeep: Upkeep = attrs.field(init=False)
    _rejudge: Rejudge = attrs.field(init=False)  # a guard flip, a new leader: thousands, in chunks

    def __attrs_post_init__(self) -> None:
        if self.wheel is None:
            self.wheel = TimerWheel(lambda: self.clock.now().timestamp())
        self._upkeep = Upkeep(self.settings, self.clock, self.writer, self.record_writer)
        self._rejudge = Rejudge(self.schedule)
        self.records.on_node = self.record_changed
        self.records.on_pause = lambda: self.rejudge_soon(self.views)
        self.kickout.guard_count = self.guard_count
        self.kickout.view_of = self.book.views.get  # the one dict, never replaced

    def source(self, kind: str) -> NodeSource:
        return NodeSource(self, kind)

    @property
    def views(self) -> dict[str, NodeView]:
        return self.book.views

    # --- the cache (called by the reflectors and with the result of our own writes) -----
    def replace(self, kind: str, items: dict[str, NodeView]) -> None:
        members = self.book.members[kind]
        gone = members - items.keys()
        members.clear()
        members.update(items)
        for name, view in items.items():
            if kind == SELECTED:  # a relist may hide a Ready period: trust only the annotations now
                self.memory.pop(name, None)
            self._cache(view)
        for name in gone:
            if kind == CORDONED:
                self.book.parked.pop(name, None)
            self._refollow(name)
        self.book.publish()

    def upsert(self, kind: str, key: str, item: NodeView) -> None:
        self.book.members[kind].add(key)
        self._cache(item)

    def delete(self, kind: str, key: str) -> None:
        self.book.members[kind].discard(key)
        if kind == CORDONED:
            self.book.parked.pop(key, None)
        self._refollow(key)

    def record_changed(self, name: str) -> None:
        """Our own record of a node changed (our write, another replica's, an admin's)."""
        view = self.book.latest(name)
        if view is not None:
            self._cache(view)

    def _refollow(self, name: str) -> None:
        if not self.book.still_followed(name):
            self._forget(name)

    def _cache(self, view: NodeView) -> NodeView:
        name = view.name
        view = self.records.attach(view)
        change = self.book.put(view)
        if change is None:  # not (or no longer) followed
            if name in self.book.views:
                self._forget(name)
            return view
        if change.stale and change.old is not None:
            return change.old
        if view.kickout is not None:
            self.pods.follow(name)
        else:
            self.pods.unfollow(name)
            self.recovery.forget(name)
        if change.guard_moved and self._guard_flipped():  # held nodes may go now, or must wait
            self.rejudge_soon(n for n, m in self.memory.items() if m.notready is not None and n != name)
        self.schedule(name)
        if change.old is not None and view.takes_new_pods and not change.old.takes_new_pods:
            self.on_schedulable(name)  # kicked in (and the cordon's taint gone), uncordoned, Ready again
        return view

    def _forget(self, name: str) -> None:
        self.book.forget(name)
        self.memory.pop(name, None)
        self.notes.forget(name)
        self.wheel.cancel(name)
        self.pods.unfollow(name)
        self.recovery.forget(name)

    def guard(self) -> str | None:
        """Why new kickouts are held now (only nodes that can be kicked out are counted)."""
        return self.book.guard(self.settings.max_unhealthy)

    def _guard_flipped(self) -> bool:
        held = self.guard() is not None
        flipped, self._guard_held = held != self._guard_held, held
        return flipped

    def guard_count(self) -> str:
        watched, down = self.book.counts()
        return f"{down} of {watched} watched nodes NotReady (ASKLEPIOS_MAX_UNHEALTHY={self.settings.max_unhealthy})"

    def paused(self) -> str | None:
        pause = self.records.pause
        if pause is None:
            return None
        by = f" by {pause.by}" if pause.by else ""
        return f"paused{by} since {pause.since:%Y-%m-%dT%H:%M:%SZ}: {pause.reason or 'no reason given'}"

    # --- deciding ---------------------------------------------------------------------
    def judge(self, name: str, view: NodeView | None = None) -> tuple[NodeView, NodeMemory, Verdict]:
        view = view or self.views[name]
        self.judgements += 1
        memory = remember(view, self.memory.get(name, NodeMemory()), self.clock.now())
        self.memory[name] = memory
        pods = volumes = None
        if view.kickout is not None:
            pods = NodePods.of(self.pods.pods(name), view.kickout)
            if self.volumes is not None:
                volumes = NodeVolumes.of(self.volumes.attachments(name), name, view.kickout)
        verdict = judge(
            view,
            memory,
            now=self.clock.now(),
            timing=self.settings.timing,
            guard=self.guard(),
            pods=pods,
            power_on=self.settings.fencing_power_on and self.settings.fencing_on,
            paused=self.paused(),
            volumes=volumes,
        )
        return view, memory, verdict

    def _verdict_of(self, view: NodeView) -> Verdict:
        return self.judge(view.name, view)[2]

    def _chores(self, view: NodeView, memory: NodeMemory, verdict: Verdict) -> bool:
        """Something to do now besides the verdict's action (leader only)."""
        if not self.gate.may_write():
            return False
        if self.notes.hold_pending(view.name, verdict):
            return True
        if self._first_look_due(view, memory, verdict):
            return True
        if self.settings.dry_run:
            return False
        if self._upkeep.due(view, memory):
            return True
        return self.settings.force_delete and self.recovery.pending_deletes(view, memory)

    def _first_look_due(self, view: NodeView, memory: NodeMemory, verdict: Verdict) -> bool:
        """A NotReady period started: watch the node's Lease from now on, on our clock.

        Not while the guard or a pause holds every kickout anyway (a storm of NotReady
        nodes must not cost a Lease read each); the first look then happens when the
        hold lifts, and silence is watched for a lease duration from there.
        """
        if memory.notready is None or memory.lease is not None or view.excluded_by is not None:
            return False
        return verdict.hold not in (HoldReason.TOO_MANY_NOTREADY, HoldReason.PAUSED)

    def schedule(self, name: str) -> None:
        """Judge `name` and set its timer: now when something is due, else at its next deadline."""
        if name not in self.views:
            return
        view, memory, verdict = self.judge(name)
        self.notes.observe(view, verdict, self.clock.now(), leader=self.gate.may_write())
        if verdict.action is not None or self._chores(view, memory, verdict):
            self.wheel.schedule(name, 0.0)
        elif verdict.wake is not None:
            self.wheel.schedule(name, verdict.wake.timestamp())
        else:
            self.wheel.cancel(name)

    def resync(self) -> None:
        """Re-judge every cached node (no apiserver request)."""
        for name in list(self.views):
            self.schedule(name)

    async def resync_yielding(self) -> None:
        """`resync`, letting the event loop run now and then (thousands of nodes)."""
        await self._rejudge.now(list(self.views))

    def rejudge_soon(self, names: Iterable[str]) -> None:
        """Judge these nodes again from the healer's own task, in chunks (`engine.rejudge`)."""
        self._rejudge.soon(names)

    def leadership_gained(self) -> None:
        self.notes.leadership_gained()
        self.rejudge_soon(self.views)

    # --- running ----------------------------------------------------------------------
    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Dispatcher(self.act, self.after_act).run, self.wheel)
            tg.start_soon(self._resync_loop)
            tg.start_soon(self._rejudge.run)

    async def _resync_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.resync_seconds)
            await self.resync_yielding()

    def after_act(self, name: str) -> None:
        """Wait for the next deadline; what is still due now waits for the next event or
        resync, so a failing write or a follower never spins."""
        if name not in self.views or name in self.wheel:
            return
        _, _, verdict = self.judge(name)
        if verdict.wake is not None and verdict.wake > self.clock.now():
            self.wheel.schedule(name, verdict.wake.timestamp())

    async def act(self, name: str) -> None:
        """Judge `name` afresh and carry out whatever is due now (the leader only)."""
        if name not in self.views:
            return
        view, memory, verdict = self.judge(name)
        self.notes.observe(view, verdict, self.clock.now(), leader=self.gate.may_write())
        if not self.gate.may_write():
            return
        try:
            if self._first_look_due(view, memory, verdict):
                self.memory[name] = memory = await self.check.look(view, memory)
            if not self.settings.dry_run:
                view = await self._upkeep.write_marks(view, memory, lambda: self.views.get(name, view))
                mirrored = await self._upkeep.write_mirror(view)
                view = self._cache(mirrored) if mirrored is not None else view
            if verdict.action is not None:
                view = await self._carry_out(view, memory, verdict)
        except NotFound:
            return
        except (ApiError, FencingError) as exc:  # a write or a power action failed: back off, try again
            self._failed(name, verdict, exc)
            return
        view, memory, verdict = self.judge(name, view)
        self.notes.observe(view, verdict, self.clock.now(), leader=self.gate.may_write())
        if verdict.hold is not None and self.notes.hold_to_announce(name, verdict):
            await self._announce_hold(view, verdict)
        if self.settings.force_delete and not self.settings.dry_run:
            await self.recovery.release_pods(view, memory)

    async def _carry_out(self, view: NodeView, memory: NodeMemory, verdict: Verdict) -> NodeView:
        action, written = verdict.action, None
        if action is Action.KICKOUT:
            written, memory = await self.kickout.attempt(view, verdict, memory, self._verdict_of)
            self.memory[view.name] = memory
            if written is None and memory.probed_at is not None and memory.look_at is not None:
                # the probe ran ahead of the deadline (its timeout is what a dead machine costs):
                # the kickout is due at the deadline, which the probe may already have reached
                self.wheel.schedule(view.name, memory.look_at.timestamp())
        elif self.settings.dry_run:
            log.debug("dry run: not acting", extra={"node": view.name, "action": action.value if action else None})
        elif action is Action.REPAIR:
            paused = self.paused() is not None
            written, memory = await self.recovery.repair(
                view, memory, verdict, self._verdict_of, paused=paused, guard=self.guard
            )
            self.memory[view.name] = memory
        elif action is Action.RELEASE:
            written = await self.recovery.release(view, volumes_followed=self.volumes is not None)
        elif action is Action.RELEASE_VOLUMES:
            written = await self.recovery.release_volumes(view)
        elif action is Action.POWER_ON:
            written = await self.recovery.power_on(view, verdict)
        elif action is Action.KICKIN:
            written = await self.recovery.kick_in(view, verdict, self._verdict_of)
        if written is None:
            return self.views.get(view.name, view)
        if action not in (Action.KICKOUT, Action.REPAIR):
            self.memory[view.name] = attrs.evolve(self.memory.get(view.name, memory), failures=0, look_at=None)
        return self._cache(written)

    def _failed(self, name: str, verdict: Verdict, exc: Exception) -> None:
        memory = self.memory.get(name, NodeMemory())
        failures = memory.failures + 1
        delay = backoff_delay(failures, base=1.0, cap=float(self.settings.resync_seconds) * 6)
        look_at: datetime = self.clock.now() + timedelta(seconds=delay)
        self.memory[name] = attrs.evolve(memory, failures=failures, look_at=look_at)
        action = verdict.action.value if verdict.action else None
        log.warning(
            "write failed; will retry", extra={"node": name, "action": action, "error": str(exc), "retry_in": delay}
        )

    async def _announce_hold(self, view: NodeView, verdict: Verdict) -> None:
        assert verdict.hold is not None
        metrics.KICKOUTS_HELD.labels(reason=verdict.hold.value).inc()
        detail = f": {verdict.detail}" if verdict.detail else ""
        await self.events.emit(node_ref(view), "KickoutHeld", f"{verdict.hold.value}{detail}", warning=True)

    def holds(self) -> dict[str, HoldReason]:
        """The kickouts held by the evidence now, and why."""
        return {n: m.hold for n, m in self.memory.items() if m.hold is not None}
