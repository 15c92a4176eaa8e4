"""Acting on many nodes at once, but never twice at once on the same node.

The timer wheel fires node names; each is acted on in a task of its own, never
concurrently with itself: a node that fires again while it is being acted on is
acted on once more right after. When a node is done, `after` is called to set its
next look. There is deliberately no shared slot limit: a node waiting for a slow
BMC (up to ASKLEPIOS_FENCING_TIMEOUT_SECONDS) must never delay another node's
kickout or kickin. What bounds the load instead: at most one task per followed
node, the apiserver client's connection pool (requests wait for a connection), and
the BMC adapter's own thread limit.
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
    _inflight: set[str] = attrs.Factory(set)
    _again: set[str] = attrs.Factory(set)
    _tg: TaskGroup | None = None

    async def run(self, wheel: TimerWheel) -> None:
        """Act on what the wheel fires, until cancelled."""
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
                await self.act(name)
                if name not in self._again:
                    return
        finally:
            self._inflight.discard(name)
            self._again.discard(name)
            self.after(name)
