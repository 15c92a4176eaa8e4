"""Liveness and readiness: a silent watch fails /healthz; /readyz waits for the first sync."""

from __future__ import annotations

import time

import anyio
import pytest
from aiohttp import ClientSession

from asklepios.observe import metrics
from asklepios.observe.health import Health, serve_http


def test_a_watch_silent_past_its_limit_is_stalled() -> None:
    health = Health()
    health.expect("nodes", silence=0.05)
    health.expect("pods", silence=60, gates_readiness=False)
    assert health.stalled() == []
    assert not health.ready
    deadline = time.monotonic() + 5
    while not health.stalled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health.stalled() == ["nodes"]
    health.beat("nodes")
    assert health.stalled() == []
    health.synced("nodes")
    assert health.ready  # pods do not gate readiness


@pytest.mark.anyio
async def test_endpoints() -> None:
    health = Health()
    health.expect("nodes", silence=60)
    async with serve_http(health, 0, host="127.0.0.1") as port, ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503
        health.synced("nodes")
        for path in ("/readyz", "/healthz"):
            async with http.get(base + path) as resp:
                assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            assert metrics.KICKOUTS is not None  # imported: registered
            assert "asklepios_kickouts_total" in await resp.text()
        health.expect("nodes", silence=0)
        await anyio.sleep(0.01)  # let the zero-second allowance pass; not a wait for a condition
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503
            assert "nodes" in await resp.text()
