"""The kubelets' heartbeats: node Leases in kube-node-lease, read one at a time.

A running kubelet renews its node's Lease every few seconds, even when it reports
the node NotReady. Asklepios reads a node's Lease when its NotReady period starts
and again when a taint is due (and while it is held), so it can see the Lease
change on its own clock; it never keeps a watch on thousands of them. The Lease
is the node's own word: any field of the wrong type or size reads as absent.
"""

from __future__ import annotations

from datetime import timedelta

from asklepios.core.evidence import LeaseSeen
from asklepios.core.records import parse_time
from asklepios.kube.client import KubeClient, NotFound

NODE_LEASE_NAMESPACE = "kube-node-lease"


class NodeLeaseApi:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, node: str, timeout: float) -> LeaseSeen | None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{node}"
        try:
            obj = await self.client.request("GET", path, timeout=timeout)
        except NotFound:
            return None
        return parse_lease(obj)


def parse_lease(obj: object) -> LeaseSeen:
    """Total: a Lease the node wrote strangely still reads as a Lease (no renewal known)."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    spec = spec if isinstance(spec, dict) else {}
    raw = spec.get("leaseDurationSeconds")
    seconds = raw if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 3600 else 40
    return LeaseSeen(renewed=parse_time(spec.get("renewTime")), duration=timedelta(seconds=seconds))
