"""The balancer: move a doubled-up StatefulSet pod back to a node that has none.

Fed by its own pod reflector (server-side selector ASKLEPIOS_BALANCER_SELECTOR,
optionally one per namespace). Runs a round when a node may take new pods again
(a kickin, once node-lifecycle has also removed its cordon taint
`node.kubernetes.io/unschedulable`; triggered from the node cache, so the round
sees it) and on every resync tick; a trigger that arrives during a round is not
lost. Rounds start at most every ROUND_GAP (2 s): when a rack comes back, 3,000 nodes
become schedulable within seconds, and a round per node (a pass over every balancer
pod, 50,000 in the bench) took over half of the leader's CPU and its event loop's
timing (bench/README.md, "A rack goes dark"); a round yields to the event loop every
YIELD_EVERY StatefulSets. Only the leader plays rounds: a follower makes no API call beyond its watches.
A StatefulSet is touched only while all its replicas are Ready; one of its pods is
evicted (Eviction API, so PodDisruptionBudgets hold). The move is then followed
until the replacement runs: `PodRebalanced` says where it really went; a
replacement back next to a sibling is a failed move (`RebalanceFailed`) and the
StatefulSet backs off. A refused eviction (a PDB's 429, or any other error) backs
off too, through the same policy (`engine.retry.backoff_delay`, from the resync period up
to an hour); after REFUSALS_BEFORE_GIVING_UP (5) refusals in a row the StatefulSet is
left alone, with one `RebalanceFailed` Event, until its pods or its
PodDisruptionBudgets change. At most ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR
evictions per StatefulSet per hour. All of this is kept in the ConfigMap
`asklepios-balancer` (one key "namespace.name" per StatefulSet), read when this
replica starts leading, so a leader change keeps the cap, the refusals and the
backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.balance import (
    REFUSALS_BEFORE_GIVING_UP,
    Move,
    MoveLedger,
    PodView,
    doubled_up,
    fingerprint,
    landed,
    plan_move,
    settled,
    statefulset_pods,
)
from asklepios.core.node import NodeView
from asklepios.engine.clock import SYSTEM_CLOCK, Clock
from asklepios.engine.gate import REQUEST_TIMEOUT, AlwaysOpen, WriteGate
from asklepios.engine.ledgers import Key, LedgerPort, LedgerRecord
from asklepios.engine.podshard import PodShard
from asklepios.engine.ports import EventPort
from asklepios.engine.retry import backoff_delay, count_failure
from asklepios.kube.client import ApiError, NotFound
from asklepios.kube.events import ObjectRef
from asklepios.observe import metrics

log = logging.getLogger("asklepios.balancer")
MOVE_TIMEOUT = timedelta(minutes=10)  # an evicted pod not replaced by a Ready one by then is a failed move
FAILED_MOVE_BASE = 60.0  # seconds: the first backoff after a move that did not land
BACKOFF_CAP = 3600.0
ROUND_GAP = 2.0  # seconds from one round's start to the next one's at the soonest
YIELD_EVERY = 50  # StatefulSets judged in a round between two turns of the event loop


class EvictionPort(Protocol):
    async def evict(self, pod: PodView, timeout: float) -> None: ...
    async def statefulset_replicas(self, namespace: str, name: str) -> int: ...
    async def budgets(self, namespace: str) -> str:
        """What identifies the namespace's PodDisruptionBudgets now (names, resourceVersions)."""
        ...


@attrs.frozen
class InFlight:
    move: Move
    evicted_at: datetime


