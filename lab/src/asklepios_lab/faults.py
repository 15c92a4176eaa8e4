"""The faults Asklepios must tell apart: power cuts, partitions, recoveries, NotReady.

A node's liveness has two independent witnesses, as on real hardware: its kwok (the
kubelet towards the apiserver: Ready condition, Lease renewals) and its kubelet port
(a TCP listener on InternalIP:10250, see :mod:`asklepios_lab.listeners`). So:

* :meth:`~FaultOps.crash` is a power cut: SIGKILL the node's kwok AND close its port.
  The Lease stops; after ``node_monitor_grace_period`` node-lifecycle sets
  Ready=Unknown (reason ``NodeStatusUnknown``, lastTransitionTime = when it noticed)
  and taints the node ``node.kubernetes.io/unreachable``; its pods stay Terminating
  once evicted; connects to the kubelet port are refused.
* :meth:`~FaultOps.partition` cuts the node off the apiserver: SIGKILL the kwok, keep
  the port. The apiserver sees what it sees after a crash, but the node still answers.
* :meth:`~FaultOps.restore` starts a new kwok and reopens the port: the kwok takes the
  Lease over once the old one has expired and posts Ready=True (lastTransitionTime =
  now), like a rebooted kubelet. It works after a crash or a partition.
* :meth:`~FaultOps.set_ready` writes the Ready condition directly and it *sticks*: the
  node gets the :data:`~asklepios_lab.kwok.READY_OVERRIDE` annotation, which kwok's
  stages respect, and the still-renewed Lease keeps node-lifecycle from overwriting
  it. lastHeartbeatTime = now; lastTransitionTime = now if the status changes, else kept.
  The port stays open. :meth:`~FaultOps.clear_ready` (and ``restore``) hand the
  condition back to kwok.

A bulk group's name works too: crash/partition/restore act on its one kwok and on its
listeners, if it was created with ``listeners=True``. One node of a bulk group can be
crashed and restored on its own (its kwok keeps running the others): ``crash`` takes it
out of its kwok's label selector, deletes its Lease and closes its kubelet port;
``restore`` puts it back (see :meth:`~FaultOps.crash`).
"""

from __future__ import annotations

import socket

from . import kwok
from .api import JSON, ApiError
from .nodes import NodeOps, now_rfc3339, ready_condition

_DEFAULT_REASON = {"True": "KubeletReady", "False": "KubeletNotReady", "Unknown": "NodeStatusUnknown"}


