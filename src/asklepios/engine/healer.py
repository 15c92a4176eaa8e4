"""The healer: node cache, timer wheel and the kickout / kickin / repair actions.

Fed by the node reflector (it is the reflector's Store). Each node event
re-judges that node and sets its one timer; a timer firing re-judges with the
newest view and acts only if the verdict says so now. Writes are conflict-safe
and re-decided on the re-read object; transient failures are retried until the
action succeeds or is no longer due. The resync loop re-judges every cached
node, which repairs drift and catches anything a missed event would hide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import attrs
from anyio.abc import TaskGroup

from asklepios.config import Settings
from asklepios.core.guard import hold_reason
from asklepios.core.judge import Action, State, Verdict, judge, notready_mark
from asklepios.core.node import KickoutRecord, NodeView, NotReadyMark
from asklepios.core.pod import stuck_before_kickout
from asklepios.engine.gate import REQUEST_TIMEOUT, AlwaysOpen, WriteGate
from asklepios.engine.wheel import TimerWheel
from asklepios.kube.client import ApiError, Conflict, NotFound
from asklepios.kube.events import EventRecorder, ObjectRef
from asklepios.kube.nodes import NodeApi, kickin_patch, kickout_patch, mark_patch, repair_patch
from asklepios.kube.pods import PodApi
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")
STUCK_POD_RECHECK_SECONDS = 2.0
MAX_ATTEMPTS = 30


def utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class Healer:
    settings: Settings
    nodes: NodeApi
    pods: PodApi
    events: EventRecorder
    gate: WriteGate = attrs.Factory(AlwaysOpen)
    clock: Callable[[], datetime] = utcnow
    on_kickin: Callable[[str], None] = lambda name: None
    views: dict[str, NodeView] = attrs.Factory(dict)
    marks: dict[str, NotReadyMark] = attrs.Factory(dict)
    notready: set[str] = attrs.Factory(set)
    held: dict[str, str] = attrs.Factory(dict)  # node -> kind of hold already announced
    wheel: TimerWheel = attrs.Factory(TimerWheel)
    states: dict[str, State] = attrs.Factory(dict)  # last state logged, to log changes only
    blocked_until: dict[str, float] = attrs.Factory(dict)  # kickin held by old pods: next look
    _inflight: set[str] = attrs.Factory(set)
    _again: set[str] = attrs.Factory(set)
    _tg: TaskGroup | None = None
    _writes: anyio.CapacityLimiter | None = None

    # --- Store: called by the reflector -------------------------------------------------
    def replace(self, items: dict[str, NodeView]) -> None:
        for name in set(self.views) - set(items):
            self.delete(name)
        self.marks.clear()  # a relist may hide a Ready period: trust only the annotations now
        self.views = dict(items)
        self.notready = {n for n, v in items.items() if not v.ready.is_ready}
        for name in list(self.views):
            self._observe(name)
        self._publish_counts()

    def upsert(self, key: str, item: NodeView) -> None:
        was_notready = key in self.notready
        self.views[key] = item
        if item.ready.is_ready:
            self.notready.discard(key)
        else:
            self.notready.add(key)
        self._observe(key)
        if was_notready != (key in self.notready):
            self._publish_counts()
            for name in list(self.held):  # the guard's count moved: held nodes may go now
                self._schedule(name)

    def delete(self, key: str) -> None:
        self.views.pop(key, None)
        self.marks.pop(key, None)
        self.notready.discard(key)
        self.held.pop(key, None)
        self.states.pop(key, None)
        self.blocked_until.pop(key, None)
        self.wheel.cancel(key)
        self._publish_counts()

    # --- deciding -----------------------------------------------------------------------
    def _publish_counts(self) -> None:
        metrics.WATCHED_NODES.set(len(self.views))
        metrics.NOTREADY_NODES.set(len(self.notready))

    def _observe(self, name: str) -> None:
        view = self.views[name]
        if view.ready.is_ready:
            self.marks.pop(name, None)
        else:
            self.marks[name] = notready_mark(view, self.marks.get(name), self.clock())
        self._schedule(name)

    def hold(self) -> str | None:
        if self.settings.dry_run:
            return "dry run"
        return hold_reason(self.settings.max_unhealthy, len(self.views), len(self.notready))

    def evaluate(self, name: str, view: NodeView | None = None) -> Verdict:
        view = view or self.views[name]
        mark = None if view.ready.is_ready else self.marks.get(name)
        return judge(view, now=self.clock(), timing=self.settings.timing, mark=mark, hold=self.hold())

    def _mark_out_of_date(self, view: NodeView) -> bool:
        if view.kickout is not None or view.excluded_by is not None:
            return False
        if view.ready.is_ready:
            return view.notready_mark is not None
        return view.notready_mark != self.marks.get(view.name)

    def _schedule(self, name: str) -> None:
        view = self.views.get(name)
        if view is None:
            return
        verdict = self.evaluate(name, view)
        self._log_state(view, verdict)
        if verdict.state is not State.HELD:
            self.held.pop(name, None)
        due_now = verdict.action is not None or (verdict.state is State.HELD and name not in self.held)
        recheck = self.blocked_until.get(name, 0.0) if verdict.action is Action.KICKIN else 0.0
        if recheck > self.clock().timestamp():  # kickin waits for old pods: do not list them again yet
            self.wheel.schedule(name, recheck)
        elif due_now or (self._mark_out_of_date(view) and not self.settings.dry_run):
            self.wheel.schedule(name, 0.0)
        elif verdict.deadline is not None:
            self.wheel.schedule(name, verdict.deadline.timestamp())
        else:
            self.wheel.cancel(name)

    def _log_state(self, view: NodeView, verdict: Verdict) -> None:
        """One line per state change, with the facts of the original's logs."""
        if self.states.get(view.name) is verdict.state:
            return
        self.states[view.name] = verdict.state
        left = verdict.seconds_left(self.clock())
        facts = {"node": view.name, "status": view.ready.value, "state": verdict.state.value}
        if verdict.state is State.COUNTING_DOWN and left is not None:
            log.info("node is not ready", extra={**facts, "seconds_to_kickout": round(left, 1)})
        elif verdict.state is State.COUNTING_UP and left is not None:
            log.info("node is ready again", extra={**facts, "seconds_to_kickin": round(left, 1)})
        elif verdict.state is State.EXCLUDED:
            log.info("node is not ready but excluded", extra={**facts, "reason": verdict.reason})
        else:
            log.debug("node state", extra=facts)

    def resync(self) -> None:
        """Re-judge every cached node (no apiserver request)."""
        for name in list(self.views):
            self._schedule(name)

    # --- running ------------------------------------------------------------------------
    async def run(self) -> None:
        self._writes = anyio.CapacityLimiter(16)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.wheel.run, self._dispatch)
            tg.start_soon(self._resync_loop)

    async def _resync_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.resync_seconds)
            self.resync()

    def _dispatch(self, name: str) -> None:
        if name in self._inflight:
            self._again.add(name)
            return
        assert self._tg is not None
        self._inflight.add(name)
        self._tg.start_soon(self._act_loop, name)

    async def _act_loop(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                assert self._writes is not None
                async with self._writes:
                    await self.act(name)
                if name not in self._again:
                    return
        finally:
            self._inflight.discard(name)
            self._again.discard(name)
            self._reschedule_future(name)

    def _reschedule_future(self, name: str) -> None:
        """After acting, wait for the next deadline; what is still due now waits for the
        next event or resync, so a failing write or a follower never spins."""
        if name not in self.views or name in self.wheel:
            return
        verdict = self.evaluate(name)
        if verdict.deadline is not None and verdict.deadline > self.clock():
            self.wheel.schedule(name, verdict.deadline.timestamp())

    async def act(self, name: str) -> None:
        """Judge `name` afresh and carry out whatever is due now."""
        view = self.views.get(name)
        if view is None:
            return
        verdict = self.evaluate(name, view)
        if verdict.state is State.HELD:
            await self._announce_hold(view, verdict)
            return
        writable = self.gate.may_write() and not self.settings.dry_run
        if writable and self._mark_out_of_date(view):
            await self._write_mark(view)
        if verdict.action is None:
            return
        if not self.gate.may_write():
            return
        if self.settings.dry_run:
            log.info("dry run: not acting", extra={"node": name, "action": verdict.action.value})
            return
        await self._carry_out(name, view, verdict)

    async def _announce_hold(self, view: NodeView, verdict: Verdict) -> None:
        """Once per hold episode (and kind): a log line, and on the acting replica an Event."""
        kind = "dry run" if verdict.reason == "dry run" else "too many NotReady"
        if self.held.get(view.name) == kind:
            return
        self.held[view.name] = kind
        log.warning(
            "kickout held",
            extra={"node": view.name, "status": view.ready.value, "reason": verdict.reason},
        )
        if self.gate.may_write() or self.settings.dry_run:
            metrics.KICKOUTS_HELD.labels(reason=kind).inc()
            await self.events.emit(self._ref(view), "KickoutHeld", verdict.reason, warning=True)

    async def _write_mark(self, view: NodeView) -> None:
        mark = None if view.ready.is_ready else self.marks.get(view.name)
        try:
            await self.nodes.patch(view.name, mark_patch(mark), self._budget())
        except ApiError as exc:  # the mark is an optimisation of restarts; the resync retries it
            log.warning("could not record NotReady start", extra={"node": view.name, "error": str(exc)})

    async def _carry_out(self, name: str, view: NodeView, verdict: Verdict) -> None:
        action = verdict.action
        for attempt in range(MAX_ATTEMPTS):
            if action is Action.KICKIN and not await self._old_pods_gone(view):
                self.blocked_until[name] = self.clock().timestamp() + STUCK_POD_RECHECK_SECONDS
                self.wheel.schedule(name, self.blocked_until[name])
                return
            self.blocked_until.pop(name, None)
            if not self.gate.may_write():
                return
            try:
                await self._write(view, verdict)
                return
            except Conflict:
                metrics.WRITE_CONFLICTS.inc()
                log.info(
                    "conflict, re-reading",
                    extra={"node": name, "action": action.value if action else None},
                )
            except NotFound:
                return
            except ApiError as exc:
                metrics.API_ERRORS.labels(operation=action.value if action else "write").inc()
                log.warning(
                    "write failed, retrying",
                    extra={
                        "node": name,
                        "action": action.value if action else None,
                        "error": str(exc),
                    },
                )
                await anyio.sleep(min(5.0, 0.2 * 2**attempt))
            try:
                view = await self.nodes.get(name)
            except ApiError as exc:
                log.warning("re-read failed", extra={"node": name, "error": str(exc)})
                view = self.views.get(name, view)
            verdict = self.evaluate(name, view)
            if verdict.action is not action:
                return
        log.error("giving up after repeated failures; the resync will retry", extra={"node": name})

    async def _old_pods_gone(self, view: NodeView) -> bool:
        assert view.kickout is not None
        try:
            stuck = stuck_before_kickout(await self.pods.on_node(view.name), view.kickout)
        except ApiError as exc:
            log.warning("could not list pods for kickin", extra={"node": view.name, "error": str(exc)})
            return False
        if stuck:
            log.info(
                "kickin waits for pods still terminating",
                extra={"node": view.name, "pods": [f"{p.namespace}/{p.name}" for p in stuck][:10]},
            )
        return not stuck

    def _budget(self) -> float:
        """A write may take no longer than this replica is sure to stay the leader."""
        return max(0.5, min(REQUEST_TIMEOUT, self.gate.write_budget()))

    def _ref(self, view: NodeView) -> ObjectRef:
        return ObjectRef(kind="Node", name=view.name, uid=view.uid)

    async def _write(self, view: NodeView, verdict: Verdict) -> None:
        name = view.name
        if verdict.action is Action.KICKOUT:
            record = KickoutRecord(
                at=self.clock().replace(microsecond=0),
                cordoned=not view.unschedulable,
                tainted=not view.has_out_of_service_taint,
            )
            await self.nodes.patch(name, kickout_patch(view, record), self._budget())
            delay = (self.clock() - verdict.deadline).total_seconds() if verdict.deadline else 0.0
            metrics.KICKOUTS.inc()
            metrics.KICKOUT_DELAY.observe(max(0.0, delay))
            message = (
                f"NotReady since {verdict.since:%Y-%m-%dT%H:%M:%SZ}; cordoned and tainted "
                f"node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
                if verdict.since
                else "kicked out"
            )
            log.info(
                "node kicked out",
                extra={
                    "node": name,
                    "status": view.ready.value,
                    "action": "kickout",
                    "cordoned": record.cordoned,
                    "tainted": record.tainted,
                    "late_seconds": round(delay, 3),
                },
            )
            await self.events.emit(self._ref(view), "NodeKickedOut", message)
        elif verdict.action is Action.KICKIN:
            assert view.kickout is not None
            await self.nodes.patch(name, kickin_patch(view, view.kickout), self._budget())
            metrics.KICKINS.inc()
            log.info(
                "node kicked in",
                extra={"node": name, "status": view.ready.value, "action": "kickin"},
            )
            await self.events.emit(self._ref(view), "NodeKickedIn", "Ready again; undid what the kickout changed")
            self.on_kickin(name)
        elif verdict.action is Action.REPAIR:
            assert view.kickout is not None
            await self.nodes.patch(name, repair_patch(view, view.kickout), self._budget())
            metrics.REPAIRS.inc()
            log.warning(
                "repaired kickout",
                extra={"node": name, "action": "repair", "reason": verdict.reason},
            )
