"""The deployment manifests (k8s/), the Containerfile and the lock files, checked without a cluster.

`kubectl kustomize` renders the base and every overlay; each object is validated
against the Kubernetes 1.37 OpenAPI schemas (strict: unknown fields fail), then
the parts that operators rely on are pinned: every setting of the contract with
its default, the Pod Security `restricted` fields, and RBAC verb by verb.
(k8s/ is rendered from the Helm chart: tests/unit/test_chart.py keeps them equal.)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.37"
NAMESPACE = "kube-system"
NAME = "asklepios"
SELECTOR = {"app.kubernetes.io/name": NAME}

Manifest = dict[str, Any]

# The environment variables of the operator-facing contract, with their defaults.
CONTRACT_DEFAULTS: dict[str, str] = {
    "ASKLEPIOS_KICKOUT_SECONDS": "60",
    "ASKLEPIOS_KICKIN_SECONDS": "60",
    "ASKLEPIOS_RESYNC_SECONDS": "10",
    "ASKLEPIOS_NODE_SELECTOR": "node-role.kubernetes.io/control-plane",
    "ASKLEPIOS_MAX_UNHEALTHY": "50%",
    "ASKLEPIOS_BALANCER": "false",
    "ASKLEPIOS_BALANCER_SELECTOR": "asklepios.io/balance=true",
    "ASKLEPIOS_BALANCER_NAMESPACES": "",
    "ASKLEPIOS_DRY_RUN": "false",
    "ASKLEPIOS_HTTP_PORT": "8080",
    "ASKLEPIOS_LEADER_ELECTION": "true",
    "ASKLEPIOS_NAMESPACE": "",  # default: POD_NAMESPACE, else kube-system
    "ASKLEPIOS_LOG_FORMAT": "json",
    "ASKLEPIOS_LOG_LEVEL": "info",
    "ASKLEPIOS_CONFIG_FILE": "",  # default: unset
    "ASKLEPIOS_LIVENESS_PROBE_PORTS": "10250",
    "ASKLEPIOS_FENCING": "off",
    "ASKLEPIOS_FENCING_SECRET": "asklepios-bmc",
    "ASKLEPIOS_FENCING_TIMEOUT_SECONDS": "60",
    "ASKLEPIOS_FENCING_POWER_ON": "true",
    "ASKLEPIOS_FENCING_INSECURE": "false",
    "ASKLEPIOS_KICKIN_POD_WAIT_SECONDS": "300",
    "ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR": "6",
    "ASKLEPIOS_FORCE_DELETE": "true",
    "ASKLEPIOS_FLAP_MAX_KICKOUTS": "3",
    "ASKLEPIOS_FLAP_WINDOW_SECONDS": "3600",
}
# Left out of the ConfigMap on purpose, and said so in a comment there:
# the namespace comes from POD_NAMESPACE, and no legacy config file is used.
NOT_IN_CONFIGMAP = {"ASKLEPIOS_NAMESPACE", "ASKLEPIOS_CONFIG_FILE"}
# Additions to the contract (documented in the README), shown with their defaults too.
ADDITIONS = {
    "ASKLEPIOS_LEASE_DURATION_SECONDS": "15",
    "ASKLEPIOS_LEASE_RENEW_SECONDS": "10",
    "ASKLEPIOS_LEASE_RETRY_SECONDS": "2",
    "ASKLEPIOS_WATCH_TIMEOUT_SECONDS": "290",
}
BASE_SETTINGS = {k: v for k, v in CONTRACT_DEFAULTS.items() if k not in NOT_IN_CONFIGMAP} | ADDITIONS
BURRITO_SETTINGS = BASE_SETTINGS | {
    "ASKLEPIOS_BALANCER": "true",
    "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
    "ASKLEPIOS_BALANCER_NAMESPACES": "openstack",
}
SETTINGS = {"k8s": BASE_SETTINGS, "k8s/overlays/burrito": BURRITO_SETTINGS}

# (apiGroup, resource, verb, resourceNames): exactly these, nothing more.
Rule = tuple[str, str, str, tuple[str, ...]]
# ClusterRole name -> its rules; the balancer's only where the balancer is on.
CLUSTER_ROLES: dict[str, set[Rule]] = {
    NAME: {
        *(("", "nodes", v, ()) for v in ("get", "list", "watch", "patch")),
        *(("", "pods", v, ()) for v in ("list", "watch", "delete")),
        ("", "events", "create", ()),
        *(("storage.k8s.io", "volumeattachments", v, ()) for v in ("list", "watch")),
        ("", "persistentvolumes", "list", ()),
    },
}
BALANCER_ROLE: dict[str, set[Rule]] = {
    f"{NAME}-balancer": {
        ("", "pods/eviction", "create", ()),
        ("apps", "statefulsets", "get", ()),
        ("policy", "poddisruptionbudgets", "list", ()),
    },
}
# (Role name, namespace) -> its rules
ROLES: dict[tuple[str, str], set[Rule]] = {
    ("asklepios-leader-election", NAMESPACE): {
        ("coordination.k8s.io", "leases", "create", ()),
        *(("coordination.k8s.io", "leases", v, ("asklepios",)) for v in ("get", "update")),
    },
    ("asklepios-records", NAMESPACE): {
        ("", "configmaps", "create", ()),
        *(("", "configmaps", v, ("asklepios-records",)) for v in ("get", "list", "watch", "patch")),
    },
    ("asklepios-node-leases", "kube-node-lease"): {
        *(("coordination.k8s.io", "leases", v, ()) for v in ("get", "list")),
    },
}
FENCING_ROLE: dict[tuple[str, str], set[Rule]] = {
    ("asklepios-fencing", NAMESPACE): {("", "secrets", "get", ("asklepios-bmc",))}
}
BALANCER_STATE_ROLE: dict[tuple[str, str], set[Rule]] = {
    ("asklepios-balancer", NAMESPACE): {("", "configmaps", v, ("asklepios-balancer",)) for v in ("get", "patch")}
}
EXPECTED_CLUSTER_ROLES = {"k8s": CLUSTER_ROLES, "k8s/overlays/burrito": CLUSTER_ROLES | BALANCER_ROLE}
EXPECTED_ROLES = {"k8s": ROLES, "k8s/overlays/burrito": ROLES | BALANCER_STATE_ROLE}
KINDS = Counter(
    {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Role": 3,
        "RoleBinding": 3,
        "ConfigMap": 1,
        "Deployment": 1,
        "PodDisruptionBudget": 1,
        "Service": 1,
    }
)
EXPECTED_KINDS = {
    "k8s": KINDS,
    "k8s/overlays/burrito": KINDS + Counter({"ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1}),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


def tool(name: str) -> str:
    """The venv's copy of a tool (installed with the test extras), else PATH's."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extras (pip install -e '.[test]')")
    return found


