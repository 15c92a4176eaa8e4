"""The ConfigMaps that hold Asklepios' own records, in its own namespace.

`asklepios-records` (the healer's records) and `asklepios-balancer` (the balancer's
state) are both written through this one adapter.

Only Asklepios (RBAC: get/list/watch/patch/update on this one name, and create) and
admins can write it; no kubelet can. Writes are JSON merge patches of `data` keys
(a key set to null is removed), so an admin's other keys and every other node's
entry are left as they are; the first write creates the object. The reflector
watches just this object (`metadata.name` field selector, which RBAC's
resourceNames allow for list and watch).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from asklepios.core.records import RECORDS_CONFIGMAP
from asklepios.kube.client import JSON, Conflict, KubeClient, NotFound

MERGE_PATCH = "application/merge-patch+json"


@attrs.frozen
class RecordData:
    """The ConfigMap's data as read (only string values), with its resourceVersion."""

    data: Mapping[str, str]
    resource_version: str


def parse_records(obj: JSON) -> RecordData:
    """Total: what is not a string-to-string map reads as absent (each entry is decoded later)."""
    meta, data = obj.get("metadata"), obj.get("data")
    meta = meta if isinstance(meta, dict) else {}
    data = data if isinstance(data, dict) else {}
    return RecordData(
        data={str(k): v for k, v in data.items() if isinstance(v, str)},
        resource_version=str(meta.get("resourceVersion", "")),
    )


class RecordApi:
    """The `RecordPort`: write some keys of the records ConfigMap."""

    def __init__(self, client: KubeClient, namespace: str, name: str = RECORDS_CONFIGMAP) -> None:
        self.client = client
        self.namespace, self.name = namespace, name

    @property
    def collection(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    @property
    def field_selector(self) -> str:
        return f"metadata.name={self.name}"

    async def get(self, timeout: float) -> RecordData | None:
        try:
            return parse_records(await self.client.request("GET", f"{self.collection}/{self.name}", timeout=timeout))
        except NotFound:
            return None

    async def load(self) -> dict[str, str]:
        """Just the data ({} before the first write): the balancer's view of its state."""
        data = await self.get(timeout=10)
        return dict(data.data) if data is not None else {}

    async def write(self, changes: Mapping[str, str | None], timeout: float) -> None:
        await self.put(changes, timeout)

    async def put(self, changes: Mapping[str, str | None], timeout: float) -> RecordData:
        """Set (or, with None, remove) data keys; creates the ConfigMap on first use."""
        body: JSON = {"data": dict(changes)}
        try:
            obj = await self.client.request(
                "PATCH", f"{self.collection}/{self.name}", body=body, content_type=MERGE_PATCH, timeout=timeout
            )
        except NotFound:
            create: JSON = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": {"app.kubernetes.io/name": "asklepios"},
                    "annotations": {"asklepios.io/about": "Asklepios' own records: see its README (Records)"},
                },
                "data": {k: v for k, v in changes.items() if v is not None},
            }
            try:
                obj = await self.client.request("POST", self.collection, body=create, timeout=timeout)
            except Conflict:  # created meanwhile (AlreadyExists): patch it
                obj = await self.client.request(
                    "PATCH", f"{self.collection}/{self.name}", body=body, content_type=MERGE_PATCH, timeout=timeout
                )
        return parse_records(obj)
