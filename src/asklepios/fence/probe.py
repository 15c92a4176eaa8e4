"""The liveness probe: does anything on the node's addresses answer a TCP connection?

A node cut off from the apiserver turns Ready=Unknown while it keeps running and
writing to its volumes; and a node whose kubelet is stopped or crash-looping (a bad
upgrade, an expired certificate, a full disk) has a silent Lease while containerd
keeps every container running. Either way the machine's kernel still answers. So
each InternalIP is tried on each port in ASKLEPIOS_LIVENESS_PROBE_PORTS, all at
once, with a 2 s timeout, and the answer is classified:

* accepted: something listens: the machine runs;
* refused (a TCP reset): only a running kernel sends one: the machine runs;
* timeout, host or network unreachable: no answer, as from a machine that is off.

Any other error is counted as an answer (named by its errno): a probe that cannot
tell must never be the reason for a taint.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import anyio
import attrs

from asklepios.core.evidence import Answer

PROBE_TIMEOUT = 2.0
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"


def classify(exc: OSError) -> str:
    """How a failed connect answered: "refused", "unreachable", "timeout" or "error <name>"."""
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "refused"
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return "timeout"
    if exc.errno in _UNREACHABLE:
        return "unreachable"
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"error {name}"


async def _connect(address: str, port: int) -> None:
    """One raw connect (anyio.connect_tcp folds every failure into one OSError)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect((address, port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, errno.errorcode.get(code, str(code))) from None
    finally:
        sock.close()


@attrs.define
class TcpProbe:
    timeout: float = PROBE_TIMEOUT

    async def answers(self, addresses: tuple[str, ...], ports: tuple[int, ...]) -> tuple[Answer, ...]:
        """How every "ip:port" answered (connections are closed again at once)."""
        found: list[Answer] = []

        async def knock(address: str, port: int) -> None:
            how = "timeout"
            with anyio.move_on_after(self.timeout):
                try:
                    await _connect(address, port)
                    how = "accepted"
                except OSError as exc:
                    how = classify(exc)
            found.append(Answer(endpoint(address, port), how))

        async with anyio.create_task_group() as tg:
            for address in addresses:
                for port in ports:
                    tg.start_soon(knock, address, port)
        return tuple(sorted(found, key=lambda a: a.endpoint))