@functools.cache
def render(directory: str) -> tuple[Manifest, ...]:
    """`kubectl kustomize` of a directory of the repository (or an absolute one)."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc is not None)


def one(directory: str, kind: str) -> Manifest:
    [found] = [m for m in render(directory) if m["kind"] == kind]
    return found


def pod_spec(directory: str) -> Manifest:
    spec: Manifest = one(directory, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(directory: str) -> Manifest:
    [only] = pod_spec(directory)["containers"]
    assert only["name"] == NAME
    return only  # type: ignore[no-any-return]


def rules(role: Manifest) -> set[Rule]:
    flat: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        flat.update(
            (group, resource, verb, tuple(rule.get("resourceNames", ())))
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        )
    return flat


DIRECTORIES = pytest.mark.parametrize("directory", sorted(SETTINGS))


@DIRECTORIES
def test_renders_the_expected_objects(directory: str) -> None:
    manifests = render(directory)
    assert Counter(m["kind"] for m in manifests) == EXPECTED_KINDS[directory]
    for m in manifests:
        if m["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in m["metadata"]
        elif m["metadata"]["name"] == "asklepios-node-leases":  # node Leases live in kube-node-lease
            assert m["metadata"]["namespace"] == "kube-node-lease", m["metadata"]
        else:
            assert m["metadata"]["namespace"] == NAMESPACE, m["metadata"]
        assert m["metadata"]["labels"]["app.kubernetes.io/name"] == NAME


@DIRECTORIES
def test_validates_against_the_kubernetes_schemas_strictly(directory: str) -> None:
    for m in render(directory):
        kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_an_unknown_field() -> None:
    deployment = yaml.safe_load(yaml.safe_dump(one("k8s", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@DIRECTORIES
def test_every_setting_of_the_contract_with_its_value(directory: str) -> None:
    config_map = one(directory, "ConfigMap")
    assert config_map["metadata"]["name"].startswith(f"{NAME}-settings-")  # hashed: rolls
    assert config_map["data"] == SETTINGS[directory]
    c = container(directory)
    assert c["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    assert c["env"] == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]


def test_settings_left_out_are_explained() -> None:
    text = (K8S / "base" / "kustomization.yaml").read_text()
    for name in [*NOT_IN_CONFIGMAP, "KUBECONFIG"]:
        assert f"# {name} " in text, name


@DIRECTORIES
def test_deployment(directory: str) -> None:
    deployment = one(directory, "Deployment")
    assert deployment["metadata"]["name"] == NAME
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"] == {"matchLabels": SELECTOR}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == SELECTOR
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    spec = template["spec"]
    assert spec["serviceAccountName"] == NAME
    assert spec["automountServiceAccountToken"] is True
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["affinity"]["podAntiAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": SELECTOR}}
        ]
    }
    tolerations = {(t["key"], t["effect"]): t for t in spec["tolerations"]}
    assert set(tolerations) == {
        ("node-role.kubernetes.io/control-plane", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    }
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        assert tolerations[key, "NoExecute"]["tolerationSeconds"] == 10
    for t in spec["tolerations"]:  # a replica must leave a kicked-out node
        assert t["operator"] == "Exists"
        assert "out-of-service" not in t["key"]

    c = container(directory)
    assert c["image"] == "asklepios:0.1.0"
    assert c["command"] == ["asklepios", "run"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "256Mi"},
    }


@DIRECTORIES
def test_pod_security_restricted(directory: str) -> None:
    spec = pod_spec(directory)
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(forbidden), forbidden
    assert all("hostPath" not in volume for volume in spec.get("volumes", []))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(directory)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "ports" not in c or all("hostPort" not in p for p in c["ports"])


def check_rbac(
    manifests: tuple[Manifest, ...], cluster_roles: dict[str, set[Rule]], roles: dict[tuple[str, str], set[Rule]]
) -> None:
    found = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ClusterRole"}
    assert {name: rules(m) for name, m in found.items()} == cluster_roles
    namespaced = {(m["metadata"]["name"], m["metadata"]["namespace"]): m for m in manifests if m["kind"] == "Role"}
    assert set(namespaced) == set(roles)
    for key, role in namespaced.items():
        # Also guards against kustomize rewriting resourceNames when a generated ConfigMap shares them.
        assert rules(role) == roles[key], key
    for rule in set().union(*(rules(r) for r in [*found.values(), *namespaced.values()])):
        assert "*" not in rule
        assert rule[1] != "secrets" or rule[3] == ("asklepios-bmc",)  # the fencing Secret only
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    bindings: list[tuple[str, str, str, str | None]] = [
        ("ClusterRoleBinding", "ClusterRole", n, None) for n in cluster_roles
    ]
    bindings += [("RoleBinding", "Role", name, namespace) for name, namespace in roles]
    assert Counter(m["kind"] for m in manifests if m["kind"].endswith("Binding")) == Counter(b[0] for b in bindings)
    for kind, ref_kind, ref_name, namespace in bindings:
        [binding] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == ref_name]
        assert binding["metadata"].get("namespace") == namespace
        assert binding["subjects"] == [subject]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name}
    [account] = [m for m in manifests if m["kind"] == "ServiceAccount"]
    assert account["metadata"]["name"] == NAME


@DIRECTORIES
def test_rbac_is_exactly_what_is_needed(directory: str) -> None:
    check_rbac(render(directory), EXPECTED_CLUSTER_ROLES[directory], EXPECTED_ROLES[directory])


def with_components(tmp_path: Path, *components: str) -> tuple[Manifest, ...]:
    """k8s/ plus components of k8s/components, the way an operator's overlay adds them."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S, tmp_path)],  # kustomize takes relative paths only
                "components": [os.path.relpath(K8S / "components" / c, tmp_path) for c in components],
            }
        )
    )
    return render(str(tmp_path))


