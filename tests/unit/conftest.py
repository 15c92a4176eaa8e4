"""Unit tests run async code on asyncio (aiohttp needs it); the engine's on trio's MockClock.

anyio's pytest plugin would run every `@pytest.mark.anyio` test on every installed
backend; `anyio_backend` pins asyncio here, and tests marked `fake_clock` (the
engine's) run on trio with a `MockClock(autojump_threshold=0)` instead, so their
sleeps take no real time.
"""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, object]]:
    if request.node.get_closest_marker("fake_clock") is not None:
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"
