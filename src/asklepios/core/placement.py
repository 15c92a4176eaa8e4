"""Where a pod could run: nodeSelector, required node affinity, taints and tolerations.

The balancer only moves a pod when the scheduler could place it on the target
node; this is the subset of the scheduler's filters that decides that for
StatefulSet pods (resources are not modelled: control-plane nodes that just
lost their pods have room, and the eviction is harmless if they do not).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from asklepios.core.node import NodeView


@attrs.frozen
class Toleration:
    key: str = ""
    operator: str = "Equal"  # or Exists
    value: str = ""
    effect: str = ""  # empty: all effects

    def tolerates(self, key: str, value: str, effect: str) -> bool:
        if self.effect and self.effect != effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != key:
            return False
        return self.operator == "Exists" or self.value == value


@attrs.frozen
class NodeRequirement:
    """One matchExpressions entry of a required node affinity term."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist, Gt, Lt
    values: tuple[str, ...] = ()
    field: bool = False  # matchFields (only metadata.name exists)

    def matches(self, node: NodeView) -> bool:
        if self.field:
            present, value = self.key == "metadata.name", node.name
        else:
            present, value = self.key in node.labels, node.labels.get(self.key, "")
        op = self.operator
        if op == "In":
            return present and value in self.values
        if op == "NotIn":
            return not present or value not in self.values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if op in ("Gt", "Lt") and present and self.values:
            try:
                have, want = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > want if op == "Gt" else have < want
        return False


@attrs.frozen
class Placement:
    """A pod's scheduling constraints that depend on the node alone."""

    node_selector: Mapping[str, str] = attrs.field(factory=dict)
    # required node affinity: OR over terms, AND within a term; () means no constraint
    affinity_terms: tuple[tuple[NodeRequirement, ...], ...] = ()
    tolerations: tuple[Toleration, ...] = ()

    def fits(self, node: NodeView) -> str | None:
        """None when the pod may be scheduled on `node`, else why not."""
        if not node.ready.is_ready:
            return "node not Ready"
        if node.unschedulable:
            return "node cordoned"
        for key, value in self.node_selector.items():
            if node.labels.get(key) != value:
                return f"nodeSelector {key}={value}"
        if self.affinity_terms and not any(all(req.matches(node) for req in term) for term in self.affinity_terms):
            return "required node affinity"
        for taint in node.taints:
            if taint.effect not in ("NoSchedule", "NoExecute"):
                continue
            if not any(t.tolerates(taint.key, taint.value, taint.effect) for t in self.tolerations):
                return f"untolerated taint {taint.key}:{taint.effect}"
        return None
