"""Pods: those on a kicked-out node (force delete, kickin), balancer pods, evictions and the
PodDisruptionBudgets that refuse them."""

from __future__ import annotations

import sys
from types import MappingProxyType

import orjson

from asklepios.core.balance import OwnerRef, PodView
from asklepios.core.node import OUT_OF_SERVICE_TAINT
from asklepios.core.placement import NodeRequirement, Placement, Toleration
from asklepios.core.pod import PodRef
from asklepios.core.records import parse_time
from asklepios.kube.client import JSON, KubeClient


def _tolerates_out_of_service(spec: JSON) -> bool:
    taint = OUT_OF_SERVICE_TAINT
    return any(_toleration(t).tolerates(taint.key, taint.value, taint.effect) for t in spec.get("tolerations") or ())


def parse_pod_ref(obj: JSON) -> PodRef:
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    return PodRef(
        namespace=sys.intern(meta.get("namespace", "")),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        created=parse_time(meta.get("creationTimestamp")),
        deleting_since=parse_time(meta.get("deletionTimestamp")),
        tolerates_out_of_service=_tolerates_out_of_service(spec),
    )


def node_pods_path(node: str) -> tuple[str, str]:
    """(path, field selector) of the pods bound to `node`."""
    return "/api/v1/pods", f"spec.nodeName={node}"


class PodApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def on_node(self, node: str) -> list[PodRef]:
        path, selector = node_pods_path(node)
        data = await self.client.request("GET", path, query={"fieldSelector": selector}, timeout=30)
        return [parse_pod_ref(obj) for obj in data.get("items", [])]

    async def force_delete(self, pod: PodRef, timeout: float) -> None:
        """Delete at once (grace period 0), only the pod with this UID (409 if it was replaced)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod.uid},
        }
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        await self.client.request("DELETE", path, body=body, timeout=timeout)


# Pods of one StatefulSet share their template: one Placement and one OwnerRef for all of
# them, and the strings they repeat (namespace, node, owner) interned, keep a cache of
# 50,000 pods small. Bounded: a cluster with more distinct templates just shares less.
_SHARED_LIMIT = 10_000
_placements: dict[bytes, Placement] = {}
_owners: dict[tuple[str, str, str], OwnerRef] = {}


def _shared_placement(spec: JSON) -> Placement:
    parts = (spec.get("nodeSelector"), (spec.get("affinity") or {}).get("nodeAffinity"), spec.get("tolerations"))
    key = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    found = _placements.get(key)
    if found is None:
        if len(_placements) >= _SHARED_LIMIT:
            _placements.clear()
        found = _placements[key] = _placement(spec)
    return found


def _shared_owner(kind: str, name: str, uid: str) -> OwnerRef:
    key = (kind, name, uid)
    found = _owners.get(key)
    if found is None:
        if len(_owners) >= _SHARED_LIMIT:
            _owners.clear()
        found = _owners[key] = OwnerRef(sys.intern(kind), sys.intern(name), sys.intern(uid))
    return found


def _placement(spec: JSON) -> Placement:
    terms: list[tuple[NodeRequirement, ...]] = []
    required = (spec.get("affinity") or {}).get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or ():
        reqs = [
            NodeRequirement(e.get("key", ""), e.get("operator", ""), tuple(e.get("values") or ()))
            for e in term.get("matchExpressions") or ()
        ]
        reqs += [
            NodeRequirement(e.get("key", ""), e.get("operator", ""), tuple(e.get("values") or ()), field=True)
            for e in term.get("matchFields") or ()
        ]
        terms.append(tuple(reqs))
    return Placement(
        node_selector=MappingProxyType(dict(spec.get("nodeSelector") or {})),
        affinity_terms=tuple(terms),
        tolerations=tuple(_toleration(t) for t in spec.get("tolerations") or ()),
    )


def _toleration(t: JSON) -> Toleration:
    return Toleration(
        key=t.get("key", "") or "",
        operator=t.get("operator", "Equal") or "Equal",
        value=t.get("value", "") or "",
        effect=t.get("effect", "") or "",
    )


def parse_pod(obj: JSON) -> PodView:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
    owner = next((o for o in meta.get("ownerReferences") or () if o.get("controller")), None)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    created = parse_time(meta.get("creationTimestamp"))
    return PodView.of(
        namespace=sys.intern(meta.get("namespace", "")),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        node=sys.intern(spec.get("nodeName", "") or ""),
        owner=_shared_owner(owner.get("kind", ""), owner.get("name", ""), owner.get("uid", "")) if owner else None,
        created=created.timestamp() if created is not None else None,
        deleting=meta.get("deletionTimestamp") is not None,
        ready=ready,
        placement=_shared_placement(spec),
    )


class Evictions:
    """The Eviction API (PodDisruptionBudgets are honoured: a 429 means not now)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def evict(self, pod: PodView, timeout: float) -> None:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "deleteOptions": {"preconditions": {"uid": pod.uid}},
        }
        await self.client.request(
            "POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction", body=body, timeout=timeout
        )

    async def statefulset_replicas(self, namespace: str, name: str) -> int:
        sts = await self.client.request("GET", f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}")
        return int(sts.get("spec", {}).get("replicas", 1))

    async def budgets(self, namespace: str) -> str:
        """The namespace's PodDisruptionBudgets as "name@resourceVersion", sorted: any change of one
        (its spec, or the disruption controller's status) changes the string. Served by the
        apiserver's watch cache (resourceVersion=0): no read from etcd."""
        data = await self.client.request(
            "GET", f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets", query={"resourceVersion": "0"}
        )
        meta = [item.get("metadata") or {} for item in data.get("items") or []]
        return ",".join(sorted(f"{m.get('name', '')}@{m.get('resourceVersion', '')}" for m in meta))
