"""The bench's cluster: a lab control plane sized for the scenario, Asklepios' identity.

:func:`lab` starts a :class:`asklepios_lab.ControlPlane` in a fresh work directory
with a static token for Asklepios (user ``system:serviceaccount:kube-system:asklepios``,
authorised by the real least-privilege RBAC of ``k8s/base/rbac.yaml``) and,
optionally, an audit log that records only that user's requests (Metadata level),
so the apiserver itself counts what Asklepios asks of it.

Thousands of nodes are bulk kwok nodes (one kwok process for all of them) with a
long node Lease (renewed every ``lease_seconds / 4``) and a node-monitor grace
period above that renewal interval, which is what keeps a 2-core machine able to
hold 5000 of them. One of them dies for real with ``lab.cp.crash(name)`` (out of its
kwok's selector, Lease deleted, kubelet port silent) and comes back with
``lab.cp.restore(name)``.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from asklepios_lab import ControlPlane, StaticToken, binaries
from bench import REPO_DIR

ASKLEPIOS_USER = "system:serviceaccount:kube-system:asklepios"
WATCHED_LABEL = "bench.asklepios.dev/watched"
BULK_LEASE_SECONDS = 240  # renewed every 60 s: 83 Lease writes/s at 5000 nodes
BULK_GRACE_SECONDS = 180.0

_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # ResponseStarted is kept so that a watch is seen when it opens, not only when it ends.
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "users": [ASKLEPIOS_USER]},
        {"level": "None"},
    ],
}
_RBAC_PATHS = {
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


class Lab:
    """A started control plane plus what the bench needs to run Asklepios against it."""

    def __init__(self, cp: ControlPlane, token: str, audit_log: Path | None) -> None:
        self.cp = cp
        self.workdir = cp.workdir
        self.audit_log = audit_log
        self.token = token
        self.kubeconfig = cp.kubeconfig_for(token, "asklepios")

    def apply_rbac(self) -> None:
        """Create the ClusterRoles/Roles and bindings of k8s/base/rbac.yaml, plus those of the
        balancer and fencing components (k8s/ grants them only with those settings on)."""
        files = ("base/rbac.yaml", "components/balancer/rbac-balancer.yaml", "components/fencing/rbac-fencing.yaml")
        for doc in (d for f in files for d in yaml.safe_load_all((REPO_DIR / "k8s" / f).read_text())):
            if not doc:
                continue
            namespace = doc["metadata"].get("namespace", "")
            self.cp.api.create(_RBAC_PATHS[doc["kind"]].format(ns=namespace), doc)

    def add_nodes(
        self, count: int, prefix: str = "bench", timeout: float = 900.0, *, listeners: bool = False
    ) -> list[str]:
        """``count`` Ready bulk nodes labelled as watched (one kwok); returns their names.

        ``listeners`` opens each node's kubelet port (one socket per node), so a live node
        answers Asklepios' probe as a real one does; a node powered off with
        ``cp.crash(name)`` then answers nothing (a connect times out).
        """
        names = [f"{prefix}-{i:05d}" for i in range(count)]
        self.cp.add_nodes_bulk(
            names,
            labels={WATCHED_LABEL: "true"},
            lease_seconds=BULK_LEASE_SECONDS,
            listeners=listeners,
            timeout=timeout,
        )
        return names

    def create_namespace(self, name: str) -> None:
        api = self.cp.api
        api.create("/api/v1/namespaces", {"metadata": {"name": name}})
        deadline = time.monotonic() + 60
        while api.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default") is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount in {name}")
            time.sleep(0.2)


@contextmanager
def lab(
    *,
    audit: bool = False,
    bulk: bool = True,
    keep: bool = False,
    version: str | None = None,
    **kwargs: Any,
) -> Iterator[Lab]:
    """A started lab in a fresh directory (removed afterwards unless ``keep``).

    ``version`` picks the Kubernetes release (None: the default one, see asklepios_lab.binaries).
    ``bulk`` sets the long node-monitor grace period that thousands of bulk nodes need;
    without it the lab's defaults apply (grace 5 s, Lease 4 s: fast crash detection).
    """
    workdir = Path(tempfile.mkdtemp(prefix="asklepios-bench-"))
    token = secrets.token_hex(16)
    identity = StaticToken(
        token,
        ASKLEPIOS_USER,
        "asklepios-bench",
        ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
    )
    apiserver_args: list[str] = list(kwargs.pop("apiserver_args", ()))
    audit_log = None
    if audit:
        policy = workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        audit_log = workdir / "logs" / "audit.jsonl"
        apiserver_args += [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",  # never rotate: one file to count
        ]
    if bulk:
        kwargs.setdefault("node_monitor_grace_period", BULK_GRACE_SECONDS)
    cp = ControlPlane(
        workdir,
        bin_dir=binaries.ensure(version),
        extra_tokens=[identity],
        apiserver_args=apiserver_args,
        start_timeout=180.0,
        **kwargs,
    )
    try:
        with cp:
            the_lab = Lab(cp, token, audit_log)
            the_lab.apply_rbac()
            yield the_lab
    finally:
        if keep:
            print(f"[bench] kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
