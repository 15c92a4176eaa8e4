"""Fake nodes: a kwok process as each node's kubelet, a loopback InternalIP, a kubelet port.

Each node added with :meth:`NodeOps.add_node` gets its own kwok process
(``--manage-single-node``), which plays that node's kubelet: it posts the Ready
condition once, renews the node Lease, runs and terminates pods. Its InternalIP is the
next address of the lab's own 127.X.0.0/16 (:mod:`asklepios_lab.loopback`; kwok's
node-initialize template keeps an InternalIP the Node already has), and
InternalIP:``kubelet_port`` accepts TCP connects while the node runs, refuses them while
its kubelet is stopped and answers nothing while it is powered off
(:mod:`asklepios_lab.listeners`). The faults are in :mod:`asklepios_lab.faults`;
:meth:`NodeOps.as_node` acts as a node's own identity (``system:node:<name>``).

Scale mode: :meth:`~NodeOps.add_nodes_bulk` puts many nodes under ONE kwok process
(``--manage-nodes-with-label-selector``), with kubelet-port listeners only on request;
faults given the group's name act on the whole group, and one node of it can be
powered off and on alone (see :meth:`~asklepios_lab.faults.FaultOps.crash`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import identities, kwok
from .api import JSON, Api
from .listeners import Address, Listeners, PortMode
from .loopback import LoopbackNet
from .procs import Proc, wait_until

if TYPE_CHECKING:
    from .bmc import Bmc
    from .leases import SkewedKubelet
    from .pki import Pki
    from .resync import PodResync
    from .volumes import Volumes

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
    kubelet_port: int
    pki: Pki
    server: str

    def __init__(self) -> None:
        self._kwoks: dict[str, Proc] = {}  # by node name (single) or group name (bulk)
        self._group_of: dict[str, str] = {}  # bulk node -> group
        self._cut: dict[str, PortMode] = {}  # bulk nodes out of their kwok's selector -> their port's mode
        self._ips: dict[str, str] = {}  # node -> InternalIP
        self._listen_on: dict[str, list[Address]] = {}  # node or group -> kubelet ports
        self._modes: dict[str, PortMode] = {}  # node or group with ports -> their mode (cut members aside)
        self._skewed: dict[str, SkewedKubelet] = {}  # node -> the lab's Lease renewer in its name
        self._resyncs: dict[str, PodResync] = {}  # node -> the start-up pod sync of its restarted kwok
        self._node_apis: dict[str, Api] = {}
        self._bulk_counter = 0
        self._net: LoopbackNet | None = None  # claimed by start()
        self._listeners: Listeners | None = None
        self._bmc: Bmc | None = None
        self._volumes: Volumes | None = None  # started by ControlPlane.volumes()
        self._lock = threading.RLock()  # faults may come from the BMC's notification thread

    @property
    def net(self) -> LoopbackNet:
        """The lab's own 127.X.0.0/16 (claimed while the control plane runs)."""
        if self._net is None:
            raise RuntimeError("the control plane is not started")
        return self._net

    @property
    def listeners(self) -> Listeners:
        if self._listeners is None:
            self._listeners = Listeners()
        return self._listeners

    def _node_body(
        self,
        name: str,
        ip: str,
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
                    {"type": "InternalIP", "address": ip},
                    {"type": "Hostname", "address": name},
                ]
            },
        }

    def _kwok_proc(
        self, node_ip: str, *, node: str | None = None, group: str | None = None, lease_seconds: int | None = None
    ) -> Proc:
        key = node or group or ""
        argv = kwok.argv(
            self.bin_dir / "kwok", self.kubeconfig, self.kwok_config,
            lease_seconds=lease_seconds or self.lease_seconds, node=node, group=group, node_ip=node_ip,
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
        """Create Node ``name``, open its kubelet port, start its kwok; by default wait until Ready=True.

        ``control_plane`` adds the ``node-role.kubernetes.io/control-plane: ""`` label
        (no taint: pass ``taints`` for that). Returns the Node as last read.
        """
        ip = self.net.next_address()
        body = self._node_body(name, ip, labels, taints, annotations, control_plane)
        self.api.create("/api/v1/nodes", body)
        self._ips[name] = ip
        self._listen_on[name] = [(ip, self.kubelet_port)]
        self._set_ports(name, "accept")
        proc = self._kwok_proc(ip, node=name)
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
        listeners: bool = False,
        wait_ready: bool = True,
        timeout: float = 300.0,
    ) -> str:
        """Create many nodes managed by ONE kwok; returns the group name (crash/restore key).

        Each node's Lease is renewed every ``lease_seconds / 4`` (default: the control
        plane's ``lease_duration_seconds``); for thousands of nodes pick a longer lease,
        and a ``node_monitor_grace_period`` well above ``lease_seconds / 4``.
        ``listeners`` opens every node's kubelet port (one socket per node).
        """
        names = list(names)
        self._bulk_counter += 1
        group = group or f"bulk-{self._bulk_counter}"
        if group in self._kwoks:
            raise ValueError(f"kwok group {group!r} exists")
        if not names:
            raise ValueError("no node names")
        group_labels = {**(labels or {}), kwok.GROUP_LABEL: group}
        ips = {n: self.net.next_address() for n in names}
        bodies = [self._node_body(n, ips[n], group_labels, None, None, False) for n in names]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda b: self.api.create("/api/v1/nodes", b), bodies))
        self.api.close_all()
        for n in names:
            self._group_of[n] = group
        self._ips.update(ips)
        if listeners:
            self._listen_on[group] = [(ip, self.kubelet_port) for ip in ips.values()]
            self._set_ports(group, "accept")
        proc = self._kwok_proc(ips[names[0]], group=group, lease_seconds=lease_seconds)
        self._kwoks[group] = proc
        proc.start()
        if wait_ready:
            self._wait_group_ready(group, proc, timeout)
        return group

    def _wait_group_ready(self, group: str, proc: Proc, timeout: float) -> None:
        """Wait until every node of ``group`` that is not powered off on its own is Ready."""
        selector = {"labelSelector": f"{kwok.GROUP_LABEL}={group}"}
        expected = sum(1 for n, g in self._group_of.items() if g == group and n not in self._cut)

        def all_ready() -> bool:
            items = self.api.get("/api/v1/nodes", query=selector)["items"]
            ready = [n for n in items if (ready_condition(n) or {}).get("status") == "True"]
            return len(ready) >= expected

        wait_until(all_ready, timeout, f"{expected} nodes of {group} Ready", interval=1.0, alive=[proc])

    def remove_node(self, name: str) -> None:
        """Force-delete the node's pods, delete the Node, stop its kwok (if its own) and listener."""
        if self._bmc is not None:
            self._bmc.detach(name)
        if self._volumes is not None:
            self._volumes.forget(name)
        pods = self.api.get("/api/v1/pods", query={"fieldSelector": f"spec.nodeName={name}"})
        for pod in pods["items"]:
            meta = pod["metadata"]
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", 0)
        self.api.delete(f"/api/v1/nodes/{name}")
        with self._lock:
            self._stop_node_threads(name)
            proc = self._kwoks.pop(name, None)
            if proc is not None:
                proc.stop(grace=3.0)
            self.listeners.set(self._listen_on.pop(name, []), "refuse")
            self._modes.pop(name, None)
            group = self._group_of.pop(name, None)
            if group is not None and name in self._ips and group in self._listen_on:
                address = (self._ips[name], self.kubelet_port)
                self.listeners.set([address], "refuse")
                self._listen_on[group] = [a for a in self._listen_on[group] if a != address]
            self._cut.pop(name, None)
        self._ips.pop(name, None)
        self._close_node_api(name)

    def remove_group(self, group: str) -> None:
        """Delete every node of a bulk group (those powered off on their own too) and stop its kwok."""
        for label in (kwok.GROUP_LABEL, kwok.POWERED_OFF_LABEL):
            self.api.call("DELETE", "/api/v1/nodes", query={"labelSelector": f"{label}={group}"})
        members = [n for n, g in self._group_of.items() if g == group]
        with self._lock:
            for n in members:
                self._stop_node_threads(n)
            proc = self._kwoks.pop(group, None)
            if proc is not None:
                proc.stop(grace=3.0)
            self.listeners.set(self._listen_on.pop(group, []), "refuse")
            self._modes.pop(group, None)
        for n in members:
            del self._group_of[n]
            self._ips.pop(n, None)
            self._cut.pop(n, None)
            self._close_node_api(n)

    def _kwok_of(self, name: str) -> Proc:
        if name in self._kwoks:
            return self._kwoks[name]
        if name in self._group_of:
            raise ValueError(f"{name} is in bulk group {self._group_of[name]!r}: use the group (or crash/restore)")
        raise KeyError(f"no kwok for {name!r}")

    def _set_ports(self, key: str, mode: PortMode) -> None:
        """Put the kubelet ports of node or group ``key`` in ``mode`` (a group's cut members keep theirs)."""
        with self._lock:
            if key not in self._listen_on:
                return
            cut = {(self._ips[n], self.kubelet_port) for n in self._cut if self._group_of.get(n) == key}
            self.listeners.set([a for a in self._listen_on[key] if a not in cut], mode)
            self._modes[key] = mode

    def _stop_node_threads(self, name: str) -> None:
        """Stop the lab's threads acting for node ``name``: a skewed kubelet, a pod resync."""
        renewer = self._skewed.pop(name, None)
        if renewer is not None:
            renewer.stop()
        resync = self._resyncs.pop(name, None)
        if resync is not None:
            resync.stop()

    def as_node(self, name: str) -> Api:
        """A REST client authenticated as node ``name``'s kubelet: user ``system:node:<name>``,
        group ``system:nodes`` (a client certificate of the lab CA), so the apiserver's Node
        authorizer and NodeRestriction admission judge it as they judge a real kubelet.
        Works for any name, node or not."""
        with self._lock:
            api = self._node_apis.get(name)
            if api is None:
                cert, key = identities.node_client_cert(self.pki, name)
                api = self._node_apis[name] = Api(self.server, None, self.pki.ca_cert, client_cert=(cert, key))
            return api

    def _close_node_api(self, name: str) -> None:
        api = self._node_apis.pop(name, None)
        if api is not None:
            api.close_all()

    def node_kubeconfig(self, name: str) -> Path:
        """A kubeconfig authenticating as node ``name`` (see :meth:`as_node`), for kubectl."""
        cert, key = identities.node_client_cert(self.pki, name)
        return identities.write_cert_kubeconfig(self.server, self.pki, name, cert, key)

    def kubelet_running(self, name: str) -> bool:
        """True while node ``name``'s kwok (its kubelet) runs for it: not crashed, partitioned or removed."""
        with self._lock:
            group = self._group_of.get(name)
            if group is not None:
                return name not in self._cut and group in self._kwoks and self._kwoks[group].running()
            proc = self._kwoks.get(name)
            return proc is not None and proc.running()

    def node_ip(self, name: str) -> str:
        """The InternalIP the lab gave node ``name`` (in its own 127.X.0.0/16)."""
        return self._ips[name]

    # ------------------------------------------------------------------- reads

    def node(self, name: str) -> JSON:
        return self.api.get(f"/api/v1/nodes/{name}")

    def report_system_uuid(self, name: str, uuid: str) -> None:
        """Node ``name`` reports ``uuid`` as its ``status.nodeInfo.systemUUID`` (the machine it runs on).

        kwok's node-initialize keeps a systemUUID the Node already has; one rendered
        from an older copy of the Node could still write "" back, so this re-reads and
        writes again until the value stays.
        """
        patch = {"status": {"nodeInfo": {"systemUUID": uuid}}}

        def reported() -> bool:
            if (self.node(name).get("status", {}).get("nodeInfo") or {}).get("systemUUID") == uuid:
                return True
            self.api.patch(f"/api/v1/nodes/{name}/status", patch)
            return False

        wait_until(reported, 10, f"node {name} reports systemUUID {uuid}", interval=0.2)

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

        alive = [p for k, p in self._kwoks.items() if k in (name, self._group_of.get(name)) and p.running()]
        wait_until(check, timeout, f"node {name} Ready={status}", interval=0.2, alive=alive)
        return seen[0]
