"""The liveness probe: does anything accept a TCP connection on the node's addresses?

A node cut off from the apiserver turns Ready=Unknown while it keeps running and
writing to its volumes; its kubelet port (10250) usually still answers on the
node network. At the kickout deadline each InternalIP is tried on each port in
ASKLEPIOS_LIVENESS_PROBE_PORTS, all at once, with a 2 s timeout: one accepted
connection is evidence of life. A refused connection or a timeout is not.
"""

from __future__ import annotations

import ipaddress

import anyio
import attrs

PROBE_TIMEOUT = 2.0


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"


@attrs.define
class TcpProbe:
    timeout: float = PROBE_TIMEOUT

    async def answering(self, addresses: tuple[str, ...], ports: tuple[int, ...]) -> tuple[str, ...]:
        """The "ip:port" endpoints that accepted a connection (closed again at once)."""
        found: list[str] = []

        async def knock(address: str, port: int) -> None:
            with anyio.move_on_after(self.timeout):
                try:
                    stream = await anyio.connect_tcp(address, port)
                except OSError:
                    return
                await stream.aclose()
                found.append(endpoint(address, port))

        async with anyio.create_task_group() as tg:
            for address in addresses:
                for port in ports:
                    tg.start_soon(knock, address, port)
        return tuple(sorted(found))
