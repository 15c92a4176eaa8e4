"""The timer wheel: one pending deadline per node, fired at the deadline itself.

A cache of "when to look at this node again": every node event reschedules or
cancels its entry, and a single task sleeps until the earliest one. It holds no
decisions, so a restarted controller rebuilds it from a list and loses nothing.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

import anyio


class TimerWheel:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._due: dict[str, tuple[float, int]] = {}  # key -> (when, sequence)
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None  # created by run(), inside the event loop

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: str) -> bool:
        return key in self._due

    def schedule(self, key: str, when: float) -> None:
        """Set `key`'s one pending deadline (replacing any earlier one)."""
        current = self._due.get(key)
        if current is not None and current[0] == when:
            return
        seq = next(self._seq)
        self._due[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if self._heap[0][1] == seq and self._wake is not None:  # new earliest: wake the sleeper
            self._wake.set()
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._due):
            self._compact()

    def cancel(self, key: str) -> None:
        self._due.pop(key, None)

    def _compact(self) -> None:
        self._heap = [(w, s, k) for k, (w, s) in self._due.items()]
        heapq.heapify(self._heap)

    def pop_due(self, now: float) -> list[str]:
        """Remove and return every key whose deadline is at or before `now`."""
        fired = []
        while self._heap and self._heap[0][0] <= now:
            when, seq, key = heapq.heappop(self._heap)
            if self._due.get(key) == (when, seq):
                del self._due[key]
                fired.append(key)
        return fired

    def next_deadline(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][:2]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def run(self, fire: Callable[[str], None]) -> None:
        """Call `fire(key)` for each key at its deadline, until cancelled."""
        while True:
            for key in self.pop_due(self._clock()):
                fire(key)
            upcoming = self.next_deadline()
            self._wake = anyio.Event()
            delay = None if upcoming is None else max(0.0, upcoming - self._clock())
            with anyio.move_on_after(delay):
                await self._wake.wait()
