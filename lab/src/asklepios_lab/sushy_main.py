"""``python -m asklepios_lab.sushy_main ARGS``: sushy-emulator's own main(), loopback-only, serial.

Run by :class:`asklepios_lab.bmc.Bmc` instead of the ``sushy-emulator`` script, with the
same arguments, and two changes:

* The process may not reach past 127.0.0.0/8: an audit hook refuses any connect, send
  or name lookup for another address. The emulator can be told to fetch URLs (virtual
  media images, firmware updates); in the lab that must fail, never leave the machine.
* One request at a time (``threaded=False``): the emulator sends its change
  notification from inside the request that applied the change, and the lab crashes the
  node inside that notification, so no other client can read PowerState Off before the
  node is dead. (HTTP/1.0 then: every connection closes after its response.)
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import Any


def _loopback(host: object) -> bool:
    if host is None or host in ("localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


_LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr")


def _guard(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto"):
        host = args[1][0] if isinstance(args[1], tuple) else None  # AF_UNIX paths are local
    elif event in _LOOKUPS:
        host = args[0]
    else:
        return
    if not _loopback(host):
        raise PermissionError(f"lab BMC: nothing beyond 127.0.0.0/8 and localhost ({host!r})")


def main() -> int:
    sys.addaudithook(_guard)
    socket.setdefaulttimeout(30)  # a stuck peer must not hang the serial server for ever
    from sushy_tools.emulator import main as emulator  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415

    run: Callable[..., Any] = emulator.app.run
    emulator.app.run = lambda *a, **kw: run(*a, **{**kw, "threaded": False})
    result: int = emulator.main()
    return result


if __name__ == "__main__":
    sys.exit(main())
