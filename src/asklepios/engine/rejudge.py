"""Judging many nodes again without holding the event loop.

A guard flip or a new leader touches every NotReady node, thousands in a storm.
Judged in the watch handler that saw the change, they blocked the event loop for
seconds (bench mass-outage, 3,000 of 5,000 down: loop lag p99 0.25 s, max up to
5 s). So such batches are judged from the healer's own task, YIELD_EVERY nodes
between two turns of the loop, and so is the resync. Every act judges afresh with
the guard of its moment, so deferring this only moves wakes and announcements,
never what a write decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import anyio.lowlevel
import attrs

YIELD_EVERY = 50  # nodes judged in one go before the Lease renewal, probes and HTTP may run


@attrs.define(eq=False)
class Rejudge:
    schedule: Callable[[str], None]  # judge one node and set its timer
    _pending: set[str] = attrs.Factory(set)
    _wanted: anyio.Event = attrs.Factory(anyio.Event)

    def soon(self, names: Iterable[str]) -> None:
        """Judge these nodes again from `run`'s task, soon."""
        self._pending.update(names)
        self._wanted.set()

    async def now(self, names: Iterable[str]) -> None:
        """Judge these nodes here, letting the event loop run every YIELD_EVERY of them."""
        for i, name in enumerate(names):
            self.schedule(name)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await anyio.lowlevel.checkpoint()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            names, self._pending = sorted(self._pending), set()
            await self.now(names)
