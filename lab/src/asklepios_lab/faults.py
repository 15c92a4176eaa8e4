"""The faults Asklepios must tell apart: power cuts, stopped kubelets, partitions, skewed clocks.

A node's liveness has two independent witnesses, as on real hardware: its kwok (the
kubelet towards the apiserver: Ready condition, Lease renewals) and its kubelet port
(InternalIP:10250, see :mod:`asklepios_lab.listeners`). So:

* :meth:`~FaultOps.crash` is a power cut (a BMC power Off calls it too): SIGKILL the
  node's kwok and make its port *silent*: a connect times out, as towards a machine that
  is off. The Lease stops; after ``node_monitor_grace_period`` node-lifecycle sets
  Ready=Unknown (reason ``NodeStatusUnknown``) and taints the node
  ``node.kubernetes.io/unreachable``; its pods stay Terminating once evicted.
* :meth:`~FaultOps.stop_kubelet`: the machine runs, its kubelet is stopped (a bad
  upgrade, an expired certificate): SIGKILL the kwok, the port *refuses* (RST from a
  running kernel). The apiserver sees what it sees after a power cut.
* :meth:`~FaultOps.partition` cuts the node off the apiserver: SIGKILL the kwok, the port
  still *accepts*.
* :meth:`~FaultOps.skewed_kubelet`: the kubelet runs with a clock that is behind: kwok
  stops, the lab renews the Lease as the node itself with an old ``renewTime``
  (:mod:`asklepios_lab.leases`); the port accepts (or any ``port`` mode).
* :meth:`~FaultOps.restore` starts a new kwok and opens the port (accepting): the kwok
  takes the Lease over once the old one has expired and posts Ready=True
  (lastTransitionTime = now), like a rebooted kubelet. It works after any fault above.
  Pods the new kwok misses at its start (it can, see :mod:`asklepios_lab.resync`) are
  touched by the lab until kwok has finished or started them.
* :meth:`~FaultOps.set_ready` writes the Ready condition directly and it *sticks*: the
  node gets the :data:`~asklepios_lab.kwok.READY_OVERRIDE` annotation, which kwok's
  stages respect, and a still-renewed Lease keeps node-lifecycle from overwriting it.
  :meth:`~FaultOps.clear_ready` (and ``restore``) hand the condition back to kwok.

:meth:`~FaultOps.port_state` tells what a connect gets now: ``accepted``, ``refused``
or ``silent``. Only the kubelet port is modelled: other ports of a node address refuse.

A bulk group's name works too (crash/stop_kubelet/partition/restore act on its one kwok
and its ports, if it was created with ``listeners=True``). One node of a bulk group can
be faulted and restored on its own, its kwok keeping the others alive: see
:meth:`~FaultOps.crash`.
"""

from __future__ import annotations

import socket
import time
from typing import Literal

from . import kwok
from .api import JSON, ApiError
from .leases import LEASES, SkewedKubelet
from .listeners import PortMode
from .nodes import NodeOps, now_rfc3339, ready_condition
from .resync import PodResync

_DEFAULT_REASON = {"True": "KubeletReady", "False": "KubeletNotReady", "Unknown": "NodeStatusUnknown"}
PortState = Literal["accepted", "refused", "silent"]