@attrs.define(eq=False)
class Balancer:
    settings: Settings
    evictions: EvictionPort
    events: EventPort
    nodes: Callable[[], Mapping[str, NodeView]]
    gate: WriteGate = attrs.Factory(AlwaysOpen)
    clock: Clock = SYSTEM_CLOCK
    record: LedgerPort | None = None  # None: kept in memory only
    pods: dict[str, PodView] = attrs.Factory(dict)
    inflight: dict[Key, InFlight] = attrs.Factory(dict)
    ledgers: dict[Key, MoveLedger] = attrs.Factory(dict)
    _said: dict[Key, str] = attrs.Factory(dict)  # the last "not now" line logged per StatefulSet
    _shards: list[PodShard] = attrs.Factory(list)
    _loaded: bool = False  # the record was read since this replica started leading
    _ledger_record: LedgerRecord = attrs.field(init=False)
    _wake: anyio.Event | None = None
    _pending: bool = False

    def __attrs_post_init__(self) -> None:
        self._ledger_record = LedgerRecord(self.settings, self.gate, self.record)

    def shard(self) -> PodShard:
        """A Store for one pod reflector (one per namespace, or one for all)."""
        shard = PodShard(self.pods)
        self._shards.append(shard)
        return shard

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
            started = anyio.current_time()
            await self.round()
            await anyio.sleep_until(started + ROUND_GAP)  # triggers meanwhile: one round after the gap

    async def round(self) -> None:
        if not self.gate.may_write():
            self._loaded = False  # a follower: its watches only; the record is read when it leads
            return
        if not self._loaded and not await self._load():
            return
        nodes = self.nodes()
        now = self.clock.now()
        groups = statefulset_pods(self.pods.values())
        await self._prune(groups)
        for judged, (key, members) in enumerate(groups.items(), start=1):
            if judged % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()  # the Lease renewal, probes and deadlines run too
            flight = self.inflight.get(key)
            if flight is not None and not await self._follow(key, members, flight, now):
                continue
            move = plan_move(members, nodes)
            if move is None:
                self._said.pop(key, None)
                continue
            ledger = self.ledgers.get(key) or MoveLedger(name=move.statefulset.name)
            if ledger.gave_up is not None and await self._changed(key, members, ledger, now):
                ledger = self.ledgers[key]
            why = ledger.why_not(now, self.settings.balancer_max_moves_per_hour)
            if why is not None:
                self._say(key, why, move)
                continue
            await self._try(key, members, move, now)

    async def _load(self) -> bool:
        """Read the record (a new leader goes on from the old one's ledgers); False if it cannot."""
        if self.record is None:  # kept in memory only: the ledgers go on as they are
            self._loaded = True
            return True
        ledgers = await self._ledger_record.load()
        if ledgers is None:
            return False
        self.ledgers, self.inflight, self._loaded = ledgers, {}, True
        return True

    async def _prune(self, groups: Mapping[Key, list[PodView]]) -> None:
        """Forget StatefulSets with no pod left (once every pod reflector has listed)."""
        if not all(shard.synced for shard in self._shards):
            return
        for key in [k for k in self._said if k not in groups]:
            del self._said[key]
        for key in [k for k in self.inflight if k not in groups]:
            del self.inflight[key]
        for key in [k for k in self.ledgers if k not in groups]:
            ledger = self.ledgers.pop(key)
            await self._ledger_record.save(key, ledger.name, None)

    async def _changed(self, key: Key, members: list[PodView], ledger: MoveLedger, now: datetime) -> bool:
        """Whether a StatefulSet left alone has changed (its pods, its PDBs) enough to try again."""
        gave_up = ledger.gave_up
        assert gave_up is not None
        what = "its pods changed" if fingerprint(members) != gave_up.pods else None
        if what is None and now - gave_up.checked >= timedelta(seconds=6 * self.settings.resync_seconds):
            budgets = await self._budgets(key[0])
            if budgets is not None and budgets != gave_up.pdbs:
                what = "its PodDisruptionBudgets changed"
            else:
                self.ledgers[key] = attrs.evolve(ledger, gave_up=attrs.evolve(gave_up, checked=now))
        if what is None:
            return False
        log.info("trying to move again", extra={"statefulset": ledger.name, "why": what})
        self.ledgers[key] = ledger = ledger.retry()
        await self._ledger_record.save(key, ledger.name, ledger)
        return True

    async def _budgets(self, namespace: str) -> str | None:
        try:
            return await self.evictions.budgets(namespace)
        except ApiError as exc:
            log.warning("cannot list PodDisruptionBudgets", extra={"namespace": namespace, "error": str(exc)})
            return None

    async def _follow(self, key: Key, members: list[PodView], flight: InFlight, now: datetime) -> bool:
        """Check an eviction's outcome; True once it is decided (the StatefulSet may move again)."""
        move = flight.move
        ledger = self.ledgers.get(key) or MoveLedger(name=move.statefulset.name)
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
        self.ledgers[key] = ledger = ledger.succeeded()
        await self._ledger_record.save(key, ledger.name, ledger)
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
        wait = backoff_delay(ledger.failures + 1, base=FAILED_MOVE_BASE, cap=BACKOFF_CAP)
        ledger = self.ledgers[key] = ledger.failed(now, timedelta(seconds=wait))
        await self._ledger_record.save(key, ledger.name, ledger)
        metrics.REBALANCE_FAILURES.inc()
        message = f"evicted {move.pod.name} from {move.from_node} for {move.to_node}, but {why}; next try after "
        message += f"{ledger.backoff_until:%H:%M:%S}" if ledger.backoff_until else "the backoff"
        log.warning("rebalance failed", extra={"statefulset": move.statefulset.name, "pod": move.pod.name, "why": why})
        await self.events.emit(_sts_ref(move), "RebalanceFailed", message, warning=True)

    async def _refused(self, key: Key, members: list[PodView], move: Move, exc: ApiError, now: datetime) -> None:
        """The Eviction API said no: back off, and after enough refusals in a row, leave it alone."""
        why = "a PodDisruptionBudget allows no disruption now (429)" if exc.status == 429 else f"{exc}"
        ledger = self.ledgers.get(key) or MoveLedger(name=move.statefulset.name)
        refusals = ledger.refusals + 1
        if refusals < REFUSALS_BEFORE_GIVING_UP:
            wait = backoff_delay(refusals, base=float(self.settings.resync_seconds), cap=BACKOFF_CAP)
            ledger = self.ledgers[key] = ledger.refused(now, timedelta(seconds=wait))
            self._say(key, f"eviction refused: {why}; next try after {ledger.backoff_until:%H:%M:%S}", move)
            await self._ledger_record.save(key, ledger.name, ledger)
            return
        budgets = await self._budgets(move.namespace)
        ledger = ledger.refused(now, timedelta(0)).give_up(why, fingerprint(members), budgets or "", now)
        self.ledgers[key] = ledger
        await self._ledger_record.save(key, ledger.name, ledger)
        metrics.REBALANCE_FAILURES.inc()
        message = (
            f"not moving {move.pod.name} from {move.from_node} to {move.to_node}: the eviction was refused "
            f"{refusals} times in a row ({why}); left alone until its pods or its PodDisruptionBudget change"
        )
        log.warning(
            "rebalance given up", extra={"statefulset": move.statefulset.name, "pod": move.pod.name, "why": why}
        )
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
            await self._refused(key, members, move, exc, now)
            return
        self._said.pop(key, None)
        self.inflight[key] = InFlight(move, now)
        ledger = self.ledgers[key] = (self.ledgers.get(key) or MoveLedger(name=sts.name)).evicted(now)
        await self._ledger_record.save(key, ledger.name, ledger)
        facts = {"pod": move.pod.name, "from_node": move.from_node, "to_node": move.to_node}
        log.info("pod evicted", extra={**facts, "statefulset": f"{move.namespace}/{sts.name}", "action": "rebalance"})


def _sts_ref(move: Move) -> ObjectRef:
    sts = move.statefulset
    return ObjectRef("StatefulSet", sts.name, sts.uid, move.namespace, api_version="apps/v1")
