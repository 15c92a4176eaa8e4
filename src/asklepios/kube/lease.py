"""The coordination.k8s.io Lease that elects the one replica allowed to write."""

from __future__ import annotations

from datetime import datetime

import attrs

from asklepios.core.records import parse_time
from asklepios.kube.client import JSON, KubeClient, NotFound


@attrs.frozen
class LeaseRecord:
    holder: str
    duration_seconds: int
    renewed: datetime | None
    transitions: int
    resource_version: str
    acquired: datetime | None = None


def _parse(obj: JSON) -> LeaseRecord:
    spec = obj.get("spec", {})
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        renewed=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(obj.get("metadata", {}).get("resourceVersion", "")),
        acquired=parse_time(spec.get("acquireTime")),
    )


def _micro_time(moment: datetime) -> str:
    """MicroTime as the apiserver wants it: RFC 3339 with exactly six fractional digits."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name = namespace, name

    async def get(self, timeout: float) -> LeaseRecord | None:
        try:
            return _parse(await self.client.request("GET", f"{self.path}/{self.name}", timeout=timeout))
        except NotFound:
            return None

    def _body(self, spec: JSON, resource_version: str = "") -> JSON:
        meta: JSON = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

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
    ) -> LeaseRecord:
        """Create the lease, or replace it guarded by the resourceVersion we read (409 if it moved)."""
        spec: JSON = {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquired is None and previous is not None and previous.holder == holder:
            acquired = previous.acquired  # a renewal keeps the time the lease was taken
        if acquired is not None:
            spec["acquireTime"] = _micro_time(acquired)
        if previous is None:
            obj = await self.client.request("POST", self.path, body=self._body(spec), timeout=timeout)
        else:
            obj = await self.client.request(
                "PUT",
                f"{self.path}/{self.name}",
                body=self._body(spec, previous.resource_version),
                timeout=timeout,
            )
        return _parse(obj)
