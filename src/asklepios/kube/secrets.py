"""The fencing Secret: the whole BMC inventory (`<node>.url`, credentials, ca.crt).

RBAC: `get` on that one name. Read once per fencing attempt rather than cached, so a
corrected URL or password takes effect at the next retry without a restart, and
never once per BMC request.
"""

from __future__ import annotations

import base64
import binascii

from asklepios.core.fencing import FencingError
from asklepios.kube.client import ApiError, KubeClient, NotFound


class SecretApi:
    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace, self.name = namespace, name
        self.where = f"Secret {namespace}/{name}"

    async def secret(self) -> dict[str, str]:
        where = self.where
        try:
            obj = await self.client.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}")
        except NotFound:
            raise FencingError(f"{where} not found (ASKLEPIOS_FENCING_SECRET)") from None
        except ApiError as exc:
            raise FencingError(f"cannot read {where}: {exc}") from None
        out: dict[str, str] = {}
        for key, value in (obj.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise FencingError(f"{where}: key {key!r} is not base64-encoded text") from None
        return out
