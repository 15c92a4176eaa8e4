"""The healer's decision: from one node's state and the clock, what now, and when next.

Level-triggered: `judge` is a pure function of the newest view, the start of
the node's NotReady period, the guard and `now`. A timer firing only means
"judge again"; the action is never decided from the state the timer was set on.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs

from asklepios.core.node import NodeView, NotReadyMark


class State(enum.Enum):
    READY = "ready"
    COUNTING_DOWN = "counting down"
    KICKED_OUT = "kicked out"
    COUNTING_UP = "counting up"
    HELD = "held"
    EXCLUDED = "excluded"


class Action(enum.Enum):
    KICKOUT = "kickout"
    KICKIN = "kickin"
    REPAIR = "repair"  # re-apply a cordon or taint of ours that someone removed


@attrs.frozen
class Timing:
    kickout: timedelta
    kickin: timedelta


@attrs.frozen
class Verdict:
    state: State
    action: Action | None = None  # what to do at `now`
    deadline: datetime | None = None  # when to judge again
    since: datetime | None = None  # start of the current NotReady or Ready period
    reason: str = ""

    def seconds_left(self, now: datetime) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - now).total_seconds())


def notready_mark(view: NodeView, remembered: NotReadyMark | None, now: datetime) -> NotReadyMark:
    """The start of `view`'s current continuous NotReady period.

    `remembered` is this process's own mark, kept while it watched the node
    stay NotReady (a False<->Unknown flip does not end the period). Without it,
    the node's annotation is trusted while the condition has not moved since it
    was written; failing both, the condition's lastTransitionTime (or `now` when
    the node has no Ready condition) starts the period. Later is the safe error:
    kicking out too late costs minutes, too early a split brain.
    """
    if remembered is not None:
        return attrs.evolve(remembered, condition_since=view.ready_since)
    mark = view.notready_mark
    if mark is not None and mark.condition_since == view.ready_since:
        return mark
    return NotReadyMark(since=view.ready_since or now, condition_since=view.ready_since)


def judge(
    view: NodeView,
    *,
    now: datetime,
    timing: Timing,
    mark: NotReadyMark | None,
    hold: str | None = None,
) -> Verdict:
    """Decide the node's state, the action due now (if any) and the next deadline.

    `mark` is the NotReady period start from `notready_mark` (ignored when the
    node is Ready); `hold` is why new kickouts are held right now, if they are.
    """
    record = view.kickout
    if record is None:
        if view.ready.is_ready:
            return Verdict(State.READY, since=view.ready_since)
        excluded = view.excluded_by
        if excluded is not None:
            return Verdict(State.EXCLUDED, reason=excluded)
        since = mark.since if mark is not None else (view.ready_since or now)
        deadline = since + timing.kickout
        if now < deadline:
            return Verdict(State.COUNTING_DOWN, deadline=deadline, since=since)
        if hold is not None:
            return Verdict(State.HELD, since=since, reason=hold)
        return Verdict(State.COUNTING_DOWN, Action.KICKOUT, deadline=deadline, since=since)

    if not view.ready.is_ready:
        lost = []
        if record.tainted and not view.has_out_of_service_taint:
            lost.append("out-of-service taint")
        if record.cordoned and not view.unschedulable:
            lost.append("cordon")
        if lost:
            return Verdict(
                State.KICKED_OUT,
                Action.REPAIR,
                since=record.at,
                reason=" and ".join(lost) + " removed",
            )
        return Verdict(State.KICKED_OUT, since=record.at)

    since = max(view.ready_since or record.at, record.at)
    deadline = since + timing.kickin
    if now < deadline:
        return Verdict(State.COUNTING_UP, deadline=deadline, since=since)
    return Verdict(State.COUNTING_UP, Action.KICKIN, deadline=deadline, since=since)
