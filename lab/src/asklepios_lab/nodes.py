"""Fake nodes and the faults Asklepios must handle: power cuts, recoveries, NotReady.

Each node added with :meth:`NodeOps.add_node` gets its own kwok process
(``--manage-single-node``), which plays that node's kubelet: it posts the Ready
condition once, renews the node Lease, runs and terminates pods. So faults are real:

* :meth:`~NodeOps.crash` SIGKILLs the node's kwok (a power cut). The Lease stops; after
  ``node_monitor_grace_period`` node-lifecycle sets Ready=Unknown (reason
  ``NodeStatusUnknown``, lastTransitionTime = when it noticed) and taints the node
  ``node.kubernetes.io/unreachable``; its pods stay Terminating once evicted.
* :meth:`~NodeOps.restore` starts a new kwok: it takes the Lease over once the old one
  has expired and posts Ready=True (lastTransitionTime = now), like a rebooted kubelet.
* :meth:`~NodeOps.set_ready` writes the Ready condition directly and it *sticks*: the
  node gets the :data:`~asklepios_lab.kwok.READY_OVERRIDE` annotation, which kwok's
  stages respect, and the still-renewed Lease keeps node-lifecycle from overwriting
  it. lastHeartbeatTime = now; lastTransitionTime = now if the status changes, else kept.
  :meth:`~NodeOps.clear_ready` (and ``restore``) hand the condition back to kwok.

Scale mode: :meth:`~NodeOps.add_nodes_bulk` puts many nodes under ONE kwok process
(``--manage-nodes-with-label-selector``); crash/restore then act on the whole group.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import kwok
from .api import JSON, Api
from .procs import Proc, wait_until

_DEFAULT_REASON = {"True": "KubeletReady", "False": "KubeletNotReady", "Unknown": "NodeStatusUnknown"}
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ready_condition(node: JSON) -> JSON | None:
    """The node's Ready condition, if any."""
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            result: JSON = cond
            return result
    return None


