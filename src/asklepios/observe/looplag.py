"""How late the event loop runs what is due: a monotonic ticker, exported as a histogram.

Everything Asklepios does shares one event loop: the Lease renewal, the probes,
`/healthz`, every node's deadline. A pass that computes for a second without
yielding delays all of them by that second. The ticker sleeps until a fixed time
(every 0.25 s) and measures by how much it woke late; that lateness is what any
other task due at that moment waited too. Exported as
`asklepios_event_loop_lag_seconds`; a lag beyond a second is also logged.
`Health.tick` runs on it, so liveness and the lag come from the same ticker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import attrs

from asklepios.observe import metrics

log = logging.getLogger("asklepios.loop")
INTERVAL_SECONDS = 0.25
LOG_ABOVE_SECONDS = 1.0


@attrs.define(eq=False)
class LoopLag:
    interval: float = INTERVAL_SECONDS
    observe: Callable[[float], None] = metrics.EVENT_LOOP_LAG.observe
    now: Callable[[], float] = anyio.current_time  # the event loop's own monotonic clock
    worst: float = 0.0  # the largest lag seen
    ticks: int = 0

    async def run(self, on_tick: Callable[[], None] = lambda: None) -> None:
        """Tick until cancelled; `on_tick` runs on every tick (the liveness heartbeat)."""
        due = self.now() + self.interval
        while True:
            await anyio.sleep_until(due)
            woke = self.now()
            self.record(max(0.0, woke - due))
            on_tick()
            due = woke + self.interval

    def record(self, lag: float) -> None:
        self.ticks += 1
        self.worst = max(self.worst, lag)
        self.observe(lag)
        if lag > LOG_ABOVE_SECONDS:
            log.warning("event loop lagged", extra={"lag_seconds": round(lag, 3)})
