"""What operators see about each node: one log line per change, per-node gauges, once-only Events.

The healer judges every node on every event and every resync; what it tells
operators must not repeat with them. This module remembers what was last said per
node, so a log line is written when a node's state (or hold reason, or the pods a
kickin waits for) changes, `KickoutHeld` is emitted once per hold by the acting
replica (again by a new leader, which cannot know what the old one said), and the
per-node gauges exist only on the leader.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

import attrs
from prometheus_client import Gauge

from asklepios.core.evidence import HoldReason
from asklepios.core.judge import State, Verdict
from asklepios.core.node import NodeView
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")


@attrs.define
class NodeNotes:
    state: State | None = None
    hold: HoldReason | None = None  # the hold last logged
    waiting: tuple[str, ...] = ()  # the pods last logged as holding kickin
    announced: HoldReason | None = None  # the hold this replica announced as leader
    fencing_error: str = ""  # the last FencingFailed message emitted
    published: tuple[str, HoldReason | None] | None = None  # (state, hold) of the per-node gauges


@attrs.define
class Notes:
    by_node: dict[str, NodeNotes] = attrs.Factory(dict)
    _waiting: int = 0  # nodes published as waiting for pods (a count kept, not a scan: thousands of nodes)

    def _of(self, name: str) -> NodeNotes:
        notes = self.by_node.get(name)
        if notes is None:
            notes = self.by_node[name] = NodeNotes()
        return notes

    def observe(self, view: NodeView, verdict: Verdict, now: datetime, *, leader: bool) -> None:
        notes = self._of(view.name)
        if notes.state is not verdict.state or notes.hold is not verdict.hold or notes.waiting != verdict.pods:
            self._log(view, verdict, now, notes)
            notes.state, notes.hold, notes.waiting = verdict.state, verdict.hold, verdict.pods
        if verdict.state is not State.HELD:
            notes.announced = None
        if leader:
            self._publish(view, verdict, notes)
        elif notes.published is not None:
            self._unpublish(view.name, notes)

    def _log(self, view: NodeView, verdict: Verdict, now: datetime, notes: NodeNotes) -> None:
        facts: dict[str, object] = {"node": view.name, "status": view.ready.value, "state": verdict.state.value}
        left = verdict.seconds_left(now)
        if verdict.state is State.COUNTING_DOWN and left is not None:
            log.info("node is not ready", extra={**facts, "seconds_to_kickout": round(left, 1)})
        elif verdict.state is State.COUNTING_UP and left is not None and notes.state is not State.WAITING_FOR_PODS:
            log.info("node is ready again", extra={**facts, "seconds_to_kickin": round(left, 1)})
        elif verdict.state is State.EXCLUDED:
            log.info("node is not ready but excluded", extra={**facts, "reason": verdict.detail})
        elif verdict.state is State.HELD and verdict.hold is not None:
            log.warning("kickout held", extra={**facts, "reason": verdict.hold.value, "detail": verdict.detail})
        elif verdict.state is State.WAITING_FOR_PODS:
            log.info("kickin waits for pods still terminating", extra={**facts, "pods": list(verdict.pods[:10])})
        else:
            log.debug("node state", extra=facts)

    def hold_pending(self, name: str, verdict: Verdict) -> bool:
        """A hold this replica has not announced yet."""
        return verdict.hold is not None and self._of(name).announced is not verdict.hold

    def hold_to_announce(self, name: str, verdict: Verdict) -> bool:
        """True once per hold (and reason) on the acting replica: emit KickoutHeld now."""
        notes = self._of(name)
        if verdict.hold is None or notes.announced is verdict.hold:
            return False
        notes.announced = verdict.hold
        return True

    def fencing_error_to_emit(self, name: str, error: str) -> bool:
        notes = self._of(name)
        if notes.fencing_error == error:
            return False
        notes.fencing_error = error
        return True

    def leadership_gained(self) -> None:
        """A new leader cannot know which holds were announced: announce them again."""
        for notes in self.by_node.values():
            notes.announced = None
            notes.fencing_error = ""

    def forget(self, name: str) -> None:
        notes = self.by_node.pop(name, None)
        if notes is not None:
            self._unpublish(name, notes)

    def _count_waiting(self, published: tuple[str, HoldReason | None], change: int) -> None:
        if published[0] == State.WAITING_FOR_PODS.value:
            self._waiting += change
            metrics.KICKIN_WAITING_NODES.set(self._waiting)

    def _publish(self, view: NodeView, verdict: Verdict, notes: NodeNotes) -> None:
        key = (verdict.state.value, verdict.hold)
        if notes.published != key:
            self._unpublish(view.name, notes)
            metrics.NODE_STATE.labels(node=view.name, state=verdict.state.value).set(1)
            if verdict.hold is not None:
                metrics.NODE_HELD.labels(node=view.name, reason=verdict.hold.value).set(1)
            notes.published = key
            self._count_waiting(key, +1)
        counting = verdict.state in (State.COUNTING_DOWN, State.COUNTING_UP) and verdict.deadline is not None
        if counting and verdict.deadline is not None:
            metrics.NODE_DEADLINE.labels(node=view.name).set(verdict.deadline.timestamp())
        else:
            _remove(metrics.NODE_DEADLINE, view.name)
        if view.kickout is not None:
            metrics.NODE_KICKOUT.labels(node=view.name).set(view.kickout.at.timestamp())
        else:
            _remove(metrics.NODE_KICKOUT, view.name)

    def _unpublish(self, name: str, notes: NodeNotes) -> None:
        if notes.published is None:
            return
        state, hold = notes.published
        self._count_waiting(notes.published, -1)
        _remove(metrics.NODE_STATE, name, state)
        if hold is not None:
            _remove(metrics.NODE_HELD, name, hold.value)
        _remove(metrics.NODE_DEADLINE, name)
        _remove(metrics.NODE_KICKOUT, name)
        notes.published = None


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
