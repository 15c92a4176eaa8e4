"""When did the node's current NotReady (or Ready) period start? And what this replica remembers.

A countdown must never start before Asklepios could see the period: the Ready
condition's `lastTransitionTime` comes from the kubelet's clock (False) or the
controller-manager's (Unknown), and a node back from a power cut with its clock
behind reports a transition in the past, which would shorten the countdown to
nothing. So a period starts at the later of the condition's time and the moment
this replica first saw it, unless Asklepios' own record of the period (kept in its
ConfigMap by whichever replica saw it first) still describes the same transition.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from asklepios.core.evidence import Answer, HoldReason, LeaseLook
from asklepios.core.node import NodeView
from asklepios.core.records import PeriodMark


@attrs.frozen
class NodeMemory:
    """What this replica remembers about one node between events.

    Lost on restart by design: the marks live on in Asklepios' records, and the rest
    (holds, backoff, the Lease looks) is simply gathered again (a restart may
    delay a kickout by up to one lease duration: silence is watched anew).
    """

    notready: PeriodMark | None = None  # start of the current NotReady period
    ready: PeriodMark | None = None  # start of a kicked-out node's Ready period
    hold: HoldReason | None = None  # why the due kickout is held, from the evidence
    detail: str = ""  # the evidence behind `hold`, for Events and status
    look_at: datetime | None = None  # when to gather the evidence (or retry a failed action) again
    failures: int = 0  # consecutive failed fencing / power / write attempts (backoff)
    lease: LeaseLook | None = None  # the node Lease as watched during this NotReady period
    answers: tuple[Answer, ...] = ()  # the probe run just ahead of the deadline
    probed_at: datetime | None = None  # when that probe ended


def continue_period(
    remembered: PeriodMark | None,
    annotated: PeriodMark | None,
    condition: datetime | None,
    now: datetime,
    floor: datetime | None = None,
) -> PeriodMark:
    """The period's mark: ours if we saw it start, the annotation's if it still applies, else new."""
    if remembered is not None:
        return remembered if remembered.condition == condition else attrs.evolve(remembered, condition=condition)
    if annotated is not None and annotated.condition == condition:
        return annotated
    start = max(t for t in (condition, now, floor) if t is not None)
    return PeriodMark(since=start, condition=condition)


def remember(view: NodeView, memory: NodeMemory, now: datetime) -> NodeMemory:
    """Update the marks for the newest view of the node.

    Ready ends a NotReady period (and everything learnt during it, the Lease looks
    too); NotReady ends a kicked-out node's Ready period. A kicked-out node's NotReady
    period is followed as well: a repair's taint and force delete need the verdict
    within the current one.
    """
    record = view.kickout
    if view.ready.is_ready:
        if record is None:
            return NodeMemory() if memory != NodeMemory() else memory
        ready = continue_period(memory.ready, view.ready_mark, view.ready_since, now, floor=record.at)
        return _kept(
            memory,
            attrs.evolve(
                memory, notready=None, ready=ready, hold=None, detail="", lease=None, answers=(), probed_at=None
            ),
        )
    notready = continue_period(memory.notready, view.notready_mark, view.ready_since, now)
    return _kept(memory, attrs.evolve(memory, notready=notready, ready=None))


def _kept(old: NodeMemory, new: NodeMemory) -> NodeMemory:
    """The old object when nothing changed: every resync judges every node, and a new copy of
    each NotReady node's memory every 10 s was what kept the leader's full garbage collections
    coming (120-170 ms each, every ~9 s, in bench mass-outage's storm 1)."""
    return old if new == old else new


def wanted_marks(view: NodeView, memory: NodeMemory) -> tuple[PeriodMark | None, PeriodMark | None]:
    """The (NotReady, Ready) period marks the node's record should hold."""
    if view.excluded_by is not None and view.kickout is None:
        return None, None  # nothing is ever written to an excluded node
    return memory.notready, memory.ready


def marks_out_of_date(view: NodeView, memory: NodeMemory) -> bool:
    return wanted_marks(view, memory) != (view.notready_mark, view.ready_mark)
