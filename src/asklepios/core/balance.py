"""Duplicate StatefulSet pods per node, and which one to move where.

After a kickout the dead node's pods come back on the survivors, so two members
of one quorum share a node. `plan_moves` finds, per StatefulSet, a node with two
or more of its pods while a watched node where one of them could run holds
none, and picks the pod to evict: the newest on the most crowded node.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

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


REFUSALS_BEFORE_GIVING_UP = 5  # evictions refused in a row before a StatefulSet is left alone


@attrs.frozen
class GaveUp:
    """Why a StatefulSet is left alone, and what must change before it is tried again."""

    why: str
    pods: str  # `fingerprint` of its pods then: any change of them ends it
    pdbs: str  # the namespace's PodDisruptionBudgets then (names and resourceVersions)
    checked: datetime  # when the PodDisruptionBudgets were last compared


@attrs.frozen
class MoveLedger:
    """One StatefulSet's recent evictions, failed moves and refused evictions: may it move now?

    An eviction is not a move: the scheduler may put the replacement back on the
    crowded node, and evicting again would restart a database replica every round.
    So evictions are capped per hour, and a move whose replacement came back next to
    a sibling, or an eviction the apiserver refused (a PodDisruptionBudget's 429),
    backs the StatefulSet off (the wait is the engine's one retry policy). After
    REFUSALS_BEFORE_GIVING_UP refusals in a row it is left alone until its pods or its
    PodDisruptionBudgets change. Kept in Asklepios' record (`to_record`), so a new
    leader goes on from here.
    """

    name: str = ""  # the StatefulSet's name (its record is filed under "namespace.name")
    moves: tuple[datetime, ...] = ()  # evictions within the last hour
    failures: int = 0  # failed moves in a row
    refusals: int = 0  # refused evictions in a row
    backoff_until: datetime | None = None
    gave_up: GaveUp | None = None

    def why_not(self, now: datetime, max_per_hour: int) -> str | None:
        """Why no eviction may happen now, or None."""
        if self.gave_up is not None:
            return f"left alone until its pods or its PodDisruptionBudget change: {self.gave_up.why}"
        if self.backoff_until is not None and now < self.backoff_until:
            after = f"{self.failures} failed move(s)" if self.failures else f"{self.refusals} refused eviction(s)"
            return f"backing off after {after} until {self.backoff_until:%H:%M:%S}"
        recent = [t for t in self.moves if now - t < HOUR]
        if len(recent) >= max_per_hour:
            return f"{len(recent)} evictions in the last hour (ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR={max_per_hour})"
        return None

    def evicted(self, now: datetime) -> MoveLedger:
        moves = (*(t for t in self.moves if now - t < HOUR), now)
        return attrs.evolve(self, moves=moves, refusals=0, backoff_until=None)

    def failed(self, now: datetime, wait: timedelta) -> MoveLedger:
        return attrs.evolve(self, failures=self.failures + 1, backoff_until=now + wait)

    def refused(self, now: datetime, wait: timedelta) -> MoveLedger:
        return attrs.evolve(self, refusals=self.refusals + 1, backoff_until=now + wait)

    def give_up(self, why: str, pods: str, pdbs: str, now: datetime) -> MoveLedger:
        return attrs.evolve(self, backoff_until=None, gave_up=GaveUp(why, pods, pdbs, now))

    def retry(self) -> MoveLedger:
        """Its pods or PodDisruptionBudgets changed: try again, from a clean slate of refusals."""
        return attrs.evolve(self, refusals=0, backoff_until=None, gave_up=None)

    def succeeded(self) -> MoveLedger:
        return attrs.evolve(self, failures=0, backoff_until=None)

    def to_record(self, uid: str) -> dict[str, object]:
        """A JSON-ready dict (times as seconds since the epoch)."""
        gave_up = self.gave_up
        parked = None
        if gave_up is not None:
            parked = {
                "why": gave_up.why,
                "pods": gave_up.pods,
                "pdbs": gave_up.pdbs,
                "checked": gave_up.checked.timestamp(),
            }
        return {
            "uid": uid,
            "name": self.name,
            "moves": [t.timestamp() for t in self.moves],
            "failures": self.failures,
            "refusals": self.refusals,
            "backoff_until": self.backoff_until.timestamp() if self.backoff_until else None,
            "gave_up": parked,
        }

    @classmethod
    def from_record(cls, data: object) -> tuple[str, MoveLedger] | None:
        """(StatefulSet uid, ledger) from `to_record`'s dict; None for anything else (never raises)."""
        try:
            if not isinstance(data, dict):
                return None
            uid, name, moves = data["uid"], data["name"], data["moves"]
            failures, refusals, gave_up = data["failures"], data["refusals"], data["gave_up"]
            if not (isinstance(uid, str) and uid and isinstance(name, str) and isinstance(moves, list)):
                return None
            if not (_count(failures) and _count(refusals)):
                return None
            parked = None
            if gave_up is not None:
                if not (
                    isinstance(gave_up, dict) and all(isinstance(gave_up[k], str) for k in ("why", "pods", "pdbs"))
                ):
                    return None
                parked = GaveUp(gave_up["why"], gave_up["pods"], gave_up["pdbs"], _time(gave_up["checked"]))
            until = data["backoff_until"]
            ledger = cls(
                name=name,
                moves=tuple(_time(t) for t in moves),
                failures=failures,
                refusals=refusals,
                backoff_until=None if until is None else _time(until),
                gave_up=parked,
            )
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            return None
        return uid, ledger


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000


def _time(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return datetime.fromtimestamp(value, UTC)


def fingerprint(members: list[PodView]) -> str:
    """What identifies a StatefulSet's pods as they are now (names, uids, nodes, readiness)."""
    parts = sorted(f"{p.name}/{p.uid}/{p.node}/{int(p.ready)}/{int(p.deleting)}" for p in members)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


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