class NodeOps:
    """Node management of :class:`~asklepios_lab.ControlPlane` (a mixin; needs its fields)."""

    api: Api
    bin_dir: Path
    kubeconfig: Path
    kwok_config: Path
    log_dir: Path
    lease_seconds: int

    def __init__(self) -> None:
        self._kwoks: dict[str, Proc] = {}  # by node name (single) or group name (bulk)
        self._group_of: dict[str, str] = {}  # bulk node -> group
        self._ip_counter = 0
        self._bulk_counter = 0

    def _next_ip(self) -> str:
        self._ip_counter += 1
        i = self._ip_counter
        return f"10.250.{i // 250}.{i % 250 + 1}"

    def _node_body(
        self,
        name: str,
        labels: Mapping[str, str] | None,
        taints: Sequence[Mapping[str, Any]] | None,
        annotations: Mapping[str, str] | None,
        control_plane: bool,
    ) -> JSON:
        all_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **({CONTROL_PLANE_LABEL: ""} if control_plane else {}),
            **(labels or {}),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": all_labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", **(annotations or {})},
            },
            "spec": {"taints": [dict(t) for t in taints or []]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": self._next_ip()},
                    {"type": "Hostname", "address": name},
                ]
            },
        }

    def _kwok_proc(
        self, *, node: str | None = None, group: str | None = None, lease_seconds: int | None = None
    ) -> Proc:
        key = node or group or ""
        argv = kwok.argv(
            self.bin_dir / "kwok", self.kubeconfig, self.kwok_config,
            lease_seconds=lease_seconds or self.lease_seconds, node=node, group=group,
        )  # fmt: skip
        return Proc(f"kwok-{key}", argv, self.log_dir / f"kwok-{key}.log")

    # ------------------------------------------------------------------- nodes

    def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, Any]] | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        control_plane: bool = False,
        wait_ready: bool = True,
        timeout: float = 30.0,
    ) -> JSON:
        """Create Node ``name`` and start its kwok; by default wait until Ready=True.

        ``control_plane`` adds the ``node-role.kubernetes.io/control-plane: ""`` label
        (no taint: pass ``taints`` for that). Returns the Node as last read.
        """
        body = self._node_body(name, labels, taints, annotations, control_plane)
        self.api.create("/api/v1/nodes", body)
        proc = self._kwok_proc(node=name)
        self._kwoks[name] = proc
        proc.start()
        if wait_ready:
            return self.wait_ready(name, "True", timeout)
        return self.node(name)

    def add_nodes_bulk(
        self,
        names: Iterable[str],
        labels: Mapping[str, str] | None = None,
        *,
        group: str | None = None,
        lease_seconds: int | None = None,
        wait_ready: bool = True,
        timeout: float = 300.0,
    ) -> str:
        """Create many nodes managed by ONE kwok; returns the group name (crash/restore key).

        Each node's Lease is renewed every ``lease_seconds / 4`` (default: the control
        plane's ``lease_duration_seconds``); for thousands of nodes pick a longer lease,
        and a ``node_monitor_grace_period`` well above ``lease_seconds / 4``.
        """
        names = list(names)
        self._bulk_counter += 1
        group = group or f"bulk-{self._bulk_counter}"
        if group in self._kwoks:
            raise ValueError(f"kwok group {group!r} exists")
        group_labels = {**(labels or {}), kwok.GROUP_LABEL: group}
        bodies = [self._node_body(n, group_labels, None, None, False) for n in names]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda b: self.api.create("/api/v1/nodes", b), bodies))
        self.api.close_all()
        for n in names:
            self._group_of[n] = group
        proc = self._kwok_proc(group=group, lease_seconds=lease_seconds)
        self._kwoks[group] = proc
        proc.start()
        if wait_ready:
            self._wait_group_ready(group, proc, timeout)
        return group

    def _wait_group_ready(self, group: str, proc: Proc, timeout: float) -> None:
        selector = {"labelSelector": f"{kwok.GROUP_LABEL}={group}"}
        expected = sum(1 for g in self._group_of.values() if g == group)

        def all_ready() -> bool:
            items = self.api.get("/api/v1/nodes", query=selector)["items"]
            ready = [n for n in items if (ready_condition(n) or {}).get("status") == "True"]
            return len(ready) >= expected

        wait_until(all_ready, timeout, f"{expected} nodes of {group} Ready", interval=1.0, alive=[proc])

    def remove_node(self, name: str) -> None:
        """Force-delete the node's pods, delete the Node, stop its kwok (if its own)."""
        pods = self.api.get("/api/v1/pods", query={"fieldSelector": f"spec.nodeName={name}"})
        for pod in pods["items"]:
            meta = pod["metadata"]
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", 0)
        self.api.delete(f"/api/v1/nodes/{name}")
        proc = self._kwoks.pop(name, None)
        if proc is not None:
            proc.stop(grace=3.0)
        self._group_of.pop(name, None)

    def remove_group(self, group: str) -> None:
        """Delete every node of a bulk group and stop its kwok."""
        self.api.call("DELETE", "/api/v1/nodes",
                      query={"labelSelector": f"{kwok.GROUP_LABEL}={group}"})  # fmt: skip
        proc = self._kwoks.pop(group, None)
        if proc is not None:
            proc.stop(grace=3.0)
        self._group_of = {n: g for n, g in self._group_of.items() if g != group}

    def _kwok_of(self, name: str) -> Proc:
        if name in self._kwoks:
            return self._kwoks[name]
        if name in self._group_of:
            raise ValueError(f"{name} is in bulk group {self._group_of[name]!r}: use the group")
        raise KeyError(f"no kwok for {name!r}")

    # ------------------------------------------------------------------ faults

    def crash(self, name: str) -> None:
        """SIGKILL the kwok of node (or bulk group) ``name``: a power cut."""
        self._kwok_of(name).kill()

    def restore(self, name: str, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Start the kwok of ``name`` again (clearing any set_ready override)."""
        proc = self._kwok_of(name)
        if name in self._group_of.values():  # a bulk group
            selector = {"labelSelector": f"{kwok.GROUP_LABEL}={name}"}
            for node in self.api.get("/api/v1/nodes", query=selector)["items"]:
                if kwok.READY_OVERRIDE in (node["metadata"].get("annotations") or {}):
                    self._clear_override(node["metadata"]["name"])
            proc.start()
            if wait_ready:
                self._wait_group_ready(name, proc, timeout)
            return
        self._clear_override(name)
        proc.start()
        if wait_ready:
            self.wait_ready(name, "True", timeout)

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

    # ------------------------------------------------------------------- reads

    def node(self, name: str) -> JSON:
        return self.api.get(f"/api/v1/nodes/{name}")

    def ready_status(self, name: str) -> str | None:
        """ "True", "False", "Unknown", or None (no Ready condition yet)."""
        cond = ready_condition(self.node(name))
        return None if cond is None else str(cond.get("status"))

    def wait_ready(self, name: str, status: str = "True", timeout: float = 30.0) -> JSON:
        """Wait until node ``name`` has Ready=``status``; returns the node."""
        seen: list[JSON] = []

        def check() -> bool:
            node = self.node(name)
            seen[:] = [node]
            return (ready_condition(node) or {}).get("status") == status

        alive = [p for k, p in self._kwoks.items() if k == name and p.running()]
        wait_until(check, timeout, f"node {name} Ready={status}", interval=0.2, alive=alive)
        return seen[0]
