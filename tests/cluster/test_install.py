"""k8s/ on the real apiserver: server-side apply, Pod Security `restricted`, and RBAC that
is enough for a full kickout/kickin/balancer cycle and no more (k8s/ with the balancer
and fencing components, as an operator's overlay adds them)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from asklepios_lab import ApiError, ControlPlane, Kube, wait_for, workloads
from tests.cluster.checks import first_seen, has_oos
from tests.cluster.conftest import ASKLEPIOS_TOKEN
from tests.cluster.runner import AsklepiosFactory, wait_value
from tests.cluster.test_balancer import balancer_env, one_per_node, pdb

REPO = Path(__file__).resolve().parents[2]


def rendered() -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s")], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def apply_k8s(kube: Kube, *components: str) -> str:
    """k8s/ (or k8s/ plus components of k8s/components, through a temporary overlay), applied."""
    if not components:
        return kube.kubectl("apply", "--server-side", "--field-manager=asklepios-test", "-k", str(REPO / "k8s"))
    with tempfile.TemporaryDirectory() as overlay:
        (Path(overlay) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(REPO / "k8s", overlay)],  # kustomize takes relative paths only
                    "components": [os.path.relpath(REPO / "k8s" / "components" / c, overlay) for c in components],
                }
            )
        )
        return kube.kubectl("apply", "--server-side", "--field-manager=asklepios-test", "-k", overlay)


@pytest.mark.timeout(120)
def test_k8s_applies_server_side_and_passes_restricted_admission(
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    cp = control_plane
    out = apply_k8s(kube)
    for kind_name in (
        "serviceaccount/asklepios",
        "clusterrole.rbac.authorization.k8s.io/asklepios",
        "deployment.apps/asklepios",
        "poddisruptionbudget.policy/asklepios",
    ):
        assert kind_name in out, out
    deployment = cp.api.get("/apis/apps/v1/namespaces/kube-system/deployments/asklepios")
    assert deployment["spec"]["replicas"] == 2
    try:
        cp.api.patch(
            f"/api/v1/namespaces/{namespace}",
            {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        )
        template = next(d for d in rendered() if d["kind"] == "Deployment")["spec"]["template"]
        spec = {**template["spec"], "serviceAccountName": "default"}  # the SA lives in kube-system
        pod = {
            "metadata": {"name": "asklepios-restricted", "labels": template["metadata"]["labels"]},
            "spec": spec,
        }
        cp.api.create(f"/api/v1/namespaces/{namespace}/pods", pod)  # admitted
        weaker = {
            **spec,
            "securityContext": {},
            "containers": [{**spec["containers"][0], "securityContext": {}}],
        }
        with pytest.raises(ApiError, match="violates PodSecurity"):  # the control: enforcement is on
            cp.api.create(f"/api/v1/namespaces/{namespace}/pods", {"metadata": {"name": "weaker"}, "spec": weaker})
    finally:  # keep RBAC for the next test; the Deployment's fake pods would only add noise
        kube.kubectl("delete", "-n", "kube-system", "deployment/asklepios", "pdb/asklepios", "--wait=false")


@pytest.mark.both_releases
@pytest.mark.timeout(300)
def test_rbac_is_enough_for_a_full_cycle_and_no_more(
    control_plane: ControlPlane,
    kube: Kube,
    nodes: Any,
    namespace: str,
    asklepios: AsklepiosFactory,
    asklepios_kubeconfig: Path,
) -> None:
    cp = control_plane
    apply_k8s(kube, "balancer", "fencing")
    kube.kubectl("delete", "-n", "kube-system", "deployment/asklepios", "--ignore-not-found", "--wait=false")
    names = nodes.watched("control1", "control2", "control3", control_plane=True)
    for sts in ("mariadb-server", "rabbitmq-rabbitmq"):
        workloads.create(cp, namespace, workloads.statefulset(sts, sts.split("-")[0]))
        workloads.create(cp, namespace, pdb(sts, minAvailable=2))
        workloads.wait_all_running(cp, namespace, sts, 3)
    env = balancer_env(nodes.prefix, namespace, ASKLEPIOS_LEADER_ELECTION="true", ASKLEPIOS_NAMESPACE="kube-system")
    healer = asklepios(env, kubeconfig=asklepios_kubeconfig)  # authenticated as the ServiceAccount
    wait_for(lambda: healer.metric("asklepios_is_leader") == 1, 30, what="leader with the Role of k8s/")
    victim = names[1]
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 30, "kickout")
    for sts in ("mariadb-server", "rabbitmq-rabbitmq"):
        workloads.wait_all_running(cp, namespace, sts, 3, timeout=90)
    cp.restore(victim)
    first_seen(cp, victim, lambda n: not has_oos(n), 30, "kickin")
    for sts in ("mariadb-server", "rabbitmq-rabbitmq"):
        wait_value(lambda s=sts: one_per_node(cp, namespace, s, names), 90, f"{sts} one per node")  # type: ignore[misc]
    # a move counts once its replacement runs where it should (checked by the next round)
    wait_value(lambda: healer.metric("asklepios_rebalanced_pods_total") == 2, 10, "both moves confirmed")
    assert healer.metric("asklepios_kickouts_total") == 1
    assert not healer.find(lambda r: "403" in str(r.get("error", "")) or "forbidden" in str(r).lower())

    sa = cp.client(ASKLEPIOS_TOKEN.token)
    try:
        fencing_secret = {"metadata": {"name": "asklepios-bmc"}, "stringData": {"username": "u", "password": "p"}}
        for name in ("asklepios-bmc", "another-secret"):
            cp.api.create("/api/v1/namespaces/kube-system/secrets", {**fencing_secret, "metadata": {"name": name}})
        assert sa.request("GET", "/api/v1/namespaces/kube-system/secrets/asklepios-bmc")[0] == 200  # fencing
        records = "/api/v1/namespaces/kube-system/configmaps"
        # Asklepios' records: its own ConfigMap by name (get/list/watch by name), create.
        assert sa.request("GET", f"{records}/asklepios-records")[0] == 200  # written during the cycle
        by_name = {"fieldSelector": "metadata.name=asklepios-records"}
        assert sa.request("GET", records, query=by_name)[0] == 200
        patch: dict[str, dict[str, str]] = {"data": {}}
        merge = "application/merge-patch+json"
        assert sa.request("PATCH", f"{records}/asklepios-records", patch, content_type=merge)[0] == 200
        refused = {
            "delete its records": sa.request("DELETE", f"{records}/asklepios-records")[0],
            "delete a node": sa.request("DELETE", f"/api/v1/nodes/{victim}")[0],
            "list secrets": sa.request("GET", "/api/v1/namespaces/kube-system/secrets")[0],
            "read another secret": sa.request("GET", "/api/v1/namespaces/kube-system/secrets/another-secret")[0],
            "create a pod": sa.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/pods",
                {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            )[0],
            "update another lease": sa.request(
                "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler", {}
            )[0],
            "read another configmap": sa.request("GET", f"{records}/kube-root-ca.crt")[0],
            "list configmaps": sa.request("GET", records)[0],
            "patch another configmap": sa.request(
                "PATCH",
                f"{records}/kube-root-ca.crt",
                {"metadata": {"labels": {"x": "y"}}},
                content_type="application/merge-patch+json",
            )[0],
        }
        assert refused == dict.fromkeys(refused, 403), refused
    finally:
        sa.close_all()
        for name in ("asklepios-bmc", "another-secret"):
            cp.api.delete(f"/api/v1/namespaces/kube-system/secrets/{name}")
