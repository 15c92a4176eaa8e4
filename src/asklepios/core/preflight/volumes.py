"""Preflight rule: StatefulSets whose volumes are bound to one node.

A kickout frees a dead node's volumes so that its pods start elsewhere *with* them.
That works only for storage that can attach on another node. A PersistentVolume
pinned to one node (a local PV, or any PV whose required node affinity names its
nodes by hostname) cannot follow its pod: the replacement stays Pending until that
node is back, so a kickout only deletes the pod. `asklepios check` says so before
an outage does.

Pure: the adapter (`kube.access`) reads the PersistentVolumes as `NodeTerm`s and
the pods as `PodSeen`; the rules here decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from asklepios.core.preflight.cluster import PodSeen
from asklepios.core.preflight.findings import VOLUMES, Finding, have, names, ok, plural, warning

HOSTNAME_LABEL = "kubernetes.io/hostname"
NAME_FIELD = "metadata.name"

# One requirement of a node selector term: (key, operator, values); matchFields keys
# are prefixed "field:" so that a label called "metadata.name" is not taken for the field.
Requirement = tuple[str, str, tuple[str, ...]]
NodeTerm = tuple[Requirement, ...]


@attrs.frozen
class PinnedVolume:
    """A bound PersistentVolume that only the named nodes can use."""

    name: str
    claim_namespace: str
    claim_name: str
    nodes: tuple[str, ...]


def pinned_nodes(terms: Sequence[NodeTerm]) -> tuple[str, ...] | None:
    """The nodes a PV's required node affinity allows, when it names them; else None.

    The terms are ORed: the PV is pinned only if every term names its nodes (a
    hostname label or the metadata.name field, operator In). One term that does not
    (a zone, a rack label) lets it attach on nodes nobody listed: not pinned.
    """
    if not terms:
        return None
    allowed: set[str] = set()
    for term in terms:
        named = [
            set(values)
            for key, operator, values in term
            if operator == "In" and key in (HOSTNAME_LABEL, f"field:{NAME_FIELD}")
        ]
        if not named:
            return None
        allowed |= set.intersection(*named)  # ANDed within a term
    return tuple(sorted(allowed))


def pinned_volume_finding(pods: Iterable[PodSeen], volumes: Iterable[PinnedVolume]) -> Finding:
    """StatefulSets among `pods` that use a pinned volume, with the nodes their volumes are bound to."""
    by_claim = {(v.claim_namespace, v.claim_name): v for v in volumes}
    stuck: dict[str, set[str]] = {}
    for pod in pods:
        if pod.owner is None or pod.owner.kind != "StatefulSet":
            continue
        for claim in pod.claims:
            volume = by_claim.get((pod.namespace, claim))
            if volume is not None:
                stuck.setdefault(f"{pod.namespace}/{pod.owner.name}", set()).update(volume.nodes)
    if not stuck:
        return ok(VOLUMES, "no StatefulSet on the watched nodes or under the balancer has a volume bound to one node")
    listed = [f"{sts} (on {names(sorted(nodes), 3)})" for sts, nodes in sorted(stuck.items())]
    return warning(
        VOLUMES,
        f"{plural(len(stuck), 'StatefulSet')} {have(len(stuck))} volumes bound to one node (local "
        f"PersistentVolumes): when that node dies their pods cannot start elsewhere, a kickout only deletes "
        f"them and the new pod waits, Pending, for the node: {names(listed)}",
        "expected for local storage (the pod runs again when its node is back, or when the application "
        "rebuilds the replica on a new PVC); pods that must move need storage that attaches on any node",
    )


def claims_with_pinned_volumes(volumes: Iterable[PinnedVolume]) -> set[tuple[str, str]]:
    """(namespace, claim) of every pinned volume: the pods worth reading are those using one."""
    return {(v.claim_namespace, v.claim_name) for v in volumes}
