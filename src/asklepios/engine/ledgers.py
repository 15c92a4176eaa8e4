"""The balancer's own record: one MoveLedger per StatefulSet, in the ConfigMap `asklepios-balancer`.

The hourly cap, the refusals in a row and the backoff must survive a leader change,
so each StatefulSet's ledger is stored under the key "namespace.name" (the value
names the StatefulSet's uid too) in a ConfigMap only Asklepios and admins write. A
new leader reads it whole once; every change writes only its own key. An entry that
cannot be read is logged and ignored: the StatefulSet then starts with a fresh
ledger, which at worst allows one more eviction, never a taint.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import orjson

from asklepios.config import Settings
from asklepios.core.balance import MoveLedger
from asklepios.engine.gate import REQUEST_TIMEOUT, WriteGate
from asklepios.engine.retry import count_failure
from asklepios.kube.client import ApiError

log = logging.getLogger("asklepios.balancer")
Key = tuple[str, str]  # (namespace, StatefulSet uid)


class LedgerPort(Protocol):
    async def load(self) -> dict[str, str]: ...
    async def write(self, changes: dict[str, str | None], timeout: float) -> None: ...


@attrs.define(eq=False)
class LedgerRecord:
    settings: Settings
    gate: WriteGate
    port: LedgerPort | None  # None: kept in memory only

    async def load(self) -> dict[Key, MoveLedger] | None:
        """The stored ledgers of the StatefulSets in scope; None without a record or if it cannot be read."""
        if self.port is None:
            return None
        try:
            stored = await self.port.load()
        except ApiError as exc:
            count_failure("balancer record", exc)
            if exc.status != 403:
                log.warning("cannot read the balancer's record; not moving pods", extra={"error": str(exc)})
                return None
            # RBAC without the record: go on from memory (its writes fail and are counted, so it shows)
            log.warning("may not read the balancer's record; its limits do not survive a leader change",
                        extra={"error": str(exc)})  # fmt: skip
            stored = {}
        ledgers: dict[Key, MoveLedger] = {}
        for name, raw in stored.items():
            namespace = name.partition(".")[0]
            if not self.in_scope(namespace):
                continue
            try:
                parsed = MoveLedger.from_record(orjson.loads(raw))
            except orjson.JSONDecodeError:
                parsed = None
            if parsed is None or f"{namespace}.{parsed[1].name}" != name:
                log.warning("balancer record entry ignored: unreadable", extra={"key": name, "value": raw[:200]})
                continue
            ledgers[(namespace, parsed[0])] = parsed[1]
        log.info("balancer record read", extra={"statefulsets": len(ledgers)})
        return ledgers

    def in_scope(self, namespace: str) -> bool:
        return not self.settings.balancer_namespaces or namespace in self.settings.balancer_namespaces

    async def save(self, key: Key, name: str, ledger: MoveLedger | None) -> None:
        """Write one StatefulSet's ledger into the record (None deletes it); a failure is logged."""
        if self.port is None or self.settings.dry_run or not self.gate.may_write():
            return
        value = None if ledger is None else orjson.dumps(ledger.to_record(key[1])).decode()
        try:
            await self.port.write({f"{key[0]}.{name}": value}, min(REQUEST_TIMEOUT, self.gate.write_budget()))
        except ApiError as exc:
            count_failure("balancer record", exc)
            log.warning("cannot write the balancer's record", extra={"statefulset": name, "error": str(exc)})
