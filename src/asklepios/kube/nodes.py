"""Nodes: from API JSON to `NodeView`, and the conflict-safe writes of kickout and kickin.

Every write that changes spec carries the resourceVersion it was decided on
(a merge patch with `metadata.resourceVersion` is an optimistic-concurrency
precondition: the apiserver answers 409 if the node changed). The caller
re-reads and re-decides on conflict, so a taint added by someone else between
our read and our write is never lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from asklepios.core.node import (
    OUT_OF_SERVICE_TAINT,
    OUT_OF_SERVICE_TAINT_KEY,
    NodeView,
    ReadyStatus,
    Taint,
)
from asklepios.core.records import (
    BMC_ANNOTATION,
    KICKOUT_ANNOTATION,
    NOTREADY_ANNOTATION,
    READY_ANNOTATION,
    KickoutRecord,
    PeriodMark,
    parse_time,
)
from asklepios.kube.client import JSON, KubeClient, list_items

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
    notready = annotations.get(NOTREADY_ANNOTATION)
    ready_mark = annotations.get(READY_ANNOTATION)
    addresses = tuple(a["address"] for a in status.get("addresses") or () if a.get("type") == "InternalIP")
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
        addresses=addresses,
        system_uuid=str((status.get("nodeInfo") or {}).get("systemUUID") or "")[:100],  # node-written: bounded
        bmc_annotation=BMC_ANNOTATION in annotations,
        kickout=KickoutRecord.decode(kickout) if kickout is not None else None,
        notready_mark=PeriodMark.decode(notready) if notready else None,
        ready_mark=PeriodMark.decode(ready_mark) if ready_mark else None,
    )


def _taints(taints: tuple[Taint, ...]) -> list[dict[str, str]] | None:
    return [t.to_api() for t in taints] or None


def _patch(view: NodeView, annotations: Mapping[str, str | None], spec: dict[str, Any] | None = None) -> JSON:
    """A merge patch guarded by the resourceVersion it was decided on."""
    body: JSON = {"metadata": {"resourceVersion": view.resource_version}}
    if annotations:
        body["metadata"]["annotations"] = dict(annotations)
    if spec:
        body["spec"] = spec
    return body


def kickout_patch(view: NodeView, record: KickoutRecord) -> JSON:
    """Cordon and taint (what is not there yet) and record what we changed, in one write."""
    spec: dict[str, Any] = {}
    if record.cordoned:
        spec["unschedulable"] = True
    if record.tainted:
        spec["taints"] = _taints((*view.taints, OUT_OF_SERVICE_TAINT))
    annotations = {KICKOUT_ANNOTATION: record.encode(), NOTREADY_ANNOTATION: None, READY_ANNOTATION: None}
    return _patch(view, annotations, spec)


def kickin_patch(view: NodeView, record: KickoutRecord) -> JSON:
    """Undo exactly what `record` says the kickout changed, and drop our annotations."""
    spec: dict[str, Any] = {}
    if record.cordoned and view.unschedulable:
        spec["unschedulable"] = None
    if record.tainted and view.has_out_of_service_taint:
        ours = (OUT_OF_SERVICE_TAINT_KEY, OUT_OF_SERVICE_TAINT.effect)
        spec["taints"] = _taints(tuple(t for t in view.taints if (t.key, t.effect) != ours))
    annotations = {KICKOUT_ANNOTATION: None, NOTREADY_ANNOTATION: None, READY_ANNOTATION: None}
    return _patch(view, annotations, spec)


def repair_patch(view: NodeView, record: KickoutRecord) -> JSON:
    spec: dict[str, Any] = {}
    if record.cordoned and not view.unschedulable:
        spec["unschedulable"] = True
    if record.tainted and not view.has_out_of_service_taint:
        spec["taints"] = _taints((*view.taints, OUT_OF_SERVICE_TAINT))
    return _patch(view, {}, spec)


def record_patch(view: NodeView, record: KickoutRecord) -> JSON:
    """Rewrite our kickout record (released, powered on)."""
    return _patch(view, {KICKOUT_ANNOTATION: record.encode()})


def marks_patch(view: NodeView, notready: PeriodMark | None, ready: PeriodMark | None) -> JSON:
    """Record (or clear) the NotReady / Ready period starts; touches only our own annotations."""
    return _patch(
        view,
        {
            NOTREADY_ANNOTATION: None if notready is None else notready.encode(),
            READY_ANNOTATION: None if ready is None else ready.encode(),
        },
    )


class NodeApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, name: str) -> NodeView:
        return parse_node(await self.client.request("GET", f"/api/v1/nodes/{name}"))

    async def patch(self, name: str, body: JSON, timeout: float) -> NodeView:
        """Merge-patch a node; raises Conflict when a resourceVersion precondition fails."""
        obj = await self.client.request(
            "PATCH", f"/api/v1/nodes/{name}", body=body, content_type=MERGE_PATCH, timeout=timeout
        )
        return parse_node(obj)

    async def list(self, label_selector: str, field_selector: str = "") -> list[NodeView]:
        """Every matching node, page by page: 5,000 nodes decoded at once cost ~90 MiB at start-up."""
        query = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            query["fieldSelector"] = field_selector
        return await list_items(self.client, "/api/v1/nodes", query, parse_node)
