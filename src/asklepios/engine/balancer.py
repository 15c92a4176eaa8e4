"""The balancer: move a doubled-up StatefulSet pod back to a node that has none.

Fed by its own pod reflector (server-side selector ASKLEPIOS_BALANCER_SELECTOR,
optionally one per namespace). Runs a round after every kickin and on every
resync tick. A StatefulSet is touched only while all its replicas are Ready;
one of its pods is evicted (Eviction API, so PodDisruptionBudgets hold: a 429
waits for the next round), and the next move for it waits until the evicted
pod is gone and every replica is Ready again. Rounds are stateless apart from
that in-flight note, so a restart loses nothing: `settled` guards every move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.balance import Move, PodView, plan_move, settled, statefulset_pods
from asklepios.core.node import NodeView
from asklepios.engine.gate import REQUEST_TIMEOUT, AlwaysOpen, WriteGate
from asklepios.kube.client import ApiError, NotFound
from asklepios.kube.events import EventRecorder, ObjectRef
from asklepios.kube.pods import Evictions
from asklepios.observe import metrics

log = logging.getLogger("asklepios.balancer")


@attrs.define(eq=False)
class Balancer:
    settings: Settings
    evictions: Evictions
    events: EventRecorder
    nodes: Callable[[], Mapping[str, NodeView]]
    gate: WriteGate = attrs.Factory(AlwaysOpen)
    pods: dict[str, PodView] = attrs.Factory(dict)
    inflight: dict[tuple[str, str], Move] = attrs.Factory(dict)  # (namespace, sts uid) -> move
    _wake: anyio.Event | None = None

    def shard(self) -> PodShard:
        """A Store for one pod reflector (one per namespace, or one for all)."""
        return PodShard(self.pods)

    # --- running ----------------------------------------------------------------------
    def trigger(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake = anyio.Event()
            with anyio.move_on_after(self.settings.resync_seconds):
                await self._wake.wait()
            await self.round()

    async def round(self) -> None:
        nodes = self.nodes()
        for key, members in statefulset_pods(self.pods.values()).items():
            move = self.inflight.get(key)
            if move is not None:
                if any(p.uid == move.pod.uid for p in members) or not all(p.ready and not p.deleting for p in members):
                    continue  # the evicted pod is not yet replaced by a Ready one
                del self.inflight[key]
            move = plan_move(members, nodes)
            if move is not None:
                await self._try(key, members, move)

    async def _try(self, key: tuple[str, str], members: list[PodView], move: Move) -> None:
        sts = move.statefulset
        try:
            replicas = await self.evictions.statefulset_replicas(move.namespace, sts.name)
        except ApiError as exc:
            log.warning("could not read StatefulSet", extra={"statefulset": sts.name, "error": str(exc)})
            return
        if not settled(members, replicas):
            log.info(
                "waiting for every replica to be Ready",
                extra={"statefulset": f"{move.namespace}/{sts.name}", "pod": move.pod.name},
            )
            return
        facts = {
            "statefulset": f"{move.namespace}/{sts.name}",
            "pod": move.pod.name,
            "from_node": move.from_node,
            "to_node": move.to_node,
        }
        if self.settings.dry_run:
            log.info("dry run: would move pod", extra=facts)
            return
        if not self.gate.may_write():
            return
        try:
            await self.evictions.evict(move.pod, min(REQUEST_TIMEOUT, self.gate.write_budget()))
        except NotFound:
            return
        except ApiError as exc:
            if exc.status == 429:
                log.info("eviction refused by a PodDisruptionBudget; will retry", extra=facts)
            else:
                log.warning("eviction failed; will retry", extra={**facts, "error": str(exc)})
            return
        self.inflight[key] = move
        metrics.REBALANCED_PODS.inc()
        log.info("pod moved", extra={**facts, "action": "rebalance"})
        message = f"evicted from {move.from_node}, which holds two pods of {sts.name}, so it can run on {move.to_node}"
        pod_ref = ObjectRef("Pod", move.pod.name, move.pod.uid, move.namespace)
        await self.events.emit(pod_ref, "PodRebalanced", message)
        sts_ref = ObjectRef("StatefulSet", sts.name, sts.uid, move.namespace, api_version="apps/v1")
        await self.events.emit(sts_ref, "PodRebalanced", f"{move.pod.name} {message}")


@attrs.define(eq=False)
class PodShard:
    """The part of the balancer's pod cache that one reflector keeps."""

    pods: dict[str, PodView]
    keys: set[str] = attrs.Factory(set)

    def replace(self, items: dict[str, PodView]) -> None:
        for key in self.keys - items.keys():
            self.pods.pop(key, None)
        self.pods.update(items)
        self.keys = set(items)

    def upsert(self, key: str, item: PodView) -> None:
        self.pods[key] = item
        self.keys.add(key)

    def delete(self, key: str) -> None:
        self.pods.pop(key, None)
        self.keys.discard(key)