class FaultOps(NodeOps):
    """Faults of :class:`~asklepios_lab.ControlPlane` (a mixin over :class:`NodeOps`)."""

    def crash(self, name: str) -> None:
        """A power cut of node (or bulk group) ``name``: SIGKILL its kwok; its port answers nothing.

        One node of a bulk group shares its kwok with the others, so it is cut out of the
        group instead, in this order:

        1. its kubelet port goes silent (if the group has listeners);
        2. its label :data:`~asklepios_lab.kwok.GROUP_LABEL` is replaced by
           :data:`~asklepios_lab.kwok.POWERED_OFF_LABEL` (value: the group), so it leaves
           its kwok's ``--manage-nodes-with-label-selector``: kwok forgets it, stops
           renewing its Lease and no longer touches it or its pods (they stay as they are,
           Terminating ones included), as with a dead kubelet;
        3. its Lease in kube-node-lease is deleted. This is a *fast-forward* of the power
           cut: a real one leaves the Lease in place, silent once ``leaseDurationSeconds``
           have passed since its last renewal (240 s for the benchmarks' bulk groups).
           node-lifecycle still marks the node Unknown only after its grace period.

        ``stop_kubelet`` and ``partition`` of one member do the same with its port
        refusing or accepting.
        """
        self._kubelet_down(name, "silent")

    def stop_kubelet(self, name: str) -> None:
        """The kubelet of node (or group) ``name`` stops, the machine runs: kwok SIGKILLed, port refuses."""
        self._kubelet_down(name, "refuse")

    def partition(self, name: str) -> None:
        """Cut node (or bulk group) ``name`` off the apiserver: SIGKILL its kwok, its port still accepts."""
        self._kubelet_down(name, "accept")

    def _kubelet_down(self, name: str, port: PortMode) -> None:
        with self._lock:
            self._stop_node_threads(name)
            if name in self._group_of:
                cut = name in self._cut
                self._cut[name] = port
                if self._group_of[name] in self._listen_on:
                    self.listeners.set([(self._ips[name], self.kubelet_port)], port)
                if cut:
                    return
        if name in self._group_of:
            self._cut_member(name)
            return
        with self._lock:
            self._kwok_of(name).kill()
            self._set_ports(name, port)

    def _cut_member(self, name: str) -> None:
        group = self._group_of[name]
        labels = {kwok.GROUP_LABEL: None, kwok.POWERED_OFF_LABEL: group}
        try:
            self.api.patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}})
        except ApiError:
            with self._lock:
                self._cut.pop(name, None)
            raise
        self.api.delete(f"{LEASES}/{name}")

    def _power_on_member(self, name: str) -> None:
        """Back into its group: port as the group's, label back (kwok recreates the Lease, posts Ready)."""
        group = self._group_of[name]
        with self._lock:
            mode = self._cut.pop(name, None)
            if group in self._listen_on:
                self.listeners.set([(self._ips[name], self.kubelet_port)], self._modes.get(group, "accept"))
        meta = {
            "labels": {kwok.GROUP_LABEL: group, kwok.POWERED_OFF_LABEL: None},
            "annotations": {kwok.READY_OVERRIDE: None},
        }
        try:
            self.api.patch(f"/api/v1/nodes/{name}", {"metadata": meta})
        except ApiError:
            with self._lock:
                if mode is not None:
                    self._cut[name] = mode
            raise

    def powered_off(self, name: str) -> bool:
        """True while node ``name`` of a bulk group is out of its kwok on its own (a fault of it alone)."""
        return name in self._cut

    def skewed_kubelet(
        self, name: str, behind_seconds: float = 60.0, every: float = 1.0, *, port: PortMode = "accept"
    ) -> SkewedKubelet:
        """Node ``name``'s kubelet runs with a clock ``behind_seconds`` behind, renewing every ``every`` s.

        Its kwok stops and the lab renews its Lease as the node itself with renewTime =
        now - ``behind_seconds`` (:class:`~asklepios_lab.leases.SkewedKubelet`, running when
        this returns, after its first renewal); its port is in ``port`` mode (the kubelet
        runs: "accept"). Ready stays as it was: with ``set_ready(name, "False")`` the node
        is NotReady while its kubelet demonstrably renews (node-lifecycle sees renewTime
        change, so it never turns it Unknown). Use the result as a context manager, or
        ``restore(name)``, which stops it; so do ``remove_node`` and teardown.
        """
        self._kubelet_down(name, port)
        renewer = SkewedKubelet(
            self.as_node(name), name, behind_seconds=behind_seconds, every=every, lease_seconds=self.lease_seconds
        )
        renewer.renew_times.append(renewer.renew_once())  # raises here, not in the thread, if it cannot
        with self._lock:
            self._skewed[name] = renewer.start()
        return renewer

    def restore(self, name: str, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Start the kwok of ``name`` again and make its port accept (clearing any set_ready override).

        Stops a :meth:`skewed_kubelet` of it. A node of a bulk group is put back into its
        group in one patch (its label back, the set_ready override removed) after its
        port followed the group's: its kwok, still running, selects it again, recreates
        its Lease and, if Ready is not True, posts Ready=True through its node-initialize
        stage (lastTransitionTime = now), like a rebooted kubelet. ``restore(group)``
        leaves nodes faulted on their own as they are.
        """
        with self._lock:
            self._stop_node_threads(name)
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
        if group:
            with self._lock:
                self._set_ports(name, "accept")
                proc.start()
        else:
            self.boot_kwok(name)
        if wait_ready and group:
            self._wait_group_ready(name, proc, timeout)
        elif wait_ready:
            self.wait_ready(name, "True", timeout)

    def boot_kwok(self, name: str) -> None:
        """The core of :meth:`restore` for a node with its own kwok: port accepting, a new kwok, a pod resync.

        The lab's other threads acting for the node (a skewed kubelet, an older resync)
        stop first. The :class:`~asklepios_lab.resync.PodResync` touches the pods the new
        kwok may miss at its start.
        """
        with self._lock:
            self._stop_node_threads(name)
            self._set_ports(name, "accept")
            started = time.time()
            self._kwok_of(name).start()
            self._resyncs[name] = PodResync(self.api, name, started).start()

    def port_mode(self, name: str) -> PortMode:
        """The mode the lab keeps node ``name``'s kubelet port in (no connect): accept, refuse, silent."""
        return self.listeners.mode((self.node_ip(name), self.kubelet_port))

    def port_state(self, name: str, timeout: float = 1.0) -> PortState:
        """What a TCP connect to node ``name``'s InternalIP:kubelet_port gets now.

        ``accepted``; ``refused`` (RST); ``silent``: no answer within ``timeout`` seconds.
        """
        try:
            with socket.create_connection((self.node_ip(name), self.kubelet_port), timeout=timeout):
                return "accepted"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "silent"

    def answers(self, name: str, timeout: float = 0.5) -> bool:
        """True if a TCP connect to node ``name``'s kubelet port is accepted (see :meth:`port_state`)."""
        return self.port_state(name, timeout) == "accepted"

    def set_ready(self, name: str, status: str, reason: str | None = None, message: str | None = None) -> JSON:
        """Set the node's Ready condition to ``status`` ("True"/"False"/"Unknown"); sticks.

        lastHeartbeatTime is now; lastTransitionTime is now if the status changes, else
        unchanged. Holds while the node's Lease is renewed (kwok, or a skewed_kubelet);
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