def test_components_add_the_rbac_and_the_setting_of_their_feature(tmp_path: Path) -> None:
    manifests = with_components(tmp_path, "fencing", "balancer")
    check_rbac(manifests, CLUSTER_ROLES | BALANCER_ROLE, ROLES | FENCING_ROLE | BALANCER_STATE_ROLE)
    [config_map] = [m for m in manifests if m["kind"] == "ConfigMap"]
    assert config_map["data"] == BASE_SETTINGS | {"ASKLEPIOS_FENCING": "redfish", "ASKLEPIOS_BALANCER": "true"}
    for m in manifests:
        kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)


@DIRECTORIES
def test_disruption_budget_and_metrics_service(directory: str) -> None:
    pdb = one(directory, "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == NAME
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    service = one(directory, "Service")
    assert service["metadata"]["name"] == "asklepios-metrics"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == SELECTOR
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


PROMETHEUS_OPERATOR = "k8s/overlays/prometheus-operator"
# What the overlay adds to the base (checked against the prometheus-operator CRDs
# and promtool in test_monitoring.py).
MONITORING_OBJECTS = {
    ("ServiceMonitor", "asklepios"),
    ("PrometheusRule", "asklepios"),
    ("ConfigMap", "asklepios-dashboard"),
}


def test_prometheus_operator_overlay_is_the_base_plus_monitoring() -> None:
    base = {(m["kind"], m["metadata"]["name"]): m for m in render("k8s")}
    overlay = {(m["kind"], m["metadata"]["name"]): m for m in render(PROMETHEUS_OPERATOR)}
    assert overlay.keys() - base.keys() == MONITORING_OBJECTS
    for key, manifest in base.items():
        assert overlay[key] == manifest, key  # the base unchanged (same settings hash too)
    for key in MONITORING_OBJECTS:
        metadata = overlay[key]["metadata"]
        assert metadata["namespace"] == NAMESPACE, key
        assert metadata["labels"]["app.kubernetes.io/name"] == NAME, key
    kubernetes_validate.validate(overlay["ConfigMap", "asklepios-dashboard"], KUBERNETES_VERSION, strict=True)


def test_containerfile_is_hadolint_clean() -> None:
    out = subprocess.run(
        [tool("hadolint"), "Containerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


# --- lock files --------------------------------------------------------------------------

LOCKS = ROOT / "requirements"


def pins(lock: str) -> dict[str, str]:
    """name -> version of a lock file; every entry must carry at least one hash."""
    text = (LOCKS / lock).read_text()
    # name==version, maybe " ; markers", then one or more " \\" + newline + "--hash=sha256:..." lines
    entry = r"^([A-Za-z0-9_.\-]+)==(\S+)(?: ;[^\\\n]*)?((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)"
    entries = re.findall(entry, text, re.M)
    names = re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)
    assert len(entries) == len(names) > 0, f"{lock}: an entry without a hash"
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}


def test_locks_pin_every_dependency_with_hashes_and_agree() -> None:
    runtime, test = pins("runtime.lock"), pins("test.lock")
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)
    assert dependencies
    for requirement in re.findall(r'^\s*"([A-Za-z0-9_.\-]+)', dependencies[1], re.M):
        assert re.sub(r"[-_.]+", "-", requirement).lower() in runtime, requirement
    # CI tests the versions the image ships.
    assert {name: test[name] for name in runtime} == runtime
    assert {"hatchling", "editables", "cyclonedx-bom", "uv"} <= test.keys()
    assert {"hatchling", "cyclonedx-bom"} <= pins("build.lock").keys()
