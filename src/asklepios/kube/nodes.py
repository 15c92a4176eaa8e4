"""Nodes: from API JSON to `NodeView`, and the conflict-safe writes of kickout and kickin.

Every write that changes spec carries the resourceVersion it was decided on
(a merge patch with `metadata.resourceVersion` is an optimistic-concurrency
precondition: the apiserver answers 409 if the node changed). The caller
re-reads and re-decides on conflict, so a taint added by someone else between
our read and our write is never lost.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from asklepios.core.evidence import DeathVerdict
from asklepios.core.node import (
    OUT_OF_SERVICE_TAINT,
    OUT_OF_SERVICE_TAINT_KEY,
    NodeView,
    ReadyStatus,
    Taint,
)
from asklepios.core.records import BMC_ANNOTATION, KICKOUT_ANNOTATION, KickoutRecord, parse_time
from asklepios.kube.client import JSON, KubeClient, list_items

MERGE_PATCH = "application/merge-patch+json"


def _dict(raw: object) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else {}


def _list(raw: object) -> list[Any]:
    return raw if isinstance(raw, list) else []


def _str(raw: object) -> str:
    return raw if isinstance(raw, str) else ""


def parse_node(obj: JSON) -> NodeView:
    """A Node as the healer sees it. Total over what a node may write about itself.

    Status and annotations are the node's own words: a field of the wrong type is
    read as absent, never as an error. Only a Node without a name raises (KeyError),
    which the reflector skips and counts. Asklepios' records are attached later, from
    its own ConfigMap; the `asklepios.io/kickout` annotation is kept as found, only
    to rewrite it when it disagrees with the record.
    """
    meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
    name = meta["name"]
    if not isinstance(name, str):
        raise TypeError("metadata.name is not a string")
    ready, since = ReadyStatus.MISSING, None
    for cond in _list(status.get("conditions")):
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = ReadyStatus.parse(cond.get("status") if isinstance(cond.get("status"), str) else "Unknown")
            since = parse_time(cond.get("lastTransitionTime"))
            break
    annotations = _dict(meta.get("annotations"))
    mirror = annotations.get(KICKOUT_ANNOTATION)
    addresses = tuple(
        a["address"]
        for a in _list(status.get("addresses"))
        if isinstance(a, dict) and a.get("type") == "InternalIP" and _is_ip(a.get("address"))
    )
    labels = {k: v for k, v in _dict(meta.get("labels")).items() if isinstance(k, str) and isinstance(v, str)}
    return NodeView(
        name=name,
        uid=_str(meta.get("uid")),
        resource_version=_str(meta.get("resourceVersion")),
        labels=MappingProxyType(labels),
        ready=ready,
        ready_since=since,
        unschedulable=spec.get("unschedulable") is True,
        taints=tuple(
            Taint(_str(t.get("key")), _str(t.get("value")), _str(t.get("effect")))
            for t in _list(spec.get("taints"))
            if isinstance(t, dict)
        ),
        addresses=addresses,
        system_uuid=_str(_dict(status.get("nodeInfo")).get("systemUUID"))[:100],  # node-written: bounded
        bmc_annotation=BMC_ANNOTATION in annotations,
        mirror=mirror if isinstance(mirror, str) else None,
    )


def _is_ip(raw: object) -> bool:
    if not isinstance(raw, str):
        return False
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        return False
    return True


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


def _dead(death: DeathVerdict, what: str) -> None:
    """The one rule of every write that adds the out-of-service taint."""
    if not death.dead:
        raise ValueError(f"{what}: the out-of-service taint needs the death verdict ({death.hold}: {death.detail})")


def kickout_patch(view: NodeView, record: KickoutRecord, death: DeathVerdict) -> JSON:
    """Cordon and taint (what is not there yet), with the mirror annotation, in one write."""
    spec: dict[str, Any] = {}
    if record.cordoned:
        spec["unschedulable"] = True
    if record.tainted:
        _dead(death, "kickout")
        present = view.has_out_of_service_taint  # after a lost answer: our own taint, already there
        spec["taints"] = _taints(view.taints if present else (*view.taints, OUT_OF_SERVICE_TAINT))
    return _patch(view, {KICKOUT_ANNOTATION: record.mirror()}, spec)


def kickin_patch(view: NodeView, record: KickoutRecord) -> JSON:
    """Undo exactly what `record` says the kickout changed, and drop the mirror annotation."""
    spec: dict[str, Any] = {}
    if record.cordoned and view.unschedulable:
        spec["unschedulable"] = None
    if record.tainted and view.has_out_of_service_taint:
        ours = (OUT_OF_SERVICE_TAINT_KEY, OUT_OF_SERVICE_TAINT.effect)
        spec["taints"] = _taints(tuple(t for t in view.taints if (t.key, t.effect) != ours))
    return _patch(view, {KICKOUT_ANNOTATION: None} if view.mirror is not None else {}, spec)


def repair_patch(view: NodeView, record: KickoutRecord, death: DeathVerdict | None) -> JSON | None:
    """Re-apply a cordon of ours; and our taint only with a death verdict of this moment."""
    spec: dict[str, Any] = {}
    if record.cordoned and not view.unschedulable:
        spec["unschedulable"] = True
    if record.tainted and not view.has_out_of_service_taint and death is not None:
        _dead(death, "repair")
        spec["taints"] = _taints((*view.taints, OUT_OF_SERVICE_TAINT))
    return _patch(view, {}, spec) if spec else None


def mirror_patch(view: NodeView, record: KickoutRecord | None) -> JSON:
    """Rewrite (or remove) the mirror annotation from our record."""
    return _patch(view, {KICKOUT_ANNOTATION: None if record is None else record.mirror()})


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
