"""What a soak records, as plain frozen values: the inputs of the invariant checkers.

Everything here comes from the system's own records, never from Asklepios' logs or
metrics:

* the apiserver's audit log of Asklepios' identities (:class:`AuditWrite`: who wrote
  what, when, with the request body);
* the runner's own watches of nodes, pods, node Leases and the election Lease, each
  event stamped with the runner's receive time (:class:`NodeVersion`,
  :class:`PodVersion`, :class:`LeaseVersion`);
* the physics of the lab's nodes: every crash, stop_kubelet, partition, skew and
  restore, by the runner or by the BMC emulator, with the kubelet's and the kubelet
  port's state before and after (:class:`Physics`), and the BMC emulator's timeline (:class:`BmcEvent`);
* the runner's fault log (:class:`FaultRecord`) and the Asklepios processes it ran
  (:class:`Incarnation`).

Times are Unix seconds (``time.time()`` of this machine; the apiserver, the kwoks and
Asklepios share its clock).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

JSON = dict[str, Any]
OOS_KEY = "node.kubernetes.io/out-of-service"
KICKOUT_ANNOTATION = "asklepios.io/kickout"
READY_TRUE = "True"


def epoch(raw: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp (``...Z``), or None."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@attrs.frozen
class Taint:
    key: str
    value: str
    effect: str

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Taint:
        return cls(str(raw.get("key", "")), str(raw.get("value", "") or ""), str(raw.get("effect", "")))

    @property
    def out_of_service(self) -> bool:
        return self.key == OOS_KEY and self.effect == "NoExecute"


def taints_of(raw: Iterable[Mapping[str, Any]] | None) -> tuple[Taint, ...]:
    return tuple(Taint.of(t) for t in raw or ())


@attrs.frozen
class KickoutMark:
    """The parts of ``asklepios.io/kickout`` the checkers need (a damaged one: at=None)."""

    at: str | None
    cordoned: bool
    tainted: bool

    @classmethod
    def parse(cls, raw: str | None) -> KickoutMark | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return cls(None, cordoned=True, tainted=True)
        if not isinstance(data, dict):
            return cls(None, cordoned=True, tainted=True)
        return cls(str(data.get("at")), cordoned=data.get("cordoned") is True, tainted=data.get("tainted") is True)


@attrs.frozen
class NodeVersion:
    """One version of a Node as the runner's watch received it."""

    t: float
    name: str
    rv: str
    ready: str  # "True", "False", "Unknown" or "Missing"
    unschedulable: bool
    taints: tuple[Taint, ...]
    kickout: str | None  # the raw asklepios.io/kickout annotation
    deleted: bool = False

    @classmethod
    def of(cls, t: float, obj: JSON, *, deleted: bool = False) -> NodeVersion:
        meta, spec = obj.get("metadata", {}), obj.get("spec", {})
        ready = "Missing"
        for cond in obj.get("status", {}).get("conditions") or ():
            if cond.get("type") == "Ready":
                ready = str(cond.get("status"))
        return cls(
            t=t,
            name=str(meta.get("name", "")),
            rv=str(meta.get("resourceVersion", "")),
            ready=ready,
            unschedulable=bool(spec.get("unschedulable", False)),
            taints=taints_of(spec.get("taints")),
            kickout=(meta.get("annotations") or {}).get(KICKOUT_ANNOTATION),
            deleted=deleted,
        )

    @property
    def is_ready(self) -> bool:
        return self.ready == READY_TRUE and not self.deleted

    @property
    def has_oos(self) -> bool:
        return any(t.out_of_service for t in self.taints)


@attrs.frozen
class LeaseVersion:
    """A version of a Lease: a node's (kube-node-lease) or the election Lease ``asklepios``."""

    t: float  # when the runner saw it (or, from the audit log, when the write was received)
    name: str
    holder: str
    renew: float | None
    acquire: float | None
    duration: float

    @classmethod
    def of(cls, t: float, obj: JSON) -> LeaseVersion:
        spec = obj.get("spec", {})
        return cls(
            t=t,
            name=str(obj.get("metadata", {}).get("name", "")),
            holder=str(spec.get("holderIdentity") or ""),
            renew=epoch(spec.get("renewTime")),
            acquire=epoch(spec.get("acquireTime")),
            duration=float(spec.get("leaseDurationSeconds") or 0),
        )


@attrs.frozen
class PodVersion:
    """One version of a pod of the soak's namespace, as the runner's watch received it."""

    t: float
    name: str
    uid: str
    node: str
    app: str  # label app.kubernetes.io/name: the StatefulSet
    running: bool  # phase Running, Ready, not being deleted
    deleting: bool
    created: float
    deleted: bool = False

    @classmethod
    def of(cls, t: float, obj: JSON, *, deleted: bool = False) -> PodVersion:
        meta, status = obj.get("metadata", {}), obj.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        deleting = "deletionTimestamp" in meta
        return cls(
            t=t,
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            node=str(obj.get("spec", {}).get("nodeName") or ""),
            app=str((meta.get("labels") or {}).get("app.kubernetes.io/name", "")),
            running=status.get("phase") == "Running" and ready and not deleting and not deleted,
            deleting=deleting,
            created=epoch(meta.get("creationTimestamp")) or 0.0,
            deleted=deleted,
        )


