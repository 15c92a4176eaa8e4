"""One ConfigMap in Asklepios' own namespace as a small key-value record.

The balancer keeps its per-StatefulSet state (evictions this hour, refusals, backoff)
in ConfigMap `asklepios-balancer`, so a new leader goes on where the old one stopped.
Each key is written on its own with a JSON merge patch (`null` deletes it), so
writes of different keys never conflict; the ConfigMap is created on the first write.
RBAC: get/patch on that one name (resourceNames), create on configmaps.
"""

from __future__ import annotations

from asklepios.kube.client import KubeClient, NotFound


class ConfigMapRecord:
    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"

    async def load(self) -> dict[str, str]:
        """Its data ({} when it does not exist yet); values that are not strings are left out."""
        try:
            data = await self.client.request("GET", self._path)
        except NotFound:
            return {}
        stored = data.get("data")
        if not isinstance(stored, dict):
            return {}
        return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)}

    async def write(self, changes: dict[str, str | None], timeout: float) -> None:
        """Set (or with None delete) these keys; other keys are left as they are."""
        try:
            await self.client.request(
                "PATCH",
                self._path,
                body={"data": changes},
                content_type="application/merge-patch+json",
                timeout=timeout,
            )
        except NotFound:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "data": {k: v for k, v in changes.items() if v is not None},
            }
            await self.client.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/configmaps", body=body, timeout=timeout
            )
