"""One Redfish request at a time to a node's BMC, with sushy in a worker thread.

sushy is the Redfish client OpenStack Ironic uses (and Burrito is OpenStack). It is
synchronous, so each request runs in a worker thread with connect and read
timeouts; the engine sequences them (ForceOff, poll PowerState until Off) on its
own clock. Basic auth only (no session to leak), sushy's own server-side retries
off (the engine retries with backoff), TLS verified against the Secret's ca.crt,
or the system CAs, unless ASKLEPIOS_FENCING_INSECURE=true.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs

from asklepios.core.fencing import BmcTarget, FencingError

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0


def _ca_file(pem: str) -> str:
    """requests verifies against a file: write the Secret's ca.crt once, named by its hash."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"asklepios-bmc-ca-{digest}.crt"
    if not path.exists():
        path.write_text(pem)
    return str(path)


@attrs.define
class RedfishBmc:
    """The real `BmcPort`."""

    def _system(self, target: BmcTarget) -> Any:
        import sushy  # noqa: PLC0415 - heavy (requests, pbr): loaded only when fencing is on
        from sushy import auth, exceptions  # noqa: PLC0415

        verify: bool | str = True
        if target.insecure:
            import urllib3  # noqa: PLC0415

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            verify = False
        elif target.ca_pem:
            verify = _ca_file(target.ca_pem)
        try:
            root = sushy.Sushy(
                target.base_url,
                verify=verify,
                auth=auth.BasicAuth(target.username, target.password),
                server_side_retries=0,
                read_timeout=READ_TIMEOUT,
                connect_timeout=CONNECT_TIMEOUT,
            )
            return root.get_system(target.system_path)
        except exceptions.SushyError as exc:
            raise FencingError(f"{target.system_url}: {_why(exc)}") from None

    def _power_state(self, target: BmcTarget) -> str:
        from sushy import exceptions  # noqa: PLC0415

        system = self._system(target)
        try:
            system.refresh()
        except exceptions.SushyError as exc:
            raise FencingError(f"{target.system_url}: {_why(exc)}") from None
        state = system.power_state
        return str(getattr(state, "value", state) or "Unknown")

    def _system_uuid(self, target: BmcTarget) -> str:
        """The System's `UUID` as the BMC reports it (sushy reads it with the System)."""
        return str(self._system(target).uuid or "")[:100]

    def _reset(self, target: BmcTarget, reset_type: str) -> None:
        from sushy import ResetType, exceptions  # noqa: PLC0415

        system = self._system(target)
        try:
            system.reset_system(ResetType(reset_type))
        except exceptions.SushyError as exc:
            raise FencingError(f"{target.system_url}: {reset_type}: {_why(exc)}") from None

    async def power_state(self, target: BmcTarget) -> str:
        return await _in_thread(self._power_state, target)

    async def reset(self, target: BmcTarget, reset_type: str) -> None:
        await _in_thread(self._reset, target, reset_type)

    async def system_uuid(self, target: BmcTarget) -> str:
        return await _in_thread(self._system_uuid, target)


async def _in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run one request in a worker thread; whatever a BMC answers, the controller gets a FencingError."""
    try:
        return await anyio.to_thread.run_sync(call, *args, abandon_on_cancel=True)
    except FencingError:
        raise
    except Exception as exc:  # a BMC's odd answer must never stop the controller
        raise FencingError(f"{type(exc).__name__}: {exc}"[:300]) from exc


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
