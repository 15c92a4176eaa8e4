"""Duplicate StatefulSet pods per node, and which one to move where.

After a kickout the dead node's pods come back on the survivors, so two members
of one quorum share a node. `plan_moves` finds, per StatefulSet, a node with two
or more of its pods while a watched node where one of them could run holds
none, and picks the pod to evict: the newest on the most crowded node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import attrs

from asklepios.core.node import NodeView
from asklepios.core.placement import Placement


@attrs.frozen
class OwnerRef:
    kind: str
    name: str
    uid: str


NO_CONSTRAINTS = Placement()


@attrs.frozen
class PodView:
    """A balancer pod, reduced to what the decisions read; the balancer keeps one per pod.

    At 50,000 pods every field counts: the name is not a string of its own but the tail
    of `key` ("namespace/name"), the very string that keys the balancer's cache;
    `created` is a float, not a datetime; namespace, node, owner and placement are
    shared by many pods (see `asklepios.kube.pods.parse_pod`). Build one with `of`.
    """

    key: str  # namespace/name
    namespace: str
    uid: str
    node: str  # spec.nodeName, "" while pending
    owner: OwnerRef | None  # the controller ownerReference
    created: float | None = None  # metadata.creationTimestamp, seconds since the epoch (whole seconds)
    deleting: bool = False  # metadata.deletionTimestamp is set
    ready: bool = False  # the Ready condition is True
    placement: Placement = NO_CONSTRAINTS

    @classmethod
    def of(
        cls,
        namespace: str,
        name: str,
        uid: str,
        node: str,
        owner: OwnerRef | None,
        *,
        created: float | None = None,
        deleting: bool = False,
        ready: bool = False,
        placement: Placement = NO_CONSTRAINTS,
    ) -> PodView:
        return cls(f"{namespace}/{name}", namespace, uid, node, owner, created, deleting, ready, placement)

    @property
    def name(self) -> str:
        return self.key[len(self.namespace) + 1 :]


@attrs.frozen
class Move:
    pod: PodView
    from_node: str
    to_node: str
    statefulset: OwnerRef

    @property
    def namespace(self) -> str:
        return self.pod.namespace


def statefulset_pods(pods: Iterable[PodView]) -> dict[tuple[str, str], list[PodView]]:
    """Pods grouped by (namespace, StatefulSet uid)."""
    groups: dict[tuple[str, str], list[PodView]] = defaultdict(list)
    for pod in pods:
        if pod.owner is not None and pod.owner.kind == "StatefulSet":
            groups[(pod.namespace, pod.owner.uid)].append(pod)
    return groups


def plan_move(members: list[PodView], nodes: Mapping[str, NodeView]) -> Move | None:
    """The one move that spreads this StatefulSet's pods, or None."""
    live = [p for p in members if p.node and not p.deleting]
    by_node: dict[str, list[PodView]] = defaultdict(list)
    for pod in live:
        by_node[pod.node].append(pod)
    crowded = sorted((n for n, ps in by_node.items() if len(ps) >= 2), key=lambda n: (-len(by_node[n]), n))
    if not crowded:
        return None
    empty = sorted(
        name
        for name, view in nodes.items()
        if name not in by_node and view.kickout is None and not view.has_out_of_service_taint
    )
    for node in crowded:
        newest_first = sorted(by_node[node], key=lambda p: (p.created is not None, p.created, p.name), reverse=True)
        for pod in newest_first:
            for target in empty:
                if pod.placement.fits(nodes[target]) is None:
                    assert pod.owner is not None
                    return Move(pod=pod, from_node=node, to_node=target, statefulset=pod.owner)
    return None


def settled(members: list[PodView], replicas: int) -> bool:
    """Every replica exists, is scheduled, Ready and not terminating."""
    live = [p for p in members if not p.deleting]
    return len(live) == replicas == len(members) and all(p.ready and p.node for p in live)


@attrs.frozen
class MoveLedger:
    """One StatefulSet's recent evictions and failed moves: may it be moved now?

    An eviction is not a move: the scheduler may put the replacement back on the
    crowded node, and evicting again would restart a database replica every round.
    So evictions are capped per hour, and a move whose replacement came back next to
    a sibling backs the StatefulSet off exponentially, up to an hour.
    """

    moves: tuple[datetime, ...] = ()  # evictions within the last hour
    failures: int = 0
    backoff_until: datetime | None = None

    def why_not(self, now: datetime, max_per_hour: int) -> str | None:
        """Why no eviction may happen now, or None."""
        if self.backoff_until is not None and now < self.backoff_until:
            return f"backing off after {self.failures} failed move(s) until {self.backoff_until:%H:%M:%S}"
        recent = [t for t in self.moves if now - t < HOUR]
        if len(recent) >= max_per_hour:
            return f"{len(recent)} evictions in the last hour (ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR={max_per_hour})"
        return None

    def evicted(self, now: datetime) -> MoveLedger:
        return attrs.evolve(self, moves=(*(t for t in self.moves if now - t < HOUR), now))

    def failed(self, now: datetime, base: timedelta = timedelta(minutes=1)) -> MoveLedger:
        failures = self.failures + 1
        wait = min(HOUR, base * 2 ** (failures - 1))
        return attrs.evolve(self, failures=failures, backoff_until=now + wait)

    def succeeded(self) -> MoveLedger:
        return attrs.evolve(self, failures=0, backoff_until=None)


HOUR = timedelta(hours=1)


def landed(members: list[PodView], move: Move) -> PodView | None:
    """The Ready replacement of the evicted pod, once it runs (None while it does not)."""
    for pod in members:
        if pod.name == move.pod.name and pod.uid != move.pod.uid and pod.node and pod.ready and not pod.deleting:
            return pod
    return None


def doubled_up(members: list[PodView], pod: PodView) -> bool:
    """Another live pod of the StatefulSet shares `pod`'s node."""
    return any(p.node == pod.node and p.uid != pod.uid and not p.deleting for p in members)
