"""A real Kubernetes control plane on 127.0.0.1, for tests that need the real controllers.

Asklepios exists because of what upstream controllers do (and do not do) when a node
dies: node-lifecycle marks it Unknown, taint-eviction deletes its pods, and those pods
stay Terminating until the node is tainted out-of-service and the pod garbage collector
force-deletes them. Only the real kube-controller-manager reproduces that faithfully, so
the lab runs the real components: etcd, kube-apiserver (Node and RBAC authorization,
NodeRestriction, static tokens, Pod Security), kube-controller-manager, kube-scheduler,
and kwok processes as fake kubelets (see :mod:`asklepios_lab.nodes`) with their
InternalIPs in a 127.X.0.0/16 of their own and a stand-in on each one's kubelet port,
and on demand a Redfish BMC for them (:meth:`ControlPlane.bmc`). Every process logs to ``<workdir>/logs/<name>.log``.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import ssl
import tempfile
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from . import audit, binaries, kwok, pki
from .api import Api, write_kubeconfig
from .bmc import Bmc
from .etcd import Etcd
from .faults import FaultOps
from .loopback import LoopbackNet
from .procs import Proc, free_port, stop_many, wait_until
from .volumes import Volumes

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ADMIN_USER = "admin"

CONTROLLERS = (
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "statefulset-controller",
    "replicaset-controller",
    "deployment-controller",
    "daemonset-controller",
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "disruption-controller",
    "persistentvolume-binder-controller",  # static PVs bound to claims (lab.volumes)
    "persistentvolume-attach-detach-controller",  # VolumeAttachments (lab.volumes)
)


def controllers_of(release: str) -> tuple[str, ...]:
    """The lab's controllers for a release: before 1.29 node-lifecycle did the taint eviction itself."""
    minor = int(release.lstrip("v").split(".")[1])
    return tuple(c for c in CONTROLLERS if minor >= 29 or c != "taint-eviction-controller")


class StaticToken(NamedTuple):
    """A line of the apiserver's ``--token-auth-file``."""

    token: str
    user: str
    uid: str
    groups: Sequence[str] = ()


