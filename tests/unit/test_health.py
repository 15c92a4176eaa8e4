"""Liveness means "this process is stuck"; a stale watch shows in /readyz and a metric, not /healthz."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from prometheus_client import REGISTRY

from asklepios.observe import metrics
from asklepios.observe.health import STUCK_AFTER_SECONDS, Health, serve_http


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stale(resource: str) -> float | None:
    return REGISTRY.get_sample_value("asklepios_watch_stale", {"resource": resource})


def test_a_silent_watch_makes_the_replica_unready_not_dead() -> None:
    clock = FakeMonotonic()
    health = Health(clock)
    health.expect("nodes", silence=60)
    health.expect("pods", silence=60, gates_readiness=False)
    assert health.not_ready() == "not synced: nodes"
    health.synced("nodes")
    assert health.not_ready() is None
    clock.now += 61  # an apiserver outage: no watch progress, while the event loop runs
    health.ticked()
    assert health.not_ready() == "stale watch: nodes"  # pods do not gate readiness
    assert stale("nodes") == 1
    assert stale("pods") == 1
    assert not health.stuck()  # the kubelet must not restart us for the apiserver's outage
    health.beat("nodes")
    assert health.not_ready() is None
    assert stale("nodes") == 0


def test_a_loop_that_stops_ticking_is_stuck() -> None:
    clock = FakeMonotonic()
    health = Health(clock)
    assert not health.stuck()
    clock.now += STUCK_AFTER_SECONDS + 1
    assert health.stuck()


@pytest.mark.anyio
async def test_endpoints() -> None:
    clock = FakeMonotonic()
    health = Health(clock)
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
            text = await resp.text()
            assert "asklepios_kickouts_total" in text
            assert 'asklepios_watch_stale{resource="nodes"} 0.0' in text
        clock.now += 120
        health.ticked()
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503
            assert "stale watch: nodes" in await resp.text()
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        clock.now += STUCK_AFTER_SECONDS + 1
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503


def test_not_ready_before_any_watch_is_expected() -> None:
    """/readyz stays 503 during the start-up checks, before the controller registers its watches
    (a test that stops the apiserver once Asklepios is 'ready' relied on it)."""
    health = Health(clock=lambda: 0.0)
    assert health.not_ready() == "starting: no watch yet"
    health.expect("nodes", silence=60)
    assert health.not_ready() == "not synced: nodes"
    health.synced("nodes")
    assert health.not_ready() is None
