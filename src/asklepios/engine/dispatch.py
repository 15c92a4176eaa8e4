"""Acting on many nodes at once, but never twice at once on the same node.

The timer wheel fires node names; each is acted on in a task of its own, at most
`slots` at a time (thousands of nodes due together must not open thousands of
requests), and never concurrently with itself: a node that fires again while it is
being acted on is acted on once more right after. When a node is done, `after` is
called to set its next look.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs
from anyio.abc import TaskGroup

from asklepios.engine.wheel import TimerWheel


@attrs.define(eq=False)
class Dispatcher:
    act: Callable[[str], Awaitable[None]]
    after: Callable[[str], None]
    slots: int = 16
    _inflight: set[str] = attrs.Factory(set)
    _again: set[str] = attrs.Factory(set)
    _tg: TaskGroup | None = None
    _limiter: anyio.CapacityLimiter | None = None

    async def run(self, wheel: TimerWheel) -> None:
        """Act on what the wheel fires, until cancelled."""
        self._limiter = anyio.CapacityLimiter(self.slots)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await wheel.run(self.fire)

    def fire(self, name: str) -> None:
        if name in self._inflight:
            self._again.add(name)
            return
        assert self._tg is not None
        self._inflight.add(name)
        self._tg.start_soon(self._loop, name)

    async def _loop(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                assert self._limiter is not None
                async with self._limiter:
                    await self.act(name)
                if name not in self._again:
                    return
        finally:
            self._inflight.discard(name)
            self._again.discard(name)
            self.after(name)
