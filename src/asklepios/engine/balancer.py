"""The balancer: move a doubled-up StatefulSet pod back to a node that has none.

Fed by its own pod reflector (server-side selector ASKLEPIOS_BALANCER_SELECTOR,
optionally one per namespace). Runs a round when a node may take new pods again
(a kickin, once node-lifecycle has also removed its cordon taint
`node.kubernetes.io/unschedulable`; triggered from the node cache, so the round
sees it) and on every resync tick; a
trigger that arrives during a round is not lost. A StatefulSet is touched only
while all its replicas are Ready; one of its pods is evicted (Eviction API, so
PodDisruptionBudgets hold: a 429 waits for the next round). The move is then
followed until the replacement runs: `PodRebalanced` says where it really went;
a replacement back next to a sibling is a failed move (`RebalanceFailed`), and the
StatefulSet backs off exponentially up to an hour. At most
ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR evictions per StatefulSet per hour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.balance import Move, MoveLedger, PodView, doubled_up, landed, plan_move, settled, statefulset_pods
from asklepios.core.node import NodeView
from asklepios.engine.clock import SYSTEM_CLOCK, Clock
from asklepios.engine.gate import REQUEST_TIMEOUT, AlwaysOpen, WriteGate
from asklepios.engine.ports import EventPort
from asklepios.engine.retry import count_failure
from asklepios.kube.client import ApiError, NotFound
from asklepios.kube.events import ObjectRef
from asklepios.kube.pods import Evictions
from asklepios.observe import metrics

log = logging.getLogger("asklepios.balancer")
MOVE_TIMEOUT = timedelta(minutes=10)  # an evicted pod not replaced by a Ready one by then is a failed move
Key = tuple[str, str]  # (namespace, StatefulSet uid)


@attrs.frozen
class InFlight:
    move: Move
    evicted_at: datetime


@attrs.define(eq=False)
class Balancer:
    settings: Settings
    evictions: Evictions
    events: EventPort
    nodes: Callable[[], Mapping[str, NodeView]]
    gate: WriteGate = attrs.Factory(AlwaysOpen)
    clock: Clock = SYSTEM_CLOCK
    pods: dict[str, PodView] = attrs.Factory(dict)
    inflight: dict[Key, InFlight] = attrs.Factory(dict)
    ledgers: dict[Key, MoveLedger] = attrs.Factory(dict)
    _said: dict[Key, str] = attrs.Factory(dict)  # the last "not now" line logged per StatefulSet
    _wake: anyio.Event | None = None
    _pending: bool = False

    def shard(self) -> PodShard:
        """A Store for one pod reflector (one per namespace, or one for all)."""
        return PodShard(self.pods)

    def trigger(self) -> None:
        """Ask for a round now; one asked for during a round (or before `run`) is not lost."""
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake = anyio.Event()
            if not self._pending:
                with anyio.move_on_after(self.settings.resync_seconds):
                    await self._wake.wait()
            self._pending = False
            await self.round()

    async def round(self) -> None:
        nodes = self.nodes()
        now = self.clock.now()
        for key, members in statefulset_pods(self.pods.values()).items():
            flight = self.inflight.get(key)
            if flight is not None and not await self._follow(key, members, flight, now):
                continue
            move = plan_move(members, nodes)
            if move is None:
                self._said.pop(key, None)
                continue
            why = self.ledgers.get(key, MoveLedger()).why_not(now, self.settings.balancer_max_moves_per_hour)
            if why is not None:
                self._say(key, why, move)
                continue
            await self._try(key, members, move, now)

    async def _follow(self, key: Key, members: list[PodView], flight: InFlight, now: datetime) -> bool:
        """Check an eviction's outcome; True once it is decided (the StatefulSet may move again)."""
        move, ledger = flight.move, self.ledgers.get(key, MoveLedger())
        replacement = landed(members, move)
        if replacement is None or not all(p.ready and not p.deleting for p in members):
            if now - flight.evicted_at < MOVE_TIMEOUT:
                return False
            await self._failed(key, move, "no Ready replacement within 10 minutes", ledger, now)
            return True
        del self.inflight[key]
        if doubled_up(members, replacement):
            await self._failed(
                key, move, f"the replacement landed on {replacement.node}, next to a sibling", ledger, now
            )
            return True
        self.ledgers[key] = ledger.succeeded()
        metrics.REBALANCED_PODS.inc()
        facts = {"pod": move.pod.name, "from_node": move.from_node, "to_node": replacement.node}
        log.info("pod moved", extra={**facts, "statefulset": f"{move.namespace}/{move.statefulset.name}"})
        message = f"moved from {move.from_node} to {replacement.node} (target {move.to_node})"
        await self.events.emit(
            ObjectRef("Pod", replacement.name, replacement.uid, move.namespace), "PodRebalanced", message
        )
        await self.events.emit(_sts_ref(move), "PodRebalanced", f"{move.pod.name} {message}")
        return True

    async def _failed(self, key: Key, move: Move, why: str, ledger: MoveLedger, now: datetime) -> None:
        self.inflight.pop(key, None)
        ledger = self.ledgers[key] = ledger.failed(now)
        metrics.REBALANCE_FAILURES.inc()
        message = f"evicted {move.pod.name} from {move.from_node} for {move.to_node}, but {why}; next try after "
        message += f"{ledger.backoff_until:%H:%M:%S}" if ledger.backoff_until else "the backoff"
        log.warning("rebalance failed", extra={"statefulset": move.statefulset.name, "pod": move.pod.name, "why": why})
        await self.events.emit(_sts_ref(move), "RebalanceFailed", message, warning=True)

    def _say(self, key: Key, why: str, move: Move) -> None:
        """One log line per change of why a StatefulSet is not moved now."""
        if self._said.get(key) != why:
            self._said[key] = why
            log.info("not moving now", extra={"statefulset": move.statefulset.name, "pod": move.pod.name, "why": why})

    async def _try(self, key: Key, members: list[PodView], move: Move, now: datetime) -> None:
        sts = move.statefulset
        try:
            replicas = await self.evictions.statefulset_replicas(move.namespace, sts.name)
        except ApiError as exc:
            self._say(key, f"could not read the StatefulSet: {exc}", move)
            return
        if not settled(members, replicas):
            self._say(key, "waiting for every replica to be Ready", move)
            return
        if self.settings.dry_run:
            self._say(key, f"dry run: would move it to {move.to_node}", move)
            return
        if not self.gate.may_write():
            return
        try:
            await self.evictions.evict(move.pod, min(REQUEST_TIMEOUT, self.gate.write_budget()))
        except NotFound:
            return
        except ApiError as exc:
            count_failure("evict", exc)
            why = "eviction refused by a PodDisruptionBudget" if exc.status == 429 else f"eviction failed: {exc}"
            self._say(key, f"{why}; will retry", move)
            return
        self._said.pop(key, None)
        self.inflight[key] = InFlight(move, now)
        self.ledgers[key] = self.ledgers.get(key, MoveLedger()).evicted(now)
        facts = {"pod": move.pod.name, "from_node": move.from_node, "to_node": move.to_node}
        log.info("pod evicted", extra={**facts, "statefulset": f"{move.namespace}/{sts.name}", "action": "rebalance"})


