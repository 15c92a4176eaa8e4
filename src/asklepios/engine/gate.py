"""Who may write: the leader while its lease is certainly still its own.

The healer and the balancer ask the gate before every write, and bound the
write's timeout by `write_budget()`. Without leader election the gate is always
open; with it (`engine.leader`), the budget runs out before the lease could
expire, so a replica that lost its lease never writes.
"""

from __future__ import annotations

from typing import Protocol

REQUEST_TIMEOUT = 10.0


class WriteGate(Protocol):
    def may_write(self) -> bool: ...
    def write_budget(self) -> float: ...


class AlwaysOpen:
    def may_write(self) -> bool:
        return True

    def write_budget(self) -> float:
        return REQUEST_TIMEOUT
