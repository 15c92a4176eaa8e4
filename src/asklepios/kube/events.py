"""Kubernetes Events on the objects Asklepios acts on (`kubectl describe node` shows them).

Events are best effort: a failure to record one is logged and never blocks or
undoes the action it describes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from asklepios.core.node import NodeView
from asklepios.core.records import format_time
from asklepios.kube.client import ApiError, KubeClient

COMPONENT = "asklepios"
log = logging.getLogger("asklepios.events")


@attrs.frozen
class ObjectRef:
    kind: str
    name: str
    uid: str = ""
    namespace: str = ""  # empty for cluster-scoped objects such as Node
    api_version: str = "v1"


def node_ref(view: NodeView) -> ObjectRef:
    """The Event target for a node."""
    return ObjectRef(kind="Node", name=view.name, uid=view.uid)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        instance: str | None = None,
        *,
        now: Callable[[], datetime] = _utcnow,
        failed: Callable[[ApiError], None] = lambda exc: None,
    ) -> None:
        self.client = client
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        self.now = now
        self.failed = failed

    async def emit(self, obj: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        namespace = obj.namespace or "default"  # events about cluster-scoped objects live in default
        now = format_time(self.now().replace(microsecond=0))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{obj.name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "kind": obj.kind,
                "name": obj.name,
                "uid": obj.uid,
                "apiVersion": obj.api_version,
                **({"namespace": obj.namespace} if obj.namespace else {}),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        except ApiError as exc:
            self.failed(exc)
            log.warning("could not record event", extra={"reason": reason, "error": str(exc)})