def _sts_ref(move: Move) -> ObjectRef:
    sts = move.statefulset
    return ObjectRef("StatefulSet", sts.name, sts.uid, move.namespace, api_version="apps/v1")


@attrs.define(eq=False)
class PodShard:
    """The part of the balancer's pod cache that one reflector keeps.

    A reflector watches one namespace or all of them, so the pods it owns are those of
    the namespaces it has delivered: a relist drops the others of those namespaces, and
    no set of 50,000 keys is needed to know them. Each pod is filed under its own `key`
    string (equal to the reflector's), so the cache holds one key string per pod.
    """

    pods: dict[str, PodView]
    namespaces: set[str] = attrs.Factory(set)

    def replace(self, items: dict[str, PodView]) -> None:
        self.namespaces.update(pod.namespace for pod in items.values())
        for key in [k for k, pod in self.pods.items() if pod.namespace in self.namespaces and k not in items]:
            del self.pods[key]
        for pod in items.values():
            self.upsert(pod.key, pod)

    def upsert(self, key: str, item: PodView) -> None:
        self.namespaces.add(item.namespace)
        self.pods.pop(key, None)  # a dict keeps its first key string; the pod's own one replaces it
        self.pods[item.key] = item

    def delete(self, key: str) -> None:
        self.pods.pop(key, None)
