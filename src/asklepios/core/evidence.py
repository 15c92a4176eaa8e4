"""Is the machine off? The death verdict that every write adding the out-of-service taint needs.

The out-of-service taint tells Kubernetes "this node is off": its pods are
force-deleted and their volumes force-detached at once. On a machine that still
runs, that lets two pods write one volume. So the Ready condition alone is never
enough, and every write that adds the taint (a kickout, a repair, any other path)
asks `death_verdict` at that moment. Dead needs every signal to agree:

* its kubelet is silent: no renewal of the node Lease seen for `leaseDurationSeconds`
  of Asklepios' OWN time (the kubelet's clock may be behind: a renewTime that changes
  between two looks is a renewal whatever it says, as node-lifecycle's probeTimestamp;
  a renewTime within a lease duration of our clock is one too; no Lease is silent);
* nothing answers on the probe ports: an accepted OR refused connection comes from a
  running kernel; only a timeout or "host/network unreachable" is no answer;
* with fencing on, its BMC has confirmed power Off.

Any evidence of life holds the kickout (the deadline stays); it is looked at again,
and goes ahead once the evidence is gone. A node that answers but whose kubelet is
silent is alive and cut off: without fencing that holds; with fencing it is what
fencing is for, so it is powered off, and the probe is asked again once the BMC
says Off (a machine that still answers then is not the one the inventory names).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs


class HoldReason(enum.Enum):
    """Why a kickout that is due does not happen (the `reason` of `KickoutHeld`)."""

    TOO_MANY_NOTREADY = "too many NotReady"
    DRY_RUN = "dry run"
    PAUSED = "paused"
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
class LeaseLook:
    """What Asklepios has seen of a node's Lease during one NotReady period, on its own clock.

    `seen_at` is when the current `renewed` value was first seen (our clock); `changed`
    says that an earlier look in this period saw another value, i.e. a renewal.
    """

    present: bool
    renewed: datetime | None
    duration: timedelta
    seen_at: datetime
    changed: bool = False


DEFAULT_LEASE = timedelta(seconds=40)
PROBE_TIMEOUT = 2.0  # seconds a probe waits for an answer: a machine that is off gives none
PROBE_MARGIN = 0.5  # the probe ahead of a deadline ends this long before it (a late wake, a busy loop)
# Without fencing a first verdict is gathered this long before the deadline and the
# kickout's record stored on its strength, so that at the deadline only the verdict of
# that moment (the Lease read; the probe ran ahead) and the node patch are left.
VERDICT_LEAD = 0.5


def observe_lease(before: LeaseLook | None, seen: LeaseSeen | None, now: datetime) -> LeaseLook:
    """The look after reading the Lease at `now` (None: the node has no Lease)."""
    if seen is None:
        if before is not None and not before.present:
            return before
        return LeaseLook(False, None, before.duration if before else DEFAULT_LEASE, now)
    if before is not None and before.present and before.renewed == seen.renewed:
        return attrs.evolve(before, duration=seen.duration)
    changed = before is not None and before.present
    return LeaseLook(True, seen.renewed, seen.duration, now, changed=changed)


@attrs.frozen
class Answer:
    """How one probe endpoint answered."""

    endpoint: str  # "ip:port"
    how: str  # "accepted", "refused", or "timeout" / "unreachable" (no answer)

    @property
    def alive(self) -> bool:
        return self.how not in NO_ANSWER


NO_ANSWER = ("timeout", "unreachable")


@attrs.frozen
class Evidence:
    """The signals gathered for one taint decision."""

    lease: LeaseLook
    answers: tuple[Answer, ...] = ()

    @property
    def answering(self) -> tuple[str, ...]:
        """ "ip:port how" of every endpoint that answered (accepted or refused)."""
        return tuple(f"{a.endpoint} {a.how}" for a in self.answers if a.alive)

    def summary(self) -> tuple[str, ...]:
        """One line per signal, for the record and `asklepios status NODE`."""
        lease = self.lease
        if not lease.present:
            first = f"node Lease: none (looked {lease.seen_at:%H:%M:%S})"
        else:
            renewed = f"{lease.renewed:%Y-%m-%dT%H:%M:%SZ}" if lease.renewed else "never"
            first = f"node Lease: renewTime {renewed}, unchanged since {lease.seen_at:%H:%M:%SZ} (our clock)"
        return (first, *(f"probe {a.endpoint}: {a.how}" for a in self.answers))


@attrs.frozen
class FenceOutcome:
    """What the BMC said: power Off confirmed, or why not."""

    off: bool
    reason: HoldReason | None = None  # FENCING_FAILED, NO_BMC or BMC_MISMATCH when not off
    error: str = ""
    seconds: float = 0.0  # ForceOff sent to Off confirmed (0 when it already was Off)
    found_off: bool = False  # the BMC read Off before Asklepios sent anything: not ours to switch on


@attrs.frozen
class DeathVerdict:
    dead: bool
    hold: HoldReason | None = None
    fence_next: bool = False  # the other signals agree: ask the BMC to power it off
    fenced: bool = False  # dead because the BMC confirmed power Off after our ForceOff
    found_off: bool = False  # dead because the BMC already read Off
    detail: str = ""
    look_at: datetime | None = None  # when the evidence may have changed: look again then


def kubelet_alive(lease: LeaseLook, now: datetime) -> tuple[str, datetime] | None:
    """(why the kubelet counts as alive, when that may end), or None when it is silent."""
    if not lease.present:
        return None
    watched = now - lease.seen_at
    if lease.changed and watched < lease.duration:
        return f"node Lease renewed (seen {lease.seen_at:%H:%M:%S}, our clock)", lease.seen_at + lease.duration
    renewed = lease.renewed
    if renewed is not None and abs(now - renewed) < lease.duration:
        when = f"{renewed:%H:%M:%S}"
        return (
            f"node Lease renewed at {when} (duration {lease.duration.total_seconds():.0f}s)",
            renewed + lease.duration,
        )
    if watched < lease.duration:
        why = f"node Lease watched for {watched.total_seconds():.0f}s of its {lease.duration.total_seconds():.0f}s"
        return why, lease.seen_at + lease.duration
    return None


def death_verdict(
    evidence: Evidence, now: datetime, *, fencing: bool, fence: FenceOutcome | None = None
) -> DeathVerdict:
    """Dead only when every signal agrees; with fencing, only once the BMC said Off.

    With `fence` given, `evidence.answers` is the probe asked after the power Off.
    """
    alive = kubelet_alive(evidence.lease, now)
    if alive is not None:
        return DeathVerdict(dead=False, hold=HoldReason.KUBELET_ALIVE, detail=alive[0], look_at=alive[1])
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
        detail = f"still {answers} after its BMC reported power Off: is the inventory row for this machine?"
        return DeathVerdict(dead=False, hold=HoldReason.NODE_ANSWERS, detail=detail)
    how = "BMC already read power Off" if fence.found_off else "BMC confirmed power Off"
    return DeathVerdict(
        dead=True,
        fenced=not fence.found_off,
        found_off=fence.found_off,
        detail=f"kubelet silent, {how}, no answer",
    )


def life_signs(evidence: Evidence, now: datetime) -> bool:
    """Any evidence of life at all (for properties and the soak's invariant)."""
    return kubelet_alive(evidence.lease, now) is not None or bool(evidence.answering)
