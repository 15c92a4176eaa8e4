"""Who may write: the leader while its lease is certainly still its own, and has caught up.

The healer and the balancer ask the gate before every write, and bound the
write's timeout by `write_budget()`. Without leader election the gate is always
open; with it (`engine.leader`), the budget runs out before the lease could
expire, so a replica that lost its lease never writes.

A new leader also waits for its own records (`CaughtUpGate`). Every replica
follows the records ConfigMap through a watch, and that watch can lag: after an
apiserver outage it relists late. The replica that led before may have written
records the watch has not delivered yet, so acting on the older copy re-does
what was already undone: the 60-minute soak saw a new leader rewrite a node's
kickout mirror from a record that a kickin had cleared a minute before. So after
every gain of the lease the gate stays shut until the records were read with a
quorum GET made after the gain, and loaded into the book. The previous leader
stopped writing before the lease could pass to us, so that read holds all it wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio
import attrs

from asklepios.engine.retry import attempts
from asklepios.kube.client import ApiError
from asklepios.kube.records import RecordData

REQUEST_TIMEOUT = 10.0
log = logging.getLogger("asklepios.leader")


class WriteGate(Protocol):
    def may_write(self) -> bool: ...
    def write_budget(self) -> float: ...


class AlwaysOpen:
    def may_write(self) -> bool:
        return True

    def write_budget(self) -> float:
        return REQUEST_TIMEOUT


class LeaderGate(WriteGate, Protocol):
    @property
    def term(self) -> int: ...  # how many times this replica has gained the lease


class RecordReader(Protocol):
    async def get(self, timeout: float) -> RecordData | None: ...


class RecordSink(Protocol):
    def load(self, data: RecordData, *, force: bool = False) -> None: ...


@attrs.define(eq=False)
class CaughtUpGate:
    """The leader's gate, shut after each gain of the lease until the records were read afresh."""

    leader: LeaderGate
    records: RecordReader
    book: RecordSink
    on_caught_up: Callable[[], None] = lambda: None  # the healer's resync as the new leader
    _read_in_term: int = -1  # the term whose records were read (none yet)
    _gained: anyio.Event = attrs.Factory(anyio.Event)

    def _caught_up(self) -> bool:
        return self._read_in_term == self.leader.term

    def may_write(self) -> bool:
        return self._caught_up() and self.leader.may_write()

    def write_budget(self) -> float:
        return self.leader.write_budget() if self._caught_up() else 0.0

    def gained(self) -> None:
        """The elector took the lease: read the records before any write."""
        self._gained.set()

    async def run(self) -> None:
        while True:
            await self._gained.wait()
            self._gained = anyio.Event()
            if not await self.catch_up():
                self._gained.set()  # still leading and not caught up: read again
                await anyio.sleep(1)

    async def catch_up(self) -> bool:
        """Read the records for the current term; False if that failed while still leading."""
        term = self.leader.term
        if self._caught_up() or not self.leader.may_write():
            return True
        try:
            data = None
            async for attempt in attempts("record", max(1.0, self.leader.write_budget())):
                with attempt:
                    data = await self.records.get(REQUEST_TIMEOUT)
        except ApiError as exc:
            log.warning("new leader could not read its records: no write until it can", extra={"error": str(exc)})
            return not self.leader.may_write()
        self.book.load(data if data is not None else RecordData({}, ""), force=data is None)
        if self.leader.term == term:
            self._read_in_term = term
            log.info("new leader caught up with its records", extra={"term": term})
            self.on_caught_up()
        return True
