"""The healer's decision: from one node's state and the clock, what now, and when to look again.

Level-triggered: `judge` is a pure function of the newest view, what this replica
remembers of the node (`NodeMemory`), the guard, the node's pods and `now`. A timer
firing only means "judge again"; the action is never decided from the state the
timer was set on. The verdict also says when to judge again at the latest
(`wake`), so the scheduling is decided here too, not in the engine.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs

from asklepios.core.evidence import HoldReason
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory
from asklepios.core.pod import NodePods
from asklepios.core.volumes import NodeVolumes


class State(enum.Enum):
    READY = "ready"
    COUNTING_DOWN = "counting down"
    HELD = "held"
    KICKED_OUT = "kicked out"
    COUNTING_UP = "counting up"
    WAITING_FOR_PODS = "waiting for pods"
    WAITING_FOR_VOLUMES = "waiting for volumes"
    EXCLUDED = "excluded"


class Action(enum.Enum):
    KICKOUT = "kickout"  # gather the evidence; kick out (fencing first) if the node is dead
    KICKIN = "kickin"
    REPAIR = "repair"  # re-apply a cordon or taint of ours that someone removed (a taint: only if dead)
    RELEASE = "release"  # the last pre-kickout pod is gone: record it, PodsReleased
    RELEASE_VOLUMES = "volumes released"  # no pre-kickout VolumeAttachment left: record it, VolumesReleased
    POWER_ON = "power on"  # a node Asklepios powered off boots again (pods gone, or waited long enough)


@attrs.frozen
class Timing:
    kickout: timedelta
    kickin: timedelta
    pod_wait: timedelta = timedelta(seconds=300)
    # the probe starts this long before the kickout deadline: a machine that is off answers
    # nothing, so the probe takes its whole timeout to say so, and the taint must not wait for it
    probe_lead: timedelta = timedelta(0)


@attrs.frozen
class Verdict:
    state: State
    action: Action | None = None  # what to do at `now`
    deadline: datetime | None = None  # the kickout or kickin deadline of the current period
    since: datetime | None = None  # start of the current NotReady or Ready period
    hold: HoldReason | None = None
    detail: str = ""  # why: the hold's evidence, an exclusion, what a repair restores
    pods: tuple[str, ...] = ()  # pods kickin waits for (or is forced past)
    wake: datetime | None = None  # judge again at this time at the latest; None: on the next event

    def seconds_left(self, now: datetime) -> float | None:
        target = self.wake if self.state is State.WAITING_FOR_PODS else self.deadline
        if target is None or self.state in (State.HELD, State.KICKED_OUT):
            return None
        return max(0.0, (target - now).total_seconds())


def judge(
    view: NodeView,
    memory: NodeMemory,
    *,
    now: datetime,
    timing: Timing,
    guard: str | None = None,
    pods: NodePods | None = None,
    power_on: bool = True,
    paused: str | None = None,
    volumes: NodeVolumes | None = None,
) -> Verdict:
    """Decide the node's state, the action due now (if any) and when to look again.

    `memory` must be `remember(view, ...)`'s result; `guard` is why new kickouts
    are held right now (too many NotReady), if they are; `paused` the operator's
    pause (`asklepios pause`), if any; `pods` summarises the pod watch of a
    kicked-out node, `volumes` its VolumeAttachments (None: not followed);
    `power_on` is ASKLEPIOS_FENCING_POWER_ON.
    """
    if view.kickout is None:
        return _not_kicked_out(view, memory, now, timing, guard, paused)
    if view.record is not None and view.record.release is not None:
        return _released(view, memory, now, power_on and paused is None)
    if not view.ready.is_ready:
        return _down(view, memory, now, timing, pods, power_on and paused is None, volumes)
    return _back(view, memory, now, timing, pods)


def _due(memory: NodeMemory, now: datetime) -> bool:
    return memory.look_at is None or now >= memory.look_at


def _not_kicked_out(
    view: NodeView, memory: NodeMemory, now: datetime, timing: Timing, guard: str | None, paused: str | None
) -> Verdict:
    if view.ready.is_ready:
        return Verdict(State.READY, since=view.ready_since)
    excluded = view.excluded_by
    if excluded is not None:
        return Verdict(State.EXCLUDED, detail=excluded)
    since = memory.notready.since if memory.notready is not None else now
    deadline = since + timing.kickout
    early = deadline - timing.probe_lead
    if now < early:
        return Verdict(State.COUNTING_DOWN, deadline=deadline, since=since, wake=early)
    if now < deadline and (paused is not None or guard is not None or memory.probed_at is not None):
        return Verdict(State.COUNTING_DOWN, deadline=deadline, since=since, wake=deadline)
    if now < deadline:  # the probe ahead of the deadline; the taint waits for the deadline itself
        return Verdict(State.COUNTING_DOWN, Action.KICKOUT, deadline=deadline, since=since)
    if paused is not None:
        return Verdict(State.HELD, deadline=deadline, since=since, hold=HoldReason.PAUSED, detail=paused)
    if guard is not None:
        return Verdict(State.HELD, deadline=deadline, since=since, hold=HoldReason.TOO_MANY_NOTREADY, detail=guard)
    state = State.HELD if memory.hold is not None else State.COUNTING_DOWN
    due = _due(memory, now)  # not due: held by the evidence, or backing off after a failure
    return Verdict(
        state,
        Action.KICKOUT if due else None,
        deadline=deadline,
        since=since,
        hold=memory.hold,
        detail=memory.detail,
        wake=None if due else memory.look_at,
    )


def _down(
    view: NodeView,
    memory: NodeMemory,
    now: datetime,
    timing: Timing,
    pods: NodePods | None,
    power_on: bool,
    volumes: NodeVolumes | None = None,
) -> Verdict:
    record = view.kickout
    assert record is not None
    since = record.at
    action: Action | None = None
    detail = ""
    lost = view.kickout_lost
    flapping = view.record is not None and view.record.flapping
    if lost and view.excluded_by is None:
        action, detail = Action.REPAIR, " and ".join(lost) + " removed"
    elif record.released is None and pods is not None and pods.synced and not pods.left:
        action = Action.RELEASE
    elif record.released is not None and record.volumes_released is None and volumes is not None:
        if volumes.released:
            action = Action.RELEASE_VOLUMES
        elif volumes.synced and not _power_on_due(view, now, timing, power_on and not flapping):
            return Verdict(State.WAITING_FOR_VOLUMES, since=since, detail=", ".join(volumes.volumes or volumes.left))
    if action is None and _power_on_due(view, now, timing, power_on and not flapping):
        action = Action.POWER_ON
        if record.released is None:
            left = pods.left if pods is not None and pods.synced else ("(pods on the node not listed yet)",)
            return _kicked_out(memory, now, since, action, detail, left)
    elif (
        action is None
        and record.fenced
        and record.powered_on is None
        and record.released is None
        and power_on
        and not flapping
    ):
        wake = record.at + timing.pod_wait  # power on at the latest then, pods gone or not
        return Verdict(State.KICKED_OUT, since=since, wake=wake)
    return _kicked_out(memory, now, since, action, detail, ())


def _released(view: NodeView, memory: NodeMemory, now: datetime, power_on: bool) -> Verdict:
    """`asklepios release NODE`: end the kickout now, whatever the countdown, the pods or the flapping."""
    record = view.kickout
    assert record is not None
    detail = "released by an operator (asklepios release)"
    action = Action.KICKIN
    if power_on and record.fenced and record.powered_on is None and view.excluded_by is None:
        action = Action.POWER_ON  # undo the power-off first; the kickin follows
    return _kicked_out(memory, now, record.at, action, detail, ())


def _power_on_due(view: NodeView, now: datetime, timing: Timing, allowed: bool) -> bool:
    """Only a machine Asklepios itself powered off, never an excluded node; pods gone or waited enough."""
    record = view.kickout
    assert record is not None
    if not allowed or not record.fenced or record.powered_on is not None or view.excluded_by is not None:
        return False
    return record.released is not None or now >= record.at + timing.pod_wait


def _kicked_out(
    memory: NodeMemory, now: datetime, since: datetime, action: Action | None, detail: str, pods: tuple[str, ...]
) -> Verdict:
    if action is not None and not _due(memory, now):
        return Verdict(State.KICKED_OUT, since=since, detail=detail, pods=pods, wake=memory.look_at)
    hold = memory.hold if action is Action.REPAIR else None
    return Verdict(State.KICKED_OUT, action, since=since, detail=detail, pods=pods, hold=hold)


def _back(view: NodeView, memory: NodeMemory, now: datetime, timing: Timing, pods: NodePods | None) -> Verdict:
    record = view.kickout
    assert record is not None
    if view.record is not None and view.record.flapping:
        detail = "flapping: kicked out too often; stays kicked out until `asklepios release`"
        return Verdict(State.KICKED_OUT, since=record.at, detail=detail)
    since = memory.ready.since if memory.ready is not None else now
    deadline = since + timing.kickin
    if now < deadline:
        return Verdict(State.COUNTING_UP, deadline=deadline, since=since, wake=deadline)
    stuck = pods.stuck if pods is not None and pods.synced else ("(pods on the node not listed yet)",)
    limit = deadline + timing.pod_wait
    if stuck and now < limit:
        return Verdict(State.WAITING_FOR_PODS, deadline=deadline, since=since, pods=stuck, wake=limit)
    if not _due(memory, now):
        return Verdict(State.COUNTING_UP, deadline=deadline, since=since, pods=stuck, wake=memory.look_at)
    return Verdict(State.COUNTING_UP, Action.KICKIN, deadline=deadline, since=since, pods=stuck)
