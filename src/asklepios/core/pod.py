"""The pods of a kicked-out node: which to force-delete, what holds kickin, when they are gone.

After the taint, the taint-eviction controller marks the node's pods for deletion,
but only the pod garbage collector force-deletes them, on a 20 s period. Asklepios
applies the pod GC's own rule for out-of-service nodes at once (a Terminating pod
on a NotReady node with the out-of-service taint goes, grace period 0), never to a
pod that tolerates the taint. Kickin waits for pods from before the kickout that
are still Terminating: removing the taint first would leave them stuck for good.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from asklepios.core.records import KickoutRecord


@attrs.frozen
class PodRef:
    namespace: str
    name: str
    uid: str = ""
    created: datetime | None = None
    deleting_since: datetime | None = None  # metadata.deletionTimestamp
    tolerates_out_of_service: bool = False  # a toleration matching the out-of-service NoExecute taint

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def from_before(self, record: KickoutRecord) -> bool:
        return self.created is None or self.created <= record.at


@attrs.frozen
class NodePods:
    """What the pod watch of one kicked-out node says, reduced for the decision."""

    synced: bool
    stuck: tuple[str, ...] = ()  # pre-kickout pods still Terminating (they hold kickin)
    left: tuple[str, ...] = ()  # pre-kickout pods that still have to leave (they hold "released")

    @classmethod
    def of(cls, pods: list[PodRef] | None, record: KickoutRecord) -> NodePods:
        if pods is None:
            return cls(synced=False)
        return cls(
            synced=True,
            stuck=tuple(sorted(p.key for p in stuck_before_kickout(pods, record))),
            left=tuple(sorted(p.key for p in still_to_leave(pods, record))),
        )


def stuck_before_kickout(pods: list[PodRef], record: KickoutRecord) -> list[PodRef]:
    """Pods still Terminating that were on the node before it was kicked out."""
    return [p for p in pods if p.deleting_since is not None and p.from_before(record)]


def still_to_leave(pods: list[PodRef], record: KickoutRecord) -> list[PodRef]:
    """Pre-kickout pods the taint will still remove: Terminating, or not tolerating it."""
    return [
        p for p in pods if p.from_before(record) and (p.deleting_since is not None or not p.tolerates_out_of_service)
    ]


def force_delete_candidates(pods: list[PodRef]) -> list[PodRef]:
    """The pod GC's rule on a NotReady, out-of-service node: its Terminating pods.

    A pod that tolerates the taint is left alone even when something else deleted it.
    """
    return [p for p in pods if p.deleting_since is not None and not p.tolerates_out_of_service]
