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
listeners, if it was created with ``listeners=True``.
"""

from __future__ import annotations

import socket

from . import kwok
from .api import JSON
from .nodes import NodeOps, now_rfc3339, ready_condition

_DEFAULT_REASON = {"True": "KubeletReady", "False": "KubeletNotReady", "Unknown": "NodeStatusUnknown"}


class FaultOps(NodeOps):
    """Faults of :class:`~asklepios_lab.ControlPlane` (a mixin over :class:`NodeOps`)."""

    def crash(self, name: str) -> None:
        """A power cut of node (or bulk group) ``name``: SIGKILL its kwok, close its kubelet port."""
        with self._lock:
            self._kwok_of(name).kill()
            self.listeners.down(name)

    def partition(self, name: str) -> None:
        """Cut node (or bulk group) ``name`` off the apiserver: SIGKILL its kwok, keep its port."""
        with self._lock:
            self._kwok_of(name).kill()

    def restore(self, name: str, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Reopen the kubelet port and start the kwok of ``name`` again (clearing any set_ready override)."""
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
                self.listeners.up(name, self._listen_on[name])
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
