"""Duplicate StatefulSet pods per node, and which one to move where.

After a kickout the dead node's pods come back on the survivors, so two members
of one quorum share a node. `plan_moves` finds, per StatefulSet, a node with two
or more of its pods while a watched node where one of them could run holds
none, and picks the pod to evict: the newest on the most crowded node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

from asklepios.core.node import NodeView
from asklepios.core.placement import Placement


@attrs.frozen
class OwnerRef:
    kind: str
    name: str
    uid: str


@attrs.frozen
class PodView:
    namespace: str
    name: str
    uid: str
    node: str  # spec.nodeName, "" while pending
    owner: OwnerRef | None  # the controller ownerReference
    created: datetime | None = None
    deleting: bool = False
    ready: bool = False
    placement: Placement = attrs.field(factory=Placement)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


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
