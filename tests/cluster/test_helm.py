"""charts/asklepios installed with `helm install` into the lab, healing a crash, then uninstalled.

The lab's kwok nodes fake their pods, so the chart's Deployment cannot run the image
there. As tests/cluster/test_install.py does for k8s/, the chart's objects are created
for real (here by `helm install`: the ServiceAccount, RBAC, ConfigMap, Deployment, ...),
and Asklepios runs as processes with what a replica gets: a token of the chart's
ServiceAccount (TokenRequest, as the kubelet asks for one) and the chart's settings from
its ConfigMap, POD_NAMESPACE the release's namespace. Two replicas, leader election on:
one holds the Lease. A crashed node is kicked out and, once back, kicked in, as the
apiserver's Node objects show. `asklepios check` (what `helm test` runs) passes with
that identity. `helm uninstall` removes every object of the release; what Asklepios
created itself (the Lease `asklepios`, its records) stays, as docs/helm.md says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from asklepios_lab import ControlPlane, wait_for
from tests.cluster.checks import SEL, first_seen, has_oos
from tests.cluster.conftest import NodeFactory
from tests.cluster.runner import AsklepiosFactory
from tests.unit.test_chart import helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "asklepios"
RELEASE = "asklepios-helm"  # contains the chart's name: the objects are named after it
# What Asklepios creates at run time in its namespace; `helm uninstall` leaves it (docs/helm.md).
LEFT_BEHIND = {("leases", "asklepios"), ("configmaps", "asklepios-records")}
PATHS = {  # kind -> (API prefix, plural)
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles"),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}


def run_helm(cp: ControlPlane, *args: str) -> str:
    done = subprocess.run(
        [helm(), "--kubeconfig", str(cp.kubeconfig), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def path_of(manifest: dict[str, Any]) -> str:
    prefix, plural = PATHS[manifest["kind"]]
    namespace = manifest["metadata"].get("namespace")
    where = f"{prefix}/namespaces/{namespace}" if namespace else prefix
    return f"{where}/{plural}/{manifest['metadata']['name']}"


@pytest.mark.timeout(300)
def test_helm_install_heals_a_crash_and_uninstall_leaves_only_runtime_objects(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str, asklepios: AsklepiosFactory, tmp_path: Path
) -> None:
    cp, api = control_plane, control_plane.api
    names = nodes.watched("control1", "control2", "control3", control_plane=True)
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "replicaCount": 2,
                "settings": {
                    "leaderElection": True,
                    "nodeSelector": f"{SEL}={nodes.prefix}",
                    "kickoutSeconds": 5,
                    "kickinSeconds": 5,
                    "resyncSeconds": 2,
                },
            }
        )
    )
    run_helm(cp, "install", RELEASE, str(CHART), "--namespace", namespace, "-f", str(values))
    manifests = [m for m in yaml.safe_load_all(run_helm(cp, "get", "manifest", RELEASE, "-n", namespace)) if m]
    for m in manifests:
        assert api.get(path_of(m))["metadata"]["name"] == m["metadata"]["name"]  # created, as rendered
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}"
    wait_for(lambda: api.get(deployments).get("status", {}).get("availableReplicas") == 2, 60, what="2 replicas")

    token = api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{RELEASE}/token", {"spec": {"expirationSeconds": 3600}}
    )["status"]["token"]
    kubeconfig = cp.kubeconfig_for(token, f"helm-{namespace}")
    settings = api.get(f"/api/v1/namespaces/{namespace}/configmaps/{RELEASE}-settings")["data"]
    assert settings["ASKLEPIOS_LEADER_ELECTION"] == "true"
    # envFrom the ConfigMap and POD_NAMESPACE from the Downward API, as in the pod template;
    # each process its own HTTP port, as each pod has its own IP.
    env = {k: v for k, v in settings.items() if k != "ASKLEPIOS_HTTP_PORT"} | {"POD_NAMESPACE": namespace}
    replicas = [asklepios(env, kubeconfig=kubeconfig) for _ in range(2)]
    wait_for(lambda: sorted(r.metric("asklepios_is_leader") for r in replicas) == [0, 1], 30, what="one leader of two")
    lease = api.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/asklepios")
    assert lease["spec"]["holderIdentity"]

    victim = names[1]
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 60, "kickout")
    cp.restore(victim)
    first_seen(cp, victim, lambda n: not has_oos(n), 60, "kickin")
    for replica in replicas:
        assert not replica.find(lambda r: "403" in str(r.get("error", "")) or "forbidden" in str(r).lower())

    # What `helm test` runs in its pod: `asklepios check`, with the same identity and settings.
    check = subprocess.run(
        [sys.executable, "-m", "asklepios", "check"],
        env={k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")}
        | env
        | {"KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    [hook] = [m for m in yaml.safe_load_all(run_helm(cp, "get", "hooks", RELEASE, "-n", namespace)) if m]
    assert hook["spec"]["containers"][0]["args"] == ["check"]

    for replica in replicas:
        assert replica.stop() == 0
    run_helm(cp, "uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "60s")
    for path in map(path_of, manifests):
        wait_for(lambda path=path: api.get_or_none(path) is None, 30, what=f"{path} gone")  # type: ignore[misc]
    assert not api.get(f"/api/v1/namespaces/{namespace}/secrets")["items"]  # nor Helm's release record
    left = {
        (plural, item["metadata"]["name"])
        for prefix, plural in (("/api/v1", "configmaps"), ("/apis/coordination.k8s.io/v1", "leases"))
        for item in api.get(f"{prefix}/namespaces/{namespace}/{plural}")["items"]
        if item["metadata"]["name"] != "kube-root-ca.crt"
    }
    assert ("leases", "asklepios") in left
    assert left <= LEFT_BEHIND, left
