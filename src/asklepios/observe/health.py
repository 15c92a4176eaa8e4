"""`/healthz`, `/readyz` and `/metrics` over HTTP (aiohttp, already a dependency).

Liveness fails when a watch has made no progress for longer than its timeout
(a hung connection), so the kubelet restarts a stuck process; readiness turns
on once the first node list is synced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("asklepios.http")


class Health:
    """Liveness and readiness, fed by the watches and the controller."""

    def __init__(self) -> None:
        self._beats: dict[str, tuple[float, float]] = {}  # watch -> (last progress, allowed silence)
        self._ready: set[str] = set()
        self._required: set[str] = set()

    def expect(self, name: str, silence: float, *, gates_readiness: bool = True) -> None:
        """Register a watch that must make progress at least every `silence` seconds."""
        self._beats[name] = (time.monotonic(), silence)
        if gates_readiness:
            self._required.add(name)

    def beat(self, name: str) -> None:
        _, silence = self._beats.get(name, (0.0, 60.0))
        self._beats[name] = (time.monotonic(), silence)

    def synced(self, name: str) -> None:
        self._ready.add(name)

    def stalled(self) -> list[str]:
        now = time.monotonic()
        return sorted(n for n, (last, silence) in self._beats.items() if now - last > silence)

    @property
    def ready(self) -> bool:
        return self._required <= self._ready


def _app(health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        stalled = health.stalled()
        if stalled:
            return web.Response(status=503, text="stalled: " + ", ".join(stalled) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if not health.ready:
            return web.Response(status=503, text="not synced\n")
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
    return app


@asynccontextmanager
async def serve_http(health: Health, port: int, host: str = "0.0.0.0") -> AsyncIterator[int]:  # noqa: S104
    """Serve until the block exits; yields the bound port (useful with port 0)."""
    runner = web.AppRunner(_app(health), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    sockets = getattr(site._server, "sockets", None)  # the only way to the bound port
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    log.info("serving /healthz /readyz /metrics", extra={"port": bound})
    try:
        yield bound
    finally:
        await runner.cleanup()