class ControlPlane(FaultOps):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler (+ kwok nodes).

    Use as a context manager (or ``start()``/``stop()``). ``workdir=None`` uses a fresh
    temporary directory, removed by ``stop()``; a given workdir is kept (logs, certs).
    ``anchor_node`` adds one always-Ready node, tainted NoSchedule, so the cluster never
    has zero Ready nodes: with none, node-lifecycle enters "full disruption" mode and
    stops tainting dead nodes, which is not the behaviour the tests want to observe.
    Node InternalIPs come from a 127.X.0.0/16 claimed by ``start()`` for this instance
    alone (:mod:`asklepios_lab.loopback`); ``kubelet_port`` is where each answers.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        extra_tokens: Sequence[StaticToken | tuple[str, str, str, Sequence[str]]] = (),
        node_monitor_grace_period: float = 5.0,
        node_monitor_period: float = 1.0,
        lease_duration_seconds: int = 4,
        anchor_node: bool = True,
        watch_cache: bool = True,
        etcd_compaction_interval: str = "5m",
        apiserver_args: Sequence[str] = (),
        audit_users: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        scheduler_args: Sequence[str] = (),
        start_timeout: float = 90.0,
        kubelet_port: int = 10250,
    ) -> None:
        super().__init__()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="asklepios-lab-")).resolve()
        self.bin_dir = bin_dir or binaries.bin_dir()
        self.release = binaries.release_of(self.bin_dir)  # e.g. "v1.28.15": what the binaries report
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.audit_log: Path | None = None
        if audit_users:
            self.audit_log, audit_flags = audit.apiserver_args(self.workdir, audit_users)
            apiserver_args = [*apiserver_args, *audit_flags]
        self.admin_token = secrets.token_hex(16)
        self.tokens = [StaticToken(self.admin_token, ADMIN_USER, "admin", ["system:masters"])]
        self.tokens += [StaticToken(*t) for t in extra_tokens]
        self.grace_period = node_monitor_grace_period
        self.lease_seconds = lease_duration_seconds
        self.start_timeout = start_timeout
        self.anchor_node = anchor_node
        self.kubelet_port = kubelet_port
        self.log_dir = self.workdir / "logs"
        self.pki = pki.Pki.at(self.workdir / "pki")
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kwok_config = self.workdir / "kwok.yaml"
        ports = {k: free_port() for k in ("apiserver", "kcm", "scheduler")}
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        self._ports = ports
        self.api = Api(self.server, self.admin_token, self.pki.ca_cert)
        b = self.bin_dir
        self.etcd = Etcd(b / "etcd", self.workdir / "etcd-data", self.log_dir)
        self._etcd = self.etcd.proc
        auth = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        self._apiserver = self._proc("kube-apiserver", [
            str(b / "kube-apiserver"), f"--etcd-servers={self.etcd.url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--requestheader-client-ca-file={self.pki.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # added to the release's defaults
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--etcd-compaction-interval={etcd_compaction_interval}",
            f"--watch-cache={str(watch_cache).lower()}",
            "--profiling=false", *apiserver_args,
        ])  # fmt: skip
        self._kcm = self._proc("kube-controller-manager", [
            str(b / "kube-controller-manager"), *auth, f"--secure-port={ports['kcm']}",
            f"--controllers={','.join(controllers_of(self.release))}",
            f"--node-monitor-grace-period={node_monitor_grace_period}s",
            f"--node-monitor-period={node_monitor_period}s",
            "--node-startup-grace-period=30s",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=false",
            "--kube-api-qps=200", "--kube-api-burst=400", *controller_manager_args,
        ])  # fmt: skip
        self._scheduler = self._proc("kube-scheduler", [
            str(b / "kube-scheduler"), *auth, f"--secure-port={ports['scheduler']}",
            *scheduler_args,
        ])  # fmt: skip

    def _proc(self, name: str, argv: list[str]) -> Proc:
        return Proc(name, argv, self.log_dir / f"{name}.log")

    @property
    def control_procs(self) -> list[Proc]:
        return [self._etcd, self._apiserver, self._kcm, self._scheduler]

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Start everything; returns once all components report healthy (or raises)."""
        try:
            if self._net is None:
                self._net = LoopbackNet.claim()
            self._prepare()
            self._etcd.start()
            wait_until(self.etcd.healthy, 30, "etcd /health", alive=[self._etcd])
            self.start_apiserver()
            self._start_controllers()
            if self.anchor_node:
                self.add_node(
                    "lab-anchor",
                    labels={"lab.asklepios.dev/anchor": "true"},
                    taints=[{"key": "lab.asklepios.dev/anchor", "effect": "NoSchedule"}],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _start_controllers(self) -> None:
        self._kcm.start()
        self._scheduler.start()
        for proc, port in ((self._kcm, "kcm"), (self._scheduler, "scheduler")):
            url = f"https://127.0.0.1:{self._ports[port]}/healthz"
            wait_until(partial(_https_ok, url), self.start_timeout, f"{proc.name} {url}",
                       alive=[proc])  # fmt: skip

    def restart_controllers(self) -> None:
        """Restart kube-controller-manager and kube-scheduler (fresh informers).

        After an apiserver outage their informers back off for up to 30 s and 1.37's
        controllers refuse to act on a cache older than their own last write, so a
        test that stopped the apiserver calls this to hand the next test a settled lab.
        """
        stop_many([self._scheduler, self._kcm])
        self._start_controllers()

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.pki.ca_cert.exists():
            pki.generate(self.pki, SERVICE_IP)
        lines = [f'{t.token},{t.user},{t.uid},"{",".join(t.groups)}"' for t in self.tokens]
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")
        write_kubeconfig(self.kubeconfig, self.server, self.pki.ca_cert, self.admin_token, "admin")
        kwok.write_config(self.kwok_config)

    def stop(self) -> None:
        """Kill every process (BMC, skewed kubelets and kwoks first), close the kubelet ports,
        release the loopback /16, remove an own temporary workdir."""
        if self._bmc is not None:
            self._bmc.close()
            self._bmc = None
        for node in {*self._skewed, *self._resyncs}:
            self._stop_node_threads(node)
        for node in list(self._node_apis):
            self._close_node_api(node)
        if self._volumes is not None:
            self._volumes.close()
            self._volumes = None
        stop_many([*self._kwoks.values(), *reversed(self.control_procs)])
        self._kwoks.clear()
        if self._listeners is not None:
            self._listeners.close()
            self._listeners = None
        self._listen_on.clear()
        if self._net is not None:
            self._net.release()
            self._net = None
        self.api.close_all()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def bmc(self) -> Bmc:
        """The Redfish BMC of this control plane's nodes, started on first use (see :mod:`.bmc`).

        ``bmc().attach(node)`` gives ``node`` a system; powering it Off crashes the node
        (kwok killed, port silent), On restores it (without waiting for Ready).
        """
        if self._bmc is None:
            bmc = Bmc(self.workdir / "bmc", self.pki, self.log_dir, power_off=self.crash, power_on=self._power_on,
                      report_uuid=self.report_system_uuid)  # fmt: skip
            try:
                bmc.start()
            except BaseException:
                bmc.close()
                raise
            self._bmc = bmc
        return self._bmc

    def volumes(self) -> Volumes:
        """The lab's volume chain (CSI attacher, plugin, kubelet stand-in), started on first use.

        See :mod:`.volumes`: ``volumes().add_node(n)`` lets node ``n`` attach volumes,
        ``volumes().provide(ns, sts, replicas)`` makes the PVs of a StatefulSet built with
        ``workloads.statefulset(..., volume=True)``.
        """
        if self._volumes is None:
            vols = Volumes(self.api, self.bin_dir, self.kubeconfig, self.workdir / "csi", self.log_dir,
                           self.kubelet_running)  # fmt: skip
            try:
                vols.start()
            except BaseException:
                vols.close()
                raise
            self._volumes = vols
        return self._volumes

    def _power_on(self, node: str) -> None:
        self.restore(node, wait_ready=False)

    def pids(self) -> dict[str, int]:
        """PIDs of the running processes, by name (kwoks as ``kwok-<node or group>``)."""
        return {
            p.name: p.pid for p in [*self.control_procs, *self._kwoks.values()] if p.pid is not None and p.running()
        }

    # ------------------------------------------------------------------ apiserver

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver on the same port and etcd; waits for ``/readyz``."""
        self._apiserver.start()
        wait_until(self._apiserver_ready, self.start_timeout, "kube-apiserver /readyz",
                   interval=0.25, alive=[self._apiserver])  # fmt: skip

    def stop_apiserver(self, grace: float = 3.0) -> None:
        """Stop kube-apiserver; everything else keeps running.

        SIGTERM, then SIGKILL after ``grace`` seconds: the apiserver stops listening at
        once on SIGTERM but then lingers (30 s+) draining its connections.
        """
        self._apiserver.stop(grace=grace)
        self.api.close_all()

    def _apiserver_ready(self) -> bool:
        try:
            status, body = self.api.request("GET", "/readyz", timeout=5)
        except OSError:
            return False
        return status == 200 and body.strip() == b"ok"

    def audit(self, user: str | None = None) -> list[dict[str, Any]]:
        """The apiserver's audit events so far (of `user`, if given); needs `audit_users`."""
        if self.audit_log is None:
            raise RuntimeError("this control plane was started without audit_users")
        return audit.entries(self.audit_log, user)

    def apiserver_metrics(self) -> str:
        """The apiserver's Prometheus ``/metrics`` text (read with the admin token)."""
        status, body = self.api.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics -> {status}")
        return body.decode()

    # ----------------------------------------------------------------------- etcd

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (physically); returns that revision.

        A watch from resourceVersion ``rv`` starts at ``rv + 1``, so once that is below
        the returned revision, a watch or list from ``rv`` that reaches etcd fails with
        410 Gone. (Watches served by the apiserver's watch cache only fail once
        the version has also left the cache's window; see ``watch_cache``.)
        """
        return self.etcd.compact()

    # ------------------------------------------------------------------- identities

    def token_for(self, user: str) -> str:
        """The static token of ``user`` (as given in ``extra_tokens``)."""
        for t in self.tokens:
            if t.user == user:
                return t.token
        raise KeyError(user)

    def kubeconfig_for(self, token: str, name: str | None = None) -> Path:
        """Write (once) and return a kubeconfig that authenticates with ``token``."""
        name = name or "token-" + hashlib.sha256(token.encode()).hexdigest()[:10]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{safe}.kubeconfig",
            self.server, self.pki.ca_cert, token, safe,
        )  # fmt: skip

    def client(self, token: str) -> Api:
        """A REST client authenticating with ``token``."""
        return Api(self.server, token, self.pki.ca_cert)


def _https_ok(url: str) -> bool:
    """GET ``url`` without verifying the self-signed cert of kcm/scheduler; True on 200."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False
