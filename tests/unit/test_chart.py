"""The Helm chart charts/asklepios, checked without a cluster, and k8s/ held equal to it.

The chart is the one source of truth: k8s/ is its render (hack/render-k8s.py). Here
`helm lint` passes, the committed k8s/ is what a fresh render writes, and kustomize's
objects equal Helm's, object by object, for the defaults, the Burrito values and the
monitoring objects. The RBAC the chart grants is exactly what `asklepios check` asks
for with those settings (core.preflight.required_access), for every combination of the
settings that change it. helm is the pinned build of hack/helm/build.sh.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from asklepios import __version__
from asklepios.core.preflight import required_access
from tests.unit.test_manifests import (
    BASE_SETTINGS,
    BURRITO_SETTINGS,
    CONTRACT_DEFAULTS,
    KUBERNETES_VERSION,
    NOT_IN_CONFIGMAP,
    Manifest,
    render,
    rules,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "asklepios"
NAMESPACE = "kube-system"
# Asklepios' record object (the lead's records): always granted, in ASKLEPIOS_NAMESPACE.
RECORDS = "asklepios-records"
HELM_ONLY_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart")
MONITORING_ON = (
    "--set",
    "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true",
)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas (test_monitoring checks them)


def helm() -> str:
    """The helm that hack/helm/build.sh builds (hack/test.sh runs it before pytest)."""
    version = re.search(r"^require helm\.sh/helm/v4 (v\S+)$", (ROOT / "hack/helm/go.mod").read_text(), re.M)
    assert version, "hack/helm/go.mod pins no helm.sh/helm/v4"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = Path(os.environ.get("ASKLEPIOS_HELM") or cache / "asklepios" / "bin" / f"helm-{version[1]}" / "helm")
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `bash hack/helm/build.sh` (hack/test.sh does)")
    return str(path)


def run_helm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


@functools.cache
def template(*args: str, release: str = "asklepios", namespace: str = NAMESPACE) -> tuple[Manifest, ...]:
    out = run_helm("template", release, str(CHART), "--namespace", namespace, *args)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc is not None)


def settings_of(manifests: tuple[Manifest, ...]) -> dict[str, str]:
    [config_map] = [m for m in manifests if m["kind"] == "ConfigMap" and "-settings" in m["metadata"]["name"]]
    data: dict[str, str] = config_map["data"]
    return data


def normalized(manifests: tuple[Manifest, ...]) -> dict[tuple[str, str, str], Manifest]:
    """Objects by (kind, namespace, name), without what only Helm or only kustomize adds:
    Helm's own labels and settings checksum, kustomize's hash suffix of the settings."""
    out = {}
    for original in manifests:
        m = json.loads(json.dumps(original))
        labels = m["metadata"].get("labels", {})
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
        if m["kind"] == "ConfigMap":
            m["metadata"]["name"] = re.sub(r"^(asklepios-settings)-[a-z0-9]{10}$", r"\1", m["metadata"]["name"])
        if m["kind"] == "Deployment":
            template = m["spec"]["template"]
            template["metadata"]["annotations"].pop("checksum/settings", None)
            for ref in template["spec"]["containers"][0]["envFrom"]:
                ref["configMapRef"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", ref["configMapRef"]["name"])
        out[m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]] = m
    return out


def differences(a: tuple[Manifest, ...], b: tuple[Manifest, ...]) -> list[str]:
    left, right = normalized(a), normalized(b)
    out = [f"only in the first: {k}" for k in left.keys() - right.keys()]
    out += [f"only in the second: {k}" for k in right.keys() - left.keys()]
    out += [f"differs: {k}" for k in left.keys() & right.keys() if left[k] != right[k]]
    return sorted(out)


# --- one source of truth -----------------------------------------------------------------


def test_committed_k8s_is_a_fresh_render_of_the_chart() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack/render-k8s.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "ASKLEPIOS_HELM": helm()},
    )
    assert (out.returncode, out.stderr) == (0, ""), out.stdout


@pytest.mark.parametrize(
    ("directory", "args"),
    [
        ("k8s", ()),
        ("k8s/overlays/burrito", ("-f", str(CHART / "values-burrito.yaml"))),
        ("k8s/overlays/prometheus-operator", MONITORING_ON),
    ],
)
def test_kustomize_and_helm_render_the_same_objects(directory: str, args: tuple[str, ...]) -> None:
    assert differences(render(directory), template("--skip-tests", *args)) == []  # k8s/ has no helm test


def test_a_drift_is_caught() -> None:
    """The control: a chart render that differs in one value is not the same as k8s/."""
    assert differences(render("k8s"), template("--skip-tests", "--set", "settings.kickoutSeconds=61")) == [
        "differs: ('ConfigMap', 'kube-system', 'asklepios-settings')"
    ]
    assert differences(render("k8s"), template("--skip-tests", "--set", "monitoring.dashboard.enabled=true")) == [
        "only in the second: ('ConfigMap', 'kube-system', 'asklepios-dashboard')"
    ]


@pytest.mark.parametrize("values", [(), ("-f", "charts/asklepios/values-burrito.yaml"), MONITORING_ON])
def test_helm_lint_passes(values: tuple[str, ...]) -> None:
    out = run_helm("lint", "--strict", "charts/asklepios", *values)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


# --- settings ----------------------------------------------------------------------------


def value_key(variable: str) -> str:
    """ASKLEPIOS_KICKOUT_SECONDS -> kickoutSeconds (the chart's `settings` key)."""
    first, *rest = variable.removeprefix("ASKLEPIOS_").lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def test_every_setting_of_the_contract_has_a_value_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    assert settings_of(template()) == BASE_SETTINGS
    assert settings_of(template("-f", str(CHART / "values-burrito.yaml"))) == BURRITO_SETTINGS
    for variable, default in CONTRACT_DEFAULTS.items():
        assert str(values[value_key(variable)]).lower() == default, variable


@pytest.mark.parametrize("variable", sorted(CONTRACT_DEFAULTS))
def test_each_setting_reaches_its_variable(variable: str) -> None:
    changed = "7" if CONTRACT_DEFAULTS[variable].isdigit() else "x-y"
    data = settings_of(template("--set-string", f"settings.{value_key(variable)}={changed}"))
    assert data[variable] == changed
    others = {k: v for k, v in data.items() if k != variable}
    assert others == {k: v for k, v in BASE_SETTINGS.items() if k != variable}
    if variable in NOT_IN_CONFIGMAP:  # unset unless given
        assert variable not in settings_of(template())


def test_deployment_values() -> None:
    manifests = template(
        "--set",
        "image.repository=registry.example/infra/asklepios,image.tag=9.9,replicaCount=3,"
        "nodeSelector.role=infra,resources.requests.cpu=100m,settings.httpPort=9090",
        "--set-json",
        'tolerations=[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]',
    )
    [deployment] = [m for m in manifests if m["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example/infra/asklepios:9.9"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}}
    assert spec["nodeSelector"] == {"role": "infra"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    [service] = [m for m in manifests if m["kind"] == "Service"]
    assert service["spec"]["ports"][0]["port"] == 9090
    assert settings_of(manifests)["ASKLEPIOS_HTTP_PORT"] == "9090"


def test_a_settings_change_rolls_the_pods() -> None:
    def checksum(*args: str) -> str:
        [deployment] = [m for m in template(*args) if m["kind"] == "Deployment"]
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
        return value

    assert checksum() != checksum("--set", "settings.kickoutSeconds=61")
    assert checksum() == checksum("--set", "replicaCount=3")


# --- RBAC --------------------------------------------------------------------------------


Grant = tuple[str, str, str, str, str]  # namespace ("" cluster-wide), group, resource, verb, name


def granted(manifests: tuple[Manifest, ...]) -> set[Grant]:
    """What the Roles and ClusterRoles grant, each bound to the chart's ServiceAccount."""
    out: set[Grant] = set()
    bound = {
        (m["roleRef"]["kind"], m["metadata"].get("namespace", ""), m["roleRef"]["name"])
        for m in manifests
        if m["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and m["subjects"] == [{"kind": "ServiceAccount", "name": "asklepios", "namespace": NAMESPACE}]
    }
    for m in manifests:
        if m["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = m["metadata"].get("namespace", "") if m["kind"] == "Role" else ""
        assert (m["kind"], namespace, m["metadata"]["name"]) in bound, m["metadata"]
        for group, resource, verb, names in rules(m):
            out.update((namespace, group, resource, verb, name) for name in names or ("",))
    return out


def records_rules(namespace: str) -> set[Grant]:
    return {(namespace, "", "configmaps", "create", "")} | {
        (namespace, "", "configmaps", verb, RECORDS) for verb in ("get", "list", "watch", "patch")
    }


COMBINATIONS = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize(("leader_election", "force_delete", "balancer", "fencing"), COMBINATIONS)
def test_rbac_is_exactly_what_check_needs(
    leader_election: bool, force_delete: bool, balancer: bool, fencing: bool
) -> None:
    sets = {
        "settings.leaderElection": str(leader_election).lower(),
        "settings.forceDelete": str(force_delete).lower(),
        "settings.balancer": str(balancer).lower(),
        "settings.fencing": "redfish" if fencing else "off",
        "settings.fencingSecret": "bmc-inventory",
    }
    manifests = template("--set", ",".join(f"{k}={v}" for k, v in sets.items()))
    needs = required_access(
        NAMESPACE,
        leader_election=leader_election,
        force_delete=force_delete,
        balancer=balancer,
        fencing=fencing,
        fencing_secret="bmc-inventory",
    )
    needed = {(n.namespace, n.group, n.resource, n.verb, n.name) for n in needs} | records_rules(NAMESPACE)
    assert granted(manifests) == needed, (sorted(granted(manifests) - needed), sorted(needed - granted(manifests)))
    assert not [m for m in manifests if m["kind"] == "Secret"]  # the chart never holds BMC credentials


def test_namespaced_rbac_follows_asklepios_namespace() -> None:
    manifests = template("--set", "settings.namespace=healer,settings.fencing=redfish")
    assert settings_of(manifests)["ASKLEPIOS_NAMESPACE"] == "healer"
    roles = {m["metadata"]["name"]: m["metadata"]["namespace"] for m in manifests if m["kind"] == "Role"}
    assert roles == {
        "asklepios-leader-election": "healer",
        "asklepios-records": "healer",
        "asklepios-fencing": "healer",
        "asklepios-node-leases": "kube-node-lease",
    }


def test_names_follow_the_release() -> None:
    manifests = template(release="healer", namespace="ops")
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert ("ClusterRole", "healer-asklepios") in names
    assert ("Deployment", "healer-asklepios") in names
    [deployment] = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "healer-asklepios"
    for m in manifests:
        for subject in m.get("subjects", []):
            assert subject == {"kind": "ServiceAccount", "name": "healer-asklepios", "namespace": "ops"}


# --- monitoring, helm test, schemas, packaging -------------------------------------------


@pytest.mark.parametrize(
    ("toggle", "kind", "name"),
    [
        ("serviceMonitor", "ServiceMonitor", "asklepios"),
        ("prometheusRule", "PrometheusRule", "asklepios"),
        ("dashboard", "ConfigMap", "asklepios-dashboard"),
    ],
)
def test_each_monitoring_toggle_adds_its_object(toggle: str, kind: str, name: str) -> None:
    base = {(m["kind"], m["metadata"]["name"]) for m in template()}
    manifests = template("--set", f"monitoring.{toggle}.enabled=true,monitoring.labels.release=kps")
    added = [m for m in manifests if (m["kind"], m["metadata"]["name"]) not in base]
    assert [(m["kind"], m["metadata"]["name"]) for m in added] == [(kind, name)]
    assert added[0]["metadata"]["labels"]["release"] == "kps"


def test_monitoring_objects_carry_k8s_monitoring_files() -> None:
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in template(*MONITORING_ON)}
    rules_file = yaml.safe_load((ROOT / "k8s/monitoring/rules.yaml").read_text())
    assert manifests["PrometheusRule", "asklepios"]["spec"] == rules_file
    dashboard = manifests["ConfigMap", "asklepios-dashboard"]
    assert dashboard["data"] == {"asklepios.json": (ROOT / "k8s/monitoring/dashboard.json").read_text()}
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_helm_test_runs_asklepios_check_as_the_deployment() -> None:
    manifests = template()  # `helm template` renders the test hooks too
    [pod] = [m for m in manifests if m["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert "command" not in container  # the image's ENTRYPOINT is ["asklepios"]
    assert container["args"] == ["check"]
    assert pod["spec"]["serviceAccountName"] == "asklepios"
    assert pod["spec"]["restartPolicy"] == "Never"
    [deployment] = [m for m in manifests if m["kind"] == "Deployment"]
    [runner] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["env"] == runner["env"]
    assert container["envFrom"] == runner["envFrom"]
    assert container["image"] == runner["image"]
    assert container["securityContext"] == runner["securityContext"]


@pytest.mark.parametrize("values", [(), ("-f", str(CHART / "values-burrito.yaml")), MONITORING_ON])
def test_renders_validate_against_the_kubernetes_schemas(values: tuple[str, ...]) -> None:
    for m in template(*values, "--set", "settings.fencing=redfish"):
        if m["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)


def test_the_package_carries_the_monitoring_files(tmp_path: Path) -> None:
    out = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert out.returncode == 0, out.stderr
    [package] = tmp_path.glob("asklepios-*.tgz")
    with tarfile.open(package) as tar:
        for inside, source in (("rules.yaml", "rules.yaml"), ("dashboard.json", "dashboard.json")):
            member = tar.extractfile(f"asklepios/files/{inside}")
            assert member is not None
            assert member.read().decode() == (ROOT / "k8s/monitoring" / source).read_text()


def test_fencing_off_unquoted_is_off() -> None:
    """`fencing: off` in a values file is YAML's false: still off, and no Secret access."""
    manifests = template("--set", "settings.fencing=false")
    assert settings_of(manifests)["ASKLEPIOS_FENCING"] == "off"
    assert not [m for m in manifests if m["kind"] == "Role" and m["metadata"]["name"].endswith("-fencing")]


def test_the_chart_versions_follow_asklepios() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__
    [deployment] = [m for m in template() if m["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"asklepios:{__version__}"
