"""Nodes: from API JSON to `NodeView`, and the conflict-safe writes of kickout and kickin.

Every write that changes spec carries the resourceVersion it was decided on
(a merge patch with `metadata.resourceVersion` is an optimistic-concurrency
precondition: the apiserver answers 409 if the node changed). The caller
re-reads and re-decides on conflict, so a taint added by someone else between
our read and our write is never lost.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from asklepios.core.node import (
    KICKOUT_ANNOTATION,
    NOTREADY_ANNOTATION,
    OUT_OF_SERVICE_TAINT,
    OUT_OF_SERVICE_TAINT_KEY,
    KickoutRecord,
    NodeView,
    NotReadyMark,
    ReadyStatus,
    Taint,
    parse_time,
)
from asklepios.kube.client import JSON, KubeClient

MERGE_PATCH = "application/merge-patch+json"


def parse_node(obj: JSON) -> NodeView:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
    ready, since = ReadyStatus.MISSING, None
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            ready, since = (
                ReadyStatus.parse(cond.get("status")),
                parse_time(cond.get("lastTransitionTime")),
            )
            break
    annotations = meta.get("annotations") or {}
    kickout = annotations.get(KICKOUT_ANNOTATION)
    mark = annotations.get(NOTREADY_ANNOTATION)
    return NodeView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=MappingProxyType(dict(meta.get("labels") or {})),
        ready=ready,
        ready_since=since,
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=tuple(
            Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", "")) for t in spec.get("taints") or ()
        ),
        kickout=KickoutRecord.decode(kickout) if kickout else None,
        notready_mark=NotReadyMark.decode(mark) if mark else None,
    )


def _taints(taints: tuple[Taint, ...]) -> list[dict[str, str]] | None:
    return [t.to_api() for t in taints] or None


def kickout_patch(view: NodeView, record: KickoutRecord) -> JSON:
    spec: dict[str, Any] = {}
    if record.cordoned:
        spec["unschedulable"] = True
    if record.tainted:
        spec["taints"] = _taints((*view.taints, OUT_OF_SERVICE_TAINT))
    return {
        "metadata": {
            "resourceVersion": view.resource_version,
            "annotations": {KICKOUT_ANNOTATION: record.encode(), NOTREADY_ANNOTATION: None},
        },
        "spec": spec,
    }


def kickin_patch(view: NodeView, record: KickoutRecord) -> JSON:
    spec: dict[str, Any] = {}
    if record.cordoned and view.unschedulable:
        spec["unschedulable"] = None
    if record.tainted and view.has_out_of_service_taint:
        ours = (OUT_OF_SERVICE_TAINT_KEY, OUT_OF_SERVICE_TAINT.effect)
        spec["taints"] = _taints(tuple(t for t in view.taints if (t.key, t.effect) != ours))
    return {
        "metadata": {
            "resourceVersion": view.resource_version,
            "annotations": {KICKOUT_ANNOTATION: None, NOTREADY_ANNOTATION: None},
        },
        "spec": spec,
    }


def repair_patch(view: NodeView, record: KickoutRecord) -> JSON:
    spec: dict[str, Any] = {}
    if record.cordoned and not view.unschedulable:
        spec["unschedulable"] = True
    if record.tainted and not view.has_out_of_service_taint:
        spec["taints"] = _taints((*view.taints, OUT_OF_SERVICE_TAINT))
    return {"metadata": {"resourceVersion": view.resource_version}, "spec": spec}


def mark_patch(mark: NotReadyMark | None) -> JSON:
    """Record (or clear) the NotReady period start; touches only our own annotation."""
    return {"metadata": {"annotations": {NOTREADY_ANNOTATION: None if mark is None else mark.encode()}}}


class NodeApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, name: str) -> NodeView:
        return parse_node(await self.client.request("GET", f"/api/v1/nodes/{name}"))

    async def patch(self, name: str, body: JSON, timeout: float | None = None) -> NodeView:
        """Merge-patch a node; raises Conflict when a resourceVersion precondition fails."""
        obj = await self.client.request(
            "PATCH", f"/api/v1/nodes/{name}", body=body, content_type=MERGE_PATCH, timeout=timeout
        )
        return parse_node(obj)

    async def list(self, label_selector: str) -> list[NodeView]:
        query = {"labelSelector": label_selector} if label_selector else {}
        data = await self.client.request("GET", "/api/v1/nodes", query=query, timeout=60)
        return [parse_node(obj) for obj in data.get("items", [])]
