"""The engine's ports: what it needs from the apiserver, the network and the BMCs.

The healer, the balancer and the leader elector depend on these protocols, not on
kubernetes-asyncio: `asklepios.kube` and `asklepios.fence` implement them for real,
and the engine's unit tests run against small in-memory fakes on a fake clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from asklepios.core.evidence import Answer, LeaseSeen
from asklepios.core.fencing import BmcTarget
from asklepios.core.node import NodeView
from asklepios.core.pod import PodRef
from asklepios.core.volumes import Attachment
from asklepios.kube.events import ObjectRef
from asklepios.kube.lease import LeaseRecord

JSON = dict[str, Any]


class NodePort(Protocol):
    async def get(self, name: str) -> NodeView: ...

    async def patch(self, name: str, body: JSON, timeout: float) -> NodeView:
        """A merge patch; Conflict when its resourceVersion precondition fails."""
        ...


class NodeLeasePort(Protocol):
    async def get(self, node: str, timeout: float) -> LeaseSeen | None:
        """The node's Lease in kube-node-lease; None when there is none."""
        ...


class ProbePort(Protocol):
    async def answers(self, addresses: tuple[str, ...], ports: tuple[int, ...]) -> tuple[Answer, ...]:
        """How each "ip:port" answered a TCP connect (accepted, refused, timeout, unreachable)."""
        ...


class BmcPort(Protocol):
    async def power_state(self, target: BmcTarget) -> str:
        """The System's PowerState ("On", "Off", ...); raises FencingError."""
        ...

    async def reset(self, target: BmcTarget, reset_type: str) -> None:
        """ComputerSystem.Reset with ResetType ForceOff or On; raises FencingError."""
        ...

    async def system_uuid(self, target: BmcTarget) -> str:
        """The System's `UUID` ("" when the BMC reports none); raises FencingError."""
        ...


class CredentialsPort(Protocol):
    where: str  # "Secret <namespace>/<name>", for messages

    async def secret(self) -> dict[str, str]:
        """The fencing Secret's data, decoded: the whole inventory; raises FencingError."""
        ...


class PodWatchPort(Protocol):
    def follow(self, node: str) -> None:
        """Start watching the pods bound to `node` (idempotent)."""
        ...

    def unfollow(self, node: str) -> None: ...

    def pods(self, node: str) -> list[PodRef] | None:
        """The pods bound to `node`; None until its watch has listed them."""
        ...


class VolumePort(Protocol):
    def attachments(self, node: str) -> list[Attachment] | None:
        """The VolumeAttachments of `node`; None until the watch has listed them."""
        ...


class PodDeletePort(Protocol):
    async def force_delete(self, pod: PodRef, timeout: float) -> None:
        """Delete with grace period 0 and a UID precondition."""
        ...


class EventPort(Protocol):
    async def emit(self, obj: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None: ...


class LeasePort(Protocol):
    """The Lease that elects the one replica allowed to write."""

    async def get(self, timeout: float) -> LeaseRecord | None: ...

    async def write(
        self,
        *,
        holder: str,
        duration_seconds: int,
        now: datetime,
        acquired: datetime | None,
        transitions: int,
        previous: LeaseRecord | None,
        timeout: float,
    ) -> LeaseRecord: ...
