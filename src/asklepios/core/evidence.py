"""Is the node dead? The death verdict, from every signal Asklepios can gather.

The out-of-service taint tells Kubernetes "this node is off": its pods are
force-deleted and their volumes force-detached at once. On a node that still runs,
that lets two pods write one volume. So the Ready condition alone is never enough:
a running kubelet reports Ready=False itself, and a node cut off from the
apiserver turns Unknown while it keeps writing to its disks. At the kickout
deadline every signal must agree that the node is dead:

* its kubelet is silent: the node Lease is not renewed (no Lease counts as silent);
* nothing answers a TCP connection to its InternalIP addresses on the probe ports;
* with fencing on, its BMC has confirmed power Off.

Any evidence of life holds the kickout (the deadline stays); it is looked at again
at each resync, and goes ahead once the evidence is gone. A renewed Lease always
holds: the kubelet talks to the apiserver, so the normal eviction works there.
A node that answers but whose kubelet is silent is alive and cut off: without
fencing that holds; with fencing it is exactly what fencing is for, so it is
powered off, and the probe is asked again once the BMC says Off (a node that still
answers then is not the machine its `<node>.url` in the fencing Secret names).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs


class HoldReason(enum.Enum):
    """Why a kickout that is due does not happen (the `reason` of `KickoutHeld`)."""

    TOO_MANY_NOTREADY = "too many NotReady"
    DRY_RUN = "dry run"
    KUBELET_ALIVE = "kubelet alive"
    NODE_ANSWERS = "node answers"
    FENCING_FAILED = "fencing failed"
    NO_BMC = "no BMC"
    BMC_MISMATCH = "BMC mismatch"


@attrs.frozen
class LeaseSeen:
    """The node's Lease in kube-node-lease as read at one moment."""

    renewed: datetime | None  # spec.renewTime, written with the kubelet's clock
    duration: timedelta  # spec.leaseDurationSeconds


@attrs.frozen
class Evidence:
    """The signals gathered at a kickout deadline (or a resync while held)."""

    lease: LeaseSeen | None  # None: the node has no Lease, a silent kubelet
    lease_before: LeaseSeen | None = None  # an earlier look in this NotReady period
    answering: tuple[str, ...] = ()  # "ip:port" endpoints that accepted a connection


@attrs.frozen
class FenceOutcome:
    """What the BMC said: power Off confirmed, or why not."""

    off: bool
    reason: HoldReason | None = None  # FENCING_FAILED, NO_BMC or BMC_MISMATCH when not off
    error: str = ""
    seconds: float = 0.0  # ForceOff sent to Off confirmed (0 when it already was Off)
    found_off: bool = False  # the BMC already said Off before any ForceOff: none was sent


@attrs.frozen
class DeathVerdict:
    dead: bool
    hold: HoldReason | None = None
    fence_next: bool = False  # the other signals agree: ask the BMC to power it off
    fenced: bool = False  # dead because the BMC confirmed power Off
    detail: str = ""


def kubelet_alive(evidence: Evidence, now: datetime) -> str | None:
    """Why the node's kubelet is alive, or None when it is silent.

    Renewed within its duration (on the kubelet's clock), or renewed since an
    earlier look (on nobody's clock: a clock that is behind cannot hide a renewal
    that happened between two looks).
    """
    lease = evidence.lease
    if lease is None or lease.renewed is None:
        return None
    if lease.renewed + lease.duration > now:
        return f"node Lease renewed at {lease.renewed:%H:%M:%S} (duration {lease.duration.total_seconds():.0f}s)"
    before = evidence.lease_before
    if before is not None and before.renewed is not None and lease.renewed != before.renewed:
        return f"node Lease renewed at {lease.renewed:%H:%M:%S} since the last look"
    return None


def death_verdict(
    evidence: Evidence, now: datetime, *, fencing: bool, fence: FenceOutcome | None = None
) -> DeathVerdict:
    """Dead only when every signal agrees; with fencing, only once the BMC said Off.

    With `fence` given, `evidence.answering` is the probe asked after the power Off.
    """
    alive = kubelet_alive(evidence, now)
    if alive is not None:
        return DeathVerdict(dead=False, hold=HoldReason.KUBELET_ALIVE, detail=alive)
    answers = "answers on " + ", ".join(evidence.answering) if evidence.answering else ""
    if not fencing:
        if answers:
            return DeathVerdict(dead=False, hold=HoldReason.NODE_ANSWERS, detail=answers)
        return DeathVerdict(dead=True, detail="kubelet silent, no answer")
    if fence is None:
        why = f"kubelet silent, {answers}" if answers else "kubelet silent, no answer"
        return DeathVerdict(dead=False, fence_next=True, detail=f"{why}: fencing")
    if not fence.off:
        return DeathVerdict(dead=False, hold=fence.reason or HoldReason.FENCING_FAILED, detail=fence.error)
    if answers:
        detail = f"still {answers} after its BMC reported power Off: does its url in the fencing Secret name it?"
        return DeathVerdict(dead=False, hold=HoldReason.NODE_ANSWERS, detail=detail)
    return DeathVerdict(dead=True, fenced=True, detail="kubelet silent, BMC confirmed power Off, no answer")
