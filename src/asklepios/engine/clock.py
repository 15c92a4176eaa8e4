"""The one clock of the engine: wall time for deadlines, monotonic time for budgets.

Deadlines come from the API (RFC 3339 wall times); lease budgets and health need a
clock that never jumps. Every engine part takes its time from one injected `Clock`,
so the whole engine runs on a fake clock in tests (anyio's sleeps included, when
the fake follows the event loop's clock, as trio's MockClock does).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (the event loop's)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
