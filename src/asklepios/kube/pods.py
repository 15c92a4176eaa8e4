"""Pods: the ones on a node (to hold kickin while old pods are still Terminating)."""

from __future__ import annotations

from asklepios.core.node import parse_time
from asklepios.core.pod import PodRef
from asklepios.kube.client import JSON, KubeClient


def parse_pod_ref(obj: JSON) -> PodRef:
    meta = obj.get("metadata", {})
    return PodRef(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        created=parse_time(meta.get("creationTimestamp")),
        deleting_since=parse_time(meta.get("deletionTimestamp")),
    )


class PodApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def on_node(self, node: str) -> list[PodRef]:
        data = await self.client.request(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node}"}, timeout=30
        )
        return [parse_pod_ref(obj) for obj in data.get("items", [])]