@attrs.frozen
class AuditWrite:
    """A write request of one of Asklepios' identities, from the apiserver's audit log."""

    t: float  # requestReceivedTimestamp
    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    body: JSON  # requestObject (the patch as sent, the object created, ...)
    audit_id: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> AuditWrite:
        ref = event.get("objectRef") or {}
        body = event.get("requestObject")
        return cls(
            t=epoch(event.get("requestReceivedTimestamp")) or 0.0,
            user=str((event.get("user") or {}).get("username", "")),
            verb=str(event.get("verb", "")),
            resource=str(ref.get("resource", "")),
            subresource=str(ref.get("subresource", "")),
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int((event.get("responseStatus") or {}).get("code") or 0),
            body=body if isinstance(body, dict) else {},
            audit_id=str(event.get("auditID", "")),
        )


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def audit_writes(events: Iterable[Mapping[str, Any]], users: Iterable[str]) -> list[AuditWrite]:
    """The write requests of ``users`` among audit events, in the order received."""
    wanted = set(users)
    out = [
        AuditWrite.of(e)
        for e in events
        if e.get("verb") in WRITE_VERBS and (e.get("user") or {}).get("username") in wanted
    ]
    return sorted(out, key=lambda w: w.t)


@attrs.frozen
class Physics:
    """A crash, stop_kubelet, partition, skew or restore of a node, and what it changed.

    ``t0``/``t1``: just before / just after the call; ``kubelet`` and ``listener``:
    (before, after) of "its kubelet runs" (its kwok, or the lab renewing its Lease as a
    kubelet with a clock behind) and "its kubelet port answers" (accepts or refuses a
    connect: the machine runs; only a machine that is off is silent).
    """

    t0: float
    t1: float
    node: str
    call: str  # crash, stop_kubelet, partition, skew, restore, add
    cause: str  # runner or bmc
    kubelet: tuple[bool, bool]
    listener: tuple[bool, bool]


@attrs.frozen
class BmcEvent:
    t: float
    node: str
    kind: str  # "reset" (value: the requested target) or "power" (value: the new state)
    value: str


@attrs.frozen
class FaultRecord:
    t: float
    index: int  # the planned fault's index (-1: not a planned fault, e.g. the drain)
    kind: str
    phase: str  # start, step, end, skip, note
    targets: tuple[str, ...] = ()
    detail: str = ""


@attrs.frozen
class Incarnation:
    """One ``python -m asklepios run`` process, with an identity of its own."""

    index: int
    slot: str  # "a" or "b": the replica it plays
    user: str  # its static token's user (the audit log's username)
    pod_name: str  # POD_NAME: its Lease holder identity is "<pod_name>_<pid>"
    pid: int
    started: float
    stopped: float | None = None
    how: str = ""  # sigkill, sigterm, end (SIGTERM at the end), died (exited by itself)
    exit_code: int | None = None

    def holds(self, holder: str) -> bool:
        return holder.startswith(f"{self.pod_name}_")


@attrs.frozen
class Interval:
    start: float
    end: float

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int | float) and self.start <= t <= self.end


@attrs.frozen
class Params:
    """The soak's settings the checkers need, and the bounds they check against."""

    watched: tuple[str, ...]
    max_unhealthy: int  # the guard: new kickouts held while more watched nodes than this are NotReady
    kickout: float  # ASKLEPIOS_KICKOUT_SECONDS
    kickin: float  # ASKLEPIOS_KICKIN_SECONDS
    grace: float  # kube-controller-manager's --node-monitor-grace-period
    renew_deadline: float  # ASKLEPIOS_LEASE_RENEW_SECONDS
    pod_wait: float  # ASKLEPIOS_KICKIN_POD_WAIT_SECONDS
    decision_window: float = 2.0  # invariant 1: life that began less than this before the write is a race
    guard_slack: float = 1.0  # invariant 2: a node NotReady for less than this may not be in Asklepios' cache
    recovery_bound: float = 30.0  # invariant 5: beyond grace + kickout
    kickin_bound: float = 5.0  # invariant 6: beyond kickin
    outage_settle: float = 10.0  # after an apiserver outage: controllers catch up
    statefulsets: tuple[tuple[str, int], ...] = ()  # (name, replicas): all Running once settled
    tolerated_taints: tuple[tuple[str, str], ...] = (
        ("node-role.kubernetes.io/control-plane", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    )


@attrs.frozen
class History:
    """Everything a soak recorded (see the module docstring)."""

    params: Params
    start: float
    end: float
    nodes: tuple[NodeVersion, ...]
    pods: tuple[PodVersion, ...]
    node_leases: tuple[LeaseVersion, ...]
    election: tuple[LeaseVersion, ...]
    writes: tuple[AuditWrite, ...]
    physics: tuple[Physics, ...]
    bmc: tuple[BmcEvent, ...]
    faults: tuple[FaultRecord, ...]
    incarnations: tuple[Incarnation, ...]
    outages: tuple[Interval, ...] = ()  # apiserver down (and controllers restarting)
    watch_gaps: tuple[tuple[str, Interval], ...] = ()  # (watch, interval) where events may be missing
