"""The event-loop lag ticker on trio's MockClock: time moved by hand, without yielding, is
exactly what a pass that hogs the loop looks like to every other task."""

from __future__ import annotations

import logging

import anyio
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from asklepios.observe.health import Health
from asklepios.observe.looplag import LoopLag

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("trio", {"clock": trio.testing.MockClock()})  # no autojump: the test moves time


def mock_clock() -> trio.testing.MockClock:
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    return clock


async def advance(seconds: float) -> None:
    """Let every task run, then move time on: a loop that is idle in between."""
    await trio.testing.wait_all_tasks_blocked()
    mock_clock().jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_the_ticker_measures_how_late_it_woke(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[float] = []
    lag = LoopLag(observe=seen.append)
    ticks: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lag.run, lambda: ticks.append(anyio.current_time()))
        for _ in range(4):
            await advance(0.25)
        assert seen == [0.0] * 4
        await trio.testing.wait_all_tasks_blocked()
        mock_clock().jump(0.9)  # a pass computes for 0.9 s: the tick due 0.25 s in wakes 0.65 s late
        await trio.testing.wait_all_tasks_blocked()
        assert seen[4] == pytest.approx(0.65)
        with caplog.at_level(logging.WARNING, logger="asklepios.loop"):
            await advance(0.25)
            mock_clock().jump(2.25)  # then one of 2.25 s
            await trio.testing.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert seen[5:] == [0.0, pytest.approx(2.0)]
    assert lag.worst == pytest.approx(2.0) and lag.ticks == len(ticks) == 7
    assert [r.getMessage() for r in caplog.records] == ["event loop lagged"]  # only the one above 1 s


async def test_health_ticks_on_the_lag_ticker_and_the_histogram_counts() -> None:
    before = REGISTRY.get_sample_value("asklepios_event_loop_lag_seconds_count") or 0.0
    health = Health(anyio.current_time)
    async with anyio.create_task_group() as tg:
        tg.start_soon(health.tick)
        for _ in range(3):
            await advance(0.25)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock().jump(31)  # the loop is stuck for 31 s
        assert health.stuck()
        await trio.testing.wait_all_tasks_blocked()
        assert not health.stuck()  # the ticker ran again
        tg.cancel_scope.cancel()
    after = REGISTRY.get_sample_value("asklepios_event_loop_lag_seconds_count") or 0.0
    assert after - before == 4
    slow = REGISTRY.get_sample_value("asklepios_event_loop_lag_seconds_bucket", {"le": "30.0"}) or 0.0
    slower = REGISTRY.get_sample_value("asklepios_event_loop_lag_seconds_bucket", {"le": "+Inf"}) or 0.0
    assert slower - slow >= 1  # the 30.75 s lag