class FaultOps(NodeOps):
    """Faults of :class:`~asklepios_lab.ControlPlane` (a mixin over :class:`NodeOps`)."""

    def crash(self, name: str) -> None:
        """A power cut of node (or bulk group) ``name``: SIGKILL its kwok, close its kubelet port.

        One node of a bulk group shares its kwok with the others, so it is cut out of the
        group instead, in this order:

        1. its kubelet port closes (if the group has listeners): connects are refused;
        2. its label :data:`~asklepios_lab.kwok.GROUP_LABEL` is replaced by
           :data:`~asklepios_lab.kwok.POWERED_OFF_LABEL` (value: the group), so it leaves
           its kwok's ``--manage-nodes-with-label-selector``: kwok forgets it, stops
           renewing its Lease and no longer touches it or its pods (they stay as they are,
           Terminating ones included), as with a dead kubelet;
        3. its Lease in kube-node-lease is deleted. This is a *fast-forward* of the power
           cut: a real one leaves the Lease in place, silent once ``leaseDurationSeconds``
           have passed since its last renewal (240 s for the benchmarks' bulk groups).
           With no Lease the node's kubelet counts as silent at once (Asklepios treats a
           missing Lease as silent); node-lifecycle still marks the node Unknown only
           after its grace period, as after any power cut.

        A kwok renewal already in flight when the label changes could recreate the Lease;
        that needs a renewal of this very node within the few milliseconds between the
        label patch reaching kwok and the deletion, so it is not guarded against.
        """
        if name in self._group_of:
            self._power_off_member(name)
            return
        with self._lock:
            self._kwok_of(name).kill()
            self.listeners.down(name)

    def _power_off_member(self, name: str) -> None:
        group = self._group_of[name]
        with self._lock:
            self._cut.add(name)
            if group in self._listen_on:
                self.listeners.drop(group, (self._ips[name], self.kubelet_port))
        labels = {kwok.GROUP_LABEL: None, kwok.POWERED_OFF_LABEL: group}
        try:
            self.api.patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}})
        except ApiError:
            with self._lock:
                self._cut.discard(name)
            raise
        self.api.delete(_lease_path(name))

    def _power_on_member(self, name: str) -> None:
        """Back into its group: port open, label back (kwok recreates the Lease, posts Ready)."""
        group = self._group_of[name]
        with self._lock:
            if name in self._cut and group in self._listen_on and self.listeners.is_up(group):
                self.listeners.add(group, (self._ips[name], self.kubelet_port))
            self._cut.discard(name)
        meta = {
            "labels": {kwok.GROUP_LABEL: group, kwok.POWERED_OFF_LABEL: None},
            "annotations": {kwok.READY_OVERRIDE: None},
        }
        try:
            self.api.patch(f"/api/v1/nodes/{name}", {"metadata": meta})
        except ApiError:
            with self._lock:
                self._cut.add(name)
            raise

    def powered_off(self, name: str) -> bool:
        """True while node ``name`` of a bulk group is powered off on its own (``crash(name)``)."""
        return name in self._cut

    def partition(self, name: str) -> None:
        """Cut node (or bulk group) ``name`` off the apiserver: SIGKILL its kwok, keep its port."""
        with self._lock:
            self._kwok_of(name).kill()

    def restore(self, name: str, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Reopen the kubelet port and start the kwok of ``name`` again (clearing any set_ready override).

        A node of a bulk group is put back into its group in one patch (its label back,
        the set_ready override removed) after its port reopened: its kwok, still running,
        selects it again, recreates its Lease and, if Ready is not True, posts Ready=True
        through its node-initialize stage (lastTransitionTime = now), like a rebooted
        kubelet. ``restore(group)`` leaves nodes powered off on their own powered off.
        """
        if name in self._group_of:
            self._power_on_member(name)
            if wait_ready:
                self.wait_ready(name, "True", timeout)
            return
        proc = self._kwok_of(name)
        group = name in self._group_of.values()
        if group:
            selector = {"labelSelector": f"{kwok.GROUP_LABEL}={name}"}
            for node in self.api.get("/api/v1/nodes", query=selector)["items"]:
                if kwok.READY_OVERRIDE in (node["metadata"].get("annotations") or {}):
                    self._clear_override(node["metadata"]["name"])
        else:
            self._clear_override(name)
        with self._lock:
            if name in self._listen_on:
                cut = {(self._ips[n], self.kubelet_port) for n in self._cut if self._group_of.get(n) == name}
                self.listeners.up(name, [a for a in self._listen_on[name] if a not in cut])
            proc.start()
        if wait_ready and group:
            self._wait_group_ready(name, proc, timeout)
        elif wait_ready:
            self.wait_ready(name, "True", timeout)

    def answers(self, name: str, timeout: float = 0.5) -> bool:
        """True if a TCP connect to node ``name``'s InternalIP:kubelet_port is accepted."""
        try:
            with socket.create_connection((self.node_ip(name), self.kubelet_port), timeout=timeout):
                return True
        except OSError:
            return False

    def set_ready(self, name: str, status: str, reason: str | None = None, message: str | None = None) -> JSON:
        """Set the node's Ready condition to ``status`` ("True"/"False"/"Unknown"); sticks.

        lastHeartbeatTime is now; lastTransitionTime is now if the status changes, else
        unchanged. Holds while the node's kwok runs (its Lease keeps node-lifecycle off);
        on a crashed node node-lifecycle still turns it Unknown after the grace period.
        """
        if status not in _DEFAULT_REASON:
            raise ValueError(f"status must be True, False or Unknown, not {status!r}")
        self.api.patch(f"/api/v1/nodes/{name}",
                       {"metadata": {"annotations": {kwok.READY_OVERRIDE: status}}})  # fmt: skip
        current = ready_condition(self.node(name)) or {}
        now = now_rfc3339()
        cond = {
            "type": "Ready",
            "status": status,
            "reason": reason or _DEFAULT_REASON[status],
            "message": message or f"set by asklepios-lab set_ready({status})",
            "lastHeartbeatTime": now,
            "lastTransitionTime": (
                current["lastTransitionTime"]
                if current.get("status") == status and current.get("lastTransitionTime")
                else now
            ),
        }
        return self.api.patch(f"/api/v1/nodes/{name}/status",
                              {"status": {"conditions": [cond]}}, "strategic")  # fmt: skip

    def clear_ready(self, name: str, *, wait_ready: bool = True, timeout: float = 30.0) -> None:
        """Drop the set_ready override: kwok posts Ready=True again (if its kwok runs)."""
        self._clear_override(name)
        if wait_ready:
            self.wait_ready(name, "True", timeout)

    def _clear_override(self, name: str) -> None:
        self.api.patch(f"/api/v1/nodes/{name}",
                       {"metadata": {"annotations": {kwok.READY_OVERRIDE: None}}})  # fmt: skip


def _lease_path(node: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
