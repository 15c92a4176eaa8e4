"""Preflight rules about the cluster: watched nodes, the guard, pods that never move,
StatefulSets without a PodDisruptionBudget, node Leases."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import attrs

from asklepios.core.balance import OwnerRef
from asklepios.core.guard import MaxUnhealthy, hold_reason
from asklepios.core.node import EXCLUDE_LABEL, LEGACY_SKIP_TAINT_KEY, OUT_OF_SERVICE_TAINT, NodeView
from asklepios.core.placement import Toleration
from asklepios.core.preflight.findings import (
    BALANCER,
    GUARD,
    LEASES,
    NODE_LEASE_NAMESPACE,
    NODES,
    PODS,
    PROBE,
    Finding,
    failure,
    have,
    names,
    ok,
    plural,
    warning,
)
from asklepios.core.selector import LabelSelector

# --- watched nodes and the guard -------------------------------------------------------


def kickable(views: Iterable[NodeView]) -> list[NodeView]:
    """The nodes that can be kicked out: watched and not excluded (what the guard counts)."""
    return [v for v in views if v.excluded_by is None]


def nodes_finding(selector: str, views: Sequence[NodeView]) -> Finding:
    if not views:
        return failure(
            NODES,
            f"no node matches ASKLEPIOS_NODE_SELECTOR={selector!r}: nothing is watched",
            "label the nodes to heal or fix ASKLEPIOS_NODE_SELECTOR",
        )
    excluded = [v.name for v in views if v.excluded_by is not None]
    message = f"{plural(len(views), 'node')} {'matches' if len(views) == 1 else 'match'} {selector!r}"
    if excluded:
        message += f" ({len(excluded)} excluded: {names(excluded)})"
    return ok(NODES, message)


def guard_finding(max_unhealthy: MaxUnhealthy, views: Sequence[NodeView]) -> Finding:
    """What ASKLEPIOS_MAX_UNHEALTHY comes to on these nodes, and what would silently stop a kickout.

    The guard counts the watched, non-excluded nodes that are NotReady, including those
    already kicked out and still down: a dead node left kicked out uses up the budget.
    """
    setting = f"ASKLEPIOS_MAX_UNHEALTHY={max_unhealthy}"
    counted = kickable(views)
    total = len(counted)
    if total == 0:
        return warning(
            GUARD,
            f"all {plural(len(views), 'watched node')} are excluded: none will ever be kicked out",
            f"remove the label {EXCLUDE_LABEL}=true or the taint {LEGACY_SKIP_TAINT_KEY}=skip from the nodes to heal",
        )
    limit = max_unhealthy.limit(total)
    down = sorted(v.name for v in counted if not v.ready.is_ready)
    sentence = f"{plural(total, 'watched node')}: kickouts held while more than {limit} {_be(limit)} NotReady"
    if limit >= total:
        sentence = f"{plural(total, 'watched node')}: kickouts are never held ({setting} allows all {total})"
    held = hold_reason(max_unhealthy, total, len(down))
    if held is not None:
        return warning(
            GUARD,
            f"kickouts are held now: {held}: {names(down)}",
            "bring the NotReady nodes back, or exclude the ones that stay down (label asklepios.io/exclude=true)",
        )
    if down and len(down) == limit and limit < total:
        return warning(
            GUARD,
            f"{sentence}; {plural(len(down), 'is', 'are')} NotReady now ({names(down)}): "
            "the next node to fail will be held, not kicked out",
            "bring the NotReady nodes back, or exclude the ones that stay down (label asklepios.io/exclude=true)",
        )
    if total == 1:
        return warning(
            GUARD,
            f"only 1 watched node ({counted[0].name}): its kickout needs the apiserver and an Asklepios replica "
            "running elsewhere; if it is the only control-plane node, nothing is left to kick it out",
            "watch every node whose pods should move (ASKLEPIOS_NODE_SELECTOR)",
        )
    return ok(GUARD, sentence + (f" ({len(down)} NotReady now)" if down else ""))


def _be(count: int) -> str:
    return "is" if count == 1 else "are"


# --- pods that never move --------------------------------------------------------------


@attrs.frozen
class PodSeen:
    """A pod as `asklepios check` reads it."""

    namespace: str
    name: str
    node: str = ""
    owner: OwnerRef | None = None  # the controller ownerReference
    labels: Mapping[str, str] = MappingProxyType({})
    tolerations: tuple[Toleration, ...] = ()
    finished: bool = False  # phase Succeeded or Failed
    claims: tuple[str, ...] = ()  # its PersistentVolumeClaims, by name

    @property
    def owner_text(self) -> str:
        """`DaemonSet kube-system/cilium`, `static pods on node1`, or the pod itself."""
        if self.owner is None:
            return f"Pod {self.namespace}/{self.name}"
        if self.owner.kind == "Node":
            return f"static pods on {self.owner.name}"
        return f"{self.owner.kind} {self.namespace}/{self.owner.name}"


def tolerates_out_of_service(tolerations: Iterable[Toleration]) -> bool:
    """A toleration of `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute` (a catch-all included)."""
    taint = OUT_OF_SERVICE_TAINT
    return any(t.tolerates(taint.key, taint.value, taint.effect) for t in tolerations)


def never_moves(pod: PodSeen) -> bool:
    """Running and tolerating the out-of-service taint: a kickout never removes it."""
    return not pod.finished and tolerates_out_of_service(pod.tolerations)


def never_move_finding(pods: Iterable[PodSeen], nodes: Iterable[str]) -> Finding:
    """Pods on kickable nodes that the out-of-service taint never removes, by owner."""
    where = set(nodes)
    staying = [p for p in pods if p.node in where and never_moves(p)]
    if not staying:
        return ok(PODS, "no pod on the watched nodes tolerates the out-of-service taint")
    owners = Counter(p.owner_text for p in staying)
    listed = [f"{owner}: {plural(count, 'pod')}" for owner, count in sorted(owners.items(), key=_by_count)]
    return warning(
        PODS,
        f"{plural(len(staying), 'pod')} on watched nodes tolerate the out-of-service taint and never leave "
        f"a kicked-out node (their volumes stay attached): {names(listed)}",
        "fine for DaemonSets and static pods; for others drop the catch-all toleration "
        "(operator: Exists without a key) or give it a key",
    )


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


# --- balancer: PodDisruptionBudgets ----------------------------------------------------


@attrs.frozen
class Budget:
    """A PodDisruptionBudget: its namespace and selector (None: selects no pod)."""

    namespace: str
    name: str
    selector: LabelSelector | None

    def selects(self, pod: PodSeen) -> bool:
        return self.selector is not None and pod.namespace == self.namespace and self.selector.matches(pod.labels)


def unprotected_statefulsets(pods: Iterable[PodSeen], budgets: Sequence[Budget]) -> tuple[list[str], list[str]]:
    """(every StatefulSet among `pods`, those with a pod no PodDisruptionBudget selects), as `ns/name`."""
    members: dict[str, list[PodSeen]] = defaultdict(list)
    for pod in pods:
        if pod.owner is not None and pod.owner.kind == "StatefulSet":
            members[f"{pod.namespace}/{pod.owner.name}"].append(pod)
    bare = [sts for sts, ps in members.items() if not all(any(b.selects(p) for b in budgets) for p in ps)]
    return sorted(members), sorted(bare)


def statefulset_sample(budgets: Sequence[Budget]) -> Callable[[PodSeen], bool]:
    """A filter for reading pods page by page: per StatefulSet, its first pod and its first pod
    no budget selects. `unprotected_statefulsets` of what it keeps is that of all the pods,
    and a read of 50,000 pods keeps two per StatefulSet instead of all of them."""
    seen: set[str] = set()
    bare: set[str] = set()

    def keep(pod: PodSeen) -> bool:
        if pod.owner is None or pod.owner.kind != "StatefulSet":
            return False
        sts = f"{pod.namespace}/{pod.owner.name}"
        first = sts not in seen
        seen.add(sts)
        if sts in bare or any(b.selects(pod) for b in budgets):
            return first
        bare.add(sts)
        return True

    return keep


def balancer_finding(
    pods: Iterable[PodSeen], budgets: Sequence[Budget], selector: str, namespaces: Sequence[str]
) -> Finding:
    where = f"in {', '.join(namespaces)}" if namespaces else "in any namespace"
    managed, bare = unprotected_statefulsets(pods, budgets)
    if not managed:
        return warning(
            BALANCER,
            f"no StatefulSet pod matches ASKLEPIOS_BALANCER_SELECTOR={selector!r} {where}: the balancer moves nothing",
            "label the StatefulSets' pods or fix ASKLEPIOS_BALANCER_SELECTOR / ASKLEPIOS_BALANCER_NAMESPACES",
        )
    if bare:
        return warning(
            BALANCER,
            f"{plural(len(bare), 'StatefulSet')} the balancer moves {_be(len(bare))} not covered by a "
            f"PodDisruptionBudget: {names(bare)}",
            "add a PodDisruptionBudget (e.g. maxUnavailable: 1) selecting their pods, "
            "so that an eviction never takes a quorum down",
        )
    return ok(BALANCER, f"{plural(len(managed), 'StatefulSet')} to balance, each covered by a PodDisruptionBudget")


# --- node Leases -----------------------------------------------------------------------


def node_lease_finding(nodes: Iterable[str], leases: Iterable[str]) -> Finding:
    leased = set(leases)
    watched = sorted(nodes)
    missing = [n for n in watched if n not in leased]
    if missing:
        return warning(
            LEASES,
            f"{len(missing)} of {plural(len(watched), 'watched node')} {have(len(missing))} no Lease in "
            f"{NODE_LEASE_NAMESPACE}: the kubelet-silent signal cannot see a live kubelet there "
            f"(no Lease counts as silent): {names(missing)}",
            "check that their kubelets run and renew their node Lease (kubelet 1.17+ does by default)",
        )
    return ok(LEASES, f"every watched node has a Lease in {NODE_LEASE_NAMESPACE}")


# --- the probe -------------------------------------------------------------------------


def probe_finding(views: Iterable[NodeView], ports: Sequence[int]) -> Finding | None:
    """A warning when the liveness probe cannot ask some watched nodes (no InternalIP); else no line."""
    if not ports:
        return None
    blind = sorted(v.name for v in views if not v.addresses)
    if not blind:
        return None
    return warning(
        PROBE,
        f"{plural(len(blind), 'watched node')} {have(len(blind))} no InternalIP: the liveness probe cannot ask "
        f"{'it' if len(blind) == 1 else 'them'}, only the kubelet's Lease (and fencing) can show life: {names(blind)}",
        "give the nodes an InternalIP address (the kubelet's --node-ip), or turn fencing on",
    )
