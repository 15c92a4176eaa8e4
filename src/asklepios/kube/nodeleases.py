"""The kubelets' heartbeats: node Leases in kube-node-lease, read one at a time.

A running kubelet renews its node's Lease every few seconds, even when it reports
the node NotReady. Asklepios reads one Lease at a kickout deadline (and once per
resync while the kickout is held), never keeps a watch on thousands of them.
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
        spec = obj.get("spec", {})
        return LeaseSeen(
            renewed=parse_time(spec.get("renewTime")),
            duration=timedelta(seconds=int(spec.get("leaseDurationSeconds") or 40)),
        )
