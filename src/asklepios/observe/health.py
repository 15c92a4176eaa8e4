"""`/healthz`, `/readyz` and `/metrics` over HTTP (aiohttp, already a dependency).

Liveness means "this process is stuck", never "the apiserver is down": restarting
a healthy replica during an apiserver outage only delays recovery once the
apiserver is back. So `/healthz` fails only when the event loop's own ticker has
not run for a while (the loop-lag ticker, `observe.looplag`, every 0.25 s). A
watch that made no progress for longer than it may (a hung connection, an
unreachable apiserver) shows in `/readyz` and in
`asklepios_watch_stale{resource}`, not in the kubelet's restart decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from asklepios.observe import metrics
from asklepios.observe.looplag import LoopLag

log = logging.getLogger("asklepios.http")
STUCK_AFTER_SECONDS = 30.0


class Health:
    """Liveness (the loop ticks) and readiness (synced, no stale watch), on one monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tick = clock()
        self._beats: dict[str, tuple[float, float]] = {}  # watch -> (last progress, allowed silence)
        self._ready: set[str] = set()
        self._required: set[str] = set()

    async def tick(self, lag: LoopLag | None = None) -> None:
        """Run in the controller's task group: proves the event loop still schedules tasks,
        on the loop-lag ticker (`asklepios_event_loop_lag_seconds`)."""
        self.ticked()
        await (lag or LoopLag()).run(self.ticked)

    def ticked(self) -> None:
        self._tick = self.clock()

    def stuck(self) -> bool:
        return self.clock() - self._tick > STUCK_AFTER_SECONDS

    def expect(self, name: str, silence: float, *, gates_readiness: bool = True) -> None:
        """Register a watch that must make progress at least every `silence` seconds."""
        self._beats[name] = (self.clock(), silence)
        if gates_readiness:
            self._required.add(name)

    def beat(self, name: str) -> None:
        _, silence = self._beats.get(name, (0.0, 60.0))
        self._beats[name] = (self.clock(), silence)

    def synced(self, name: str) -> None:
        self._ready.add(name)

    def stalled(self) -> list[str]:
        now = self.clock()
        stale = sorted(n for n, (last, silence) in self._beats.items() if now - last > silence)
        for name in self._beats:
            metrics.WATCH_STALE.labels(resource=name).set(1 if name in stale else 0)
        return stale

    def not_ready(self) -> str | None:
        """Why this replica is not ready, or None (not before a watch is expected: the start-up checks)."""
        if not self._required:
            return "starting: no watch yet"
        missing = sorted(self._required - self._ready)
        if missing:
            return "not synced: " + ", ".join(missing)
        stalled = [n for n in self.stalled() if n in self._required]
        return "stale watch: " + ", ".join(stalled) if stalled else None


def _app(health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if health.stuck():
            return web.Response(status=503, text="stuck: the event loop has not ticked\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        why = health.not_ready()
        if why is not None:
            return web.Response(status=503, text=why + "\n")
        return web.Response(text="ok\n")

    async def metrics_page(_: web.Request) -> web.Response:
        health.stalled()  # refresh asklepios_watch_stale
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_page)])
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
