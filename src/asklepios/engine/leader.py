"""Leader election over the Lease `asklepios`: one replica writes, the other stays warm.

Modelled on client-go's leaderelection. The leader renews every retry period;
it may write only while its last successful renewal is younger than the renew
deadline, which is shorter than the lease duration, so it stops writing before
any other replica could take the lease. A follower takes the lease once it has
seen no renewal for a whole lease duration (measured on its own clock, as
client-go does, so clock skew between nodes does not matter). On shutdown the
leader first waits, within its write budget, for the healer's last writes to end
(a kickout's patch or the roll-back of its record), then releases the lease so the
follower takes over within one retry period. Releasing first closed the gate under
a kickout whose record was stored and whose patch then failed: its roll-back was
refused, and the record claimed a kickout the node did not show (60-minute soak).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import attrs

from asklepios.engine.clock import SYSTEM_CLOCK, Clock
from asklepios.engine.ports import LeasePort
from asklepios.engine.retry import count_failure
from asklepios.kube.client import ApiError, Conflict
from asklepios.kube.lease import LeaseRecord
from asklepios.observe import metrics

log = logging.getLogger("asklepios.leader")


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


@attrs.define(eq=False)
class LeaderElector:
    lease: LeasePort
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    on_started: Callable[[], None] = lambda: None
    writers_stopped: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint  # awaited before the release
    clock: Clock = SYSTEM_CLOCK
    _renewed_at: float | None = None  # monotonic start of our last successful renewal
    _observed: LeaseRecord | None = None
    _observed_at: float = 0.0  # when the lease record last changed, on our clock
    _leading: bool = False  # what we last reported
    term: int = 0  # how many times this replica gained the lease (engine.gate.CaughtUpGate)

    def may_write(self) -> bool:
        return self.write_budget() > 0

    def write_budget(self) -> float:
        """Seconds left in which a write of ours is certainly made as the leader."""
        if self._renewed_at is None:
            return 0.0
        return self._renewed_at + self.renew_deadline - self.clock.monotonic()

    @property
    def is_leader(self) -> bool:
        return self.may_write()

    async def run(self) -> None:
        """Acquire and renew until cancelled; then release the lease if we hold it."""
        metrics.IS_LEADER.set_function(lambda: 1.0 if self.may_write() else 0.0)
        try:
            while True:
                self._note_transition()
                await self._try_once()
                self._note_transition()
                delay = self.retry_period
                if self._leading:  # wake when the budget runs out, to report it on time
                    delay = min(delay, max(0.0, self.write_budget()) + 0.01)
                await anyio.sleep(delay)
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(max(0.0, self.write_budget())):
                    await self.writers_stopped()  # their last writes go out while we surely lead
                with anyio.move_on_after(2):
                    await self._release()
            metrics.IS_LEADER.set_function(lambda: 0.0)

    def _note_transition(self) -> None:
        leading = self.is_leader
        if leading and not self._leading:
            log.info("became leader", extra={"identity": self.identity})
            self._leading = True
            self.term += 1
            self.on_started()
        elif self._leading and not leading:
            log.warning("lost leadership: writes stopped", extra={"identity": self.identity})
            self._leading = False

    async def _try_once(self) -> None:
        """One round: renew with a single PUT while we hold the lease; else read it and maybe take it."""
        started = self.clock.monotonic()
        timeout = max(1.0, min(self.retry_period * 2, self.renew_deadline / 2))
        try:
            held = self._observed
            if held is not None and held.holder == self.identity:
                await self._write(held, acquired=False, started=started, timeout=timeout)
                return
            current = await self.lease.get(timeout)
            if current != self._observed:
                self._observed, self._observed_at = current, started
            if current is not None and current.holder not in ("", self.identity):
                expires = self._observed_at + max(current.duration_seconds, 1)
                if started < expires:
                    self._renewed_at = None
                    return
            ours = current is not None and current.holder == self.identity
            await self._write(current, acquired=not ours, started=started, timeout=timeout)
        except Conflict:  # someone else wrote it, or our copy is stale: read it next round
            self._observed = None
            log.info("lease changed under us; will look again", extra={"identity": self.identity})
        except ApiError as exc:
            count_failure("lease", exc)
            log.warning("lease renewal failed", extra={"identity": self.identity, "error": str(exc)})

    async def _write(self, previous: LeaseRecord | None, *, acquired: bool, started: float, timeout: float) -> None:
        now = self.clock.now()
        record = await self.lease.write(
            holder=self.identity,
            duration_seconds=round(self.lease_duration),
            now=now,
            acquired=now if acquired else None,
            transitions=(previous.transitions if previous else 0) + (1 if acquired else 0),
            previous=previous,
            timeout=timeout,
        )
        self._observed, self._observed_at = record, started
        self._renewed_at = started

    async def _release(self) -> None:
        if not self.is_leader or self._observed is None:
            return
        self._renewed_at = None  # no write of ours from here on
        try:
            await self.lease.write(
                holder="",
                duration_seconds=1,
                now=self.clock.now(),
                acquired=None,
                transitions=self._observed.transitions,
                previous=self._observed,
                timeout=2,
            )
            log.info("released the lease", extra={"identity": self.identity})
        except ApiError as exc:
            count_failure("lease", exc)
            log.warning("could not release the lease", extra={"error": str(exc)})
