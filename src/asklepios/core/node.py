"""Frozen values describing a node as Asklepios sees it, and the taints it reads and writes.

The kube adapter turns an apiserver Node into a `NodeView`; everything after that
works on these values only. They carry just what the decisions need, so a cache of
thousands of nodes stays small.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs

from asklepios.core.records import KickoutRecord, NodeRecord, PeriodMark

OUT_OF_SERVICE_TAINT_KEY = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_TAINT_VALUE = "nodeshutdown"
LEGACY_SKIP_TAINT_KEY = "node.kubernetes.io/asklepios"
LEGACY_SKIP_TAINT_VALUE = "skip"
EXCLUDE_LABEL = "asklepios.io/exclude"


class ReadyStatus(enum.Enum):
    """The status of a node's `Ready` condition; MISSING when it has none."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
    MISSING = "Missing"

    @classmethod
    def parse(cls, raw: str | None) -> ReadyStatus:
        if raw is None:
            return cls.MISSING
        try:
            return cls(raw)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_ready(self) -> bool:
        return self is ReadyStatus.TRUE


@attrs.frozen
class Taint:
    key: str
    value: str = ""
    effect: str = "NoExecute"

    def to_api(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


UNSCHEDULABLE_TAINT_KEY = "node.kubernetes.io/unschedulable"  # node-lifecycle's mirror of a cordon
OUT_OF_SERVICE_TAINT = Taint(OUT_OF_SERVICE_TAINT_KEY, OUT_OF_SERVICE_TAINT_VALUE, "NoExecute")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@attrs.frozen
class NodeView:
    """A node reduced to what the healer decides on."""

    name: str
    uid: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = _EMPTY
    ready: ReadyStatus = ReadyStatus.TRUE
    ready_since: datetime | None = None  # the Ready condition's lastTransitionTime
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    addresses: tuple[str, ...] = ()  # InternalIP addresses, probed before a kickout
    system_uuid: str = ""  # status.nodeInfo.systemUUID: the machine's SMBIOS UUID, as the node reports it
    bmc_annotation: bool = False  # carries asklepios.io/bmc, no longer read: `check` warns
    mirror: str | None = None  # the asklepios.io/kickout annotation as found: for people, never trusted
    record: NodeRecord | None = None  # Asklepios' own record, attached from its ConfigMap (never from the node)

    @property
    def kickout(self) -> KickoutRecord | None:
        return self.record.kickout if self.record is not None else None

    @property
    def notready_mark(self) -> PeriodMark | None:
        return self.record.notready if self.record is not None else None

    @property
    def ready_mark(self) -> PeriodMark | None:
        return self.record.ready if self.record is not None else None

    @property
    def mirror_out_of_date(self) -> bool:
        """The node's mirror annotation differs from what our record says (forged, stale, or missing).

        Not while the node lacks a cordon or taint that the record says the kickout added:
        the mirror says "kicked out" only with what it describes, so until a repair puts
        them back (held by the guard, or by the verdict) or the kickin ends it, it is left
        alone (the 60-minute soak: a record stored though its node patch was lost in an
        apiserver outage, then only the mirror written while 3 of 5 nodes were NotReady).
        """
        if self.kickout_lost:
            return False
        wanted = self.kickout.mirror() if self.kickout is not None else None
        return self.mirror != wanted

    @property
    def kickout_lost(self) -> tuple[str, ...]:
        """What our kickout added that the node no longer shows (a repair puts it back)."""
        kickout = self.kickout
        if kickout is None:
            return ()
        lost = ("out-of-service taint",) if kickout.tainted and not self.has_out_of_service_taint else ()
        return (*lost, "cordon") if kickout.cordoned and not self.unschedulable else lost

    @property
    def has_out_of_service_taint(self) -> bool:
        return any(t.key == OUT_OF_SERVICE_TAINT_KEY and t.effect == "NoExecute" for t in self.taints)

    @property
    def takes_new_pods(self) -> bool:
        """Ready, not cordoned, not kicked out, and without the control plane's cordon taint.

        node-lifecycle mirrors a cordon as the taint `node.kubernetes.io/unschedulable`
        and removes it only after the uncordon: until then the scheduler keeps new pods
        off the node, so a pod evicted towards it would land elsewhere.
        """
        return (
            self.ready.is_ready
            and not self.unschedulable
            and self.kickout is None
            and not any(t.key in (OUT_OF_SERVICE_TAINT_KEY, UNSCHEDULABLE_TAINT_KEY) for t in self.taints)
        )

    @property
    def excluded_by(self) -> str | None:
        """Why this node must never be kicked out, or None."""
        if self.labels.get(EXCLUDE_LABEL) == "true":
            return f"label {EXCLUDE_LABEL}=true"
        for t in self.taints:
            if t.key == LEGACY_SKIP_TAINT_KEY and t.value == LEGACY_SKIP_TAINT_VALUE:
                return f"taint {LEGACY_SKIP_TAINT_KEY}={LEGACY_SKIP_TAINT_VALUE}"
        return None
