"""Unit tests run async code on asyncio (aiohttp needs it); the engine's on trio's MockClock.

anyio's pytest plugin would run every `@pytest.mark.anyio` test on every installed
backend; `anyio_backend` pins asyncio here, and the engine tests override it with
trio and a `MockClock(autojump_threshold=0)`, so their sleeps take no real time.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
