"""Monitoring: the alerting rules, their runbook, the Grafana dashboard and the
prometheus-operator overlay, checked with the real tools and the real schemas.

- promtool (Debian's `prometheus` package, installed by hack/prometheus.sh) checks
  k8s/monitoring/rules.yaml and runs its unit tests (k8s/monitoring/rules-test.yaml).
  Each alert's cases are shown to catch a rule broken into "always fires" and into
  "never fires".
- Every dashboard query is parsed by Prometheus' own PromQL parser: promtool 2.42
  has no `promql format` command and `promtool query` needs a server, so the
  queries are written as recording rules and checked with `promtool check rules`.
  The two queries that compute something (the node-state encoding, the leader's
  node counts) are also evaluated with `promtool test rules`.
- The overlay renders with `kubectl kustomize`; its ServiceMonitor and
  PrometheusRule are validated against the CRDs of the prometheus-operator release
  pinned in hack/monitoring/go.mod (fetched through the Go module proxy, verified
  against hack/monitoring/go.sum, by hack/monitoring/crds.sh).

Nothing is skipped: without promtool, go or kubectl these tests fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
RULES = MONITORING / "rules.yaml"
RULES_TEST = MONITORING / "rules-test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
OVERLAY = ROOT / "k8s" / "overlays" / "prometheus-operator"
NAMESPACE = "kube-system"

Manifest = dict[str, Any]

REQUIRED_ALERTS = {
    "AsklepiosNoLeader",
    "AsklepiosDown",
    "AsklepiosKickoutHeld",
    "AsklepiosFencingFailed",
    "AsklepiosNodeKickedOutLong",
    "AsklepiosKickinForced",
    "AsklepiosRebalanceFailed",
    "AsklepiosWatchStale",
    "AsklepiosWriteErrors",
    "AsklepiosNodeKickedOut",
    "AsklepiosNodeFenced",
    "AsklepiosNoStandby",
    "AsklepiosPaused",
    "AsklepiosNodeFlapping",
}
# Metrics of the operator contract that the alerts read before this build may export
# them (the pause state and the flap count come with `asklepios pause` and flap damping).
CONTRACT_METRICS = {"asklepios_paused", "asklepios_flapping_nodes"}
# Labels an alert may carry: bounded by the number of watched nodes (node, reason)
# or by small fixed sets (action, operation, resource). AsklepiosWatchStale keeps
# the scrape target's labels: one alert per replica and resource at most.
ALERT_LABELS = {"alertname", "severity", "node", "reason", "action", "operation", "resource"}
TARGET_LABELS = {"job", "namespace", "pod", "instance"}
PER_TARGET_ALERTS = {"AsklepiosWatchStale"}
RUNBOOK_SUBSECTIONS = ("What it means", "How to look", "What to do", "When it is safe to ignore")

# What the dashboard must show (the list), by the metrics it reads.
DASHBOARD_METRICS = {
    "asklepios_watched_nodes",
    "asklepios_notready_nodes",
    "asklepios_node_state",
    "asklepios_node_deadline_timestamp_seconds",
    "asklepios_kickouts_total",
    "asklepios_kickins_total",
    "asklepios_kickouts_held_total",
    "asklepios_kickout_delay_seconds_bucket",
    "asklepios_recovery_seconds_bucket",
    "asklepios_fencing_total",
    "asklepios_rebalanced_pods_total",
    "asklepios_is_leader",
    "asklepios_watch_restarts_total",
    "asklepios_api_errors_total",
    "process_resident_memory_bytes",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRIC_NAME = re.compile(r"\b(asklepios_[a-z_]+|process_[a-z_]+)\b")


# ---------------------------------------------------------------------- helpers


def tool(name: str) -> str:
    """The venv's copy of a tool, else PATH's; a missing tool fails the test."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        hint = {"promtool": "run hack/prometheus.sh", "go": "install Go (see README)"}.get(name, "")
        pytest.fail(f"{name} not found on PATH: {hint or 'install the test extras'}")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run(tool("promtool"), *args, cwd=cwd)


@functools.cache
def rule_file() -> Manifest:
    loaded: Manifest = yaml.safe_load(RULES.read_text())
    return loaded


def alerts() -> list[Manifest]:
    return [rule for group in rule_file()["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [a["alert"] for a in alerts()]


@functools.cache
def rule_tests() -> Manifest:
    loaded: Manifest = yaml.safe_load(RULES_TEST.read_text())
    return loaded


def cases(alert: str) -> Iterator[tuple[str, Manifest]]:
    """(test group name, alert_rule_test entry) for every evaluation of `alert`."""
    for group in rule_tests()["tests"]:
        for case in group.get("alert_rule_test", []):
            if case["alertname"] == alert:
                yield group["name"], case


@functools.cache
def dashboard() -> Manifest:
    loaded: Manifest = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[Manifest]:
    """Every panel but rows, including panels nested in collapsed rows."""
    found: list[Manifest] = []
    for panel in dashboard()["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def panel(title: str) -> Manifest:
    [found] = [p for p in panels() if p["title"] == title]
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every annotation query."""
    queries = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]
    queries += [
        (f"annotation {a['name']!r}", a["expr"])
        for a in dashboard()["annotations"]["list"]
        if a.get("expr") is not None
    ]
    return queries


def check_queries(queries: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on the queries written as recording rules: Prometheus' parser."""
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return promtool("check", "rules", str(path))


@functools.cache
def render(directory: Path) -> tuple[Manifest, ...]:
    out = run(tool("kubectl"), "kustomize", str(directory))
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc is not None)


def one(kind: str, name: str | None = None) -> Manifest:
    [found] = [m for m in render(OVERLAY) if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def exported_metric_names() -> set[str]:
    """Every series name the controller's metrics module can export."""
    from prometheus_client import REGISTRY

    from asklepios.observe import metrics  # registers the metrics

    assert metrics.IS_LEADER is not None
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# ------------------------------------------------------------------ alert rules


def test_rule_file_passes_promtool_check() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULES_TEST))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_required_alerts_exist_once_each() -> None:
    names = alert_names()
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    for alert in alert_names():
        kinds = {bool(case["exp_alerts"]) for _, case in cases(alert)}
        assert kinds == {True, False}, f"{alert}: needs a case where it fires and one where it does not"


def broken_rules(alert: str, expr: str) -> str:
    """rules.yaml with `alert`'s expression replaced."""
    rules = copy.deepcopy(rule_file())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    rule["expr"] = expr
    return yaml.safe_dump(rules, sort_keys=False)


def only_cases(alert: str, *, firing: bool) -> str:
    """rules-test.yaml reduced to `alert`'s firing (or quiet) evaluations."""
    tests = copy.deepcopy(rule_tests())
    kept = []
    for group in tests["tests"]:
        group.pop("promql_expr_test", None)
        group["alert_rule_test"] = [
            c for c in group.get("alert_rule_test", []) if c["alertname"] == alert and bool(c["exp_alerts"]) is firing
        ]
        if group["alert_rule_test"]:
            kept.append(group)
    tests["tests"] = kept
    return yaml.safe_dump(tests, sort_keys=False)


@pytest.mark.parametrize("alert", alert_names())
def test_the_cases_catch_a_broken_rule(alert: str, tmp_path: Path) -> None:
    """The quiet cases fail a rule that always fires, the firing cases one that never does."""
    for firing, broken in ((False, "vector(1)"), (True, "vector(1) < 0")):
        (tmp_path / "rules.yaml").write_text(RULES.read_text())
        (tmp_path / "cases.yaml").write_text(only_cases(alert, firing=firing))
        good = promtool("test", "rules", "cases.yaml", cwd=tmp_path)
        assert good.returncode == 0, good.stdout + good.stderr
        (tmp_path / "rules.yaml").write_text(broken_rules(alert, broken))
        bad = promtool("test", "rules", "cases.yaml", cwd=tmp_path)
        what = "firing" if firing else "quiet"
        assert bad.returncode != 0, f"{alert}: the {what} cases pass with expr {broken!r}"
        assert "FAILED" in bad.stdout + bad.stderr


def test_alert_labels_are_bounded() -> None:
    """What promtool saw each alert carry (its exp_labels are checked exactly)."""
    for alert in alert_names():
        allowed = ALERT_LABELS | (TARGET_LABELS if alert in PER_TARGET_ALERTS else set())
        for name, case in cases(alert):
            for fired in case["exp_alerts"]:
                assert set(fired.get("exp_labels", {})) <= allowed, f"{alert} in {name!r}"


def test_severities_and_annotations() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, alert["alert"]
        assert alert["annotations"]["runbook_url"] == f"docs/runbook.md#{alert['alert'].lower()}"


def test_every_alert_has_a_runbook_section() -> None:
    text = RUNBOOK.read_text()
    headings = {slug(h): h for h in re.findall(r"^## (.+)$", text, flags=re.MULTILINE)}
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL))
    for alert in alerts():
        anchor = alert["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in headings, f"docs/runbook.md has no section #{anchor}"
        section = sections[headings[anchor]]
        for sub in RUNBOOK_SUBSECTIONS:
            assert f"### {sub}" in section, f"{alert['alert']}: no '### {sub}'"
        assert "kubectl " in section, alert["alert"]


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    used = {m for a in alerts() for m in METRIC_NAME.findall(a["expr"])}
    used |= {m for _, q in dashboard_queries() for m in METRIC_NAME.findall(q)}
    assert {m for m in used if m.startswith("asklepios_")} - exported - CONTRACT_METRICS == set()
    assert {m for m in used if m.startswith("process_")} - exported == set()


# -------------------------------------------------------------------- dashboard


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] == "asklepios"
    assert d["title"] == "Asklepios"
    assert isinstance(d["schemaVersion"], int)
    [variable] = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in d["panels"]] + [p["id"] for p in panels() if p not in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0, p["title"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{p['title']!r} overlaps another panel"
        cells |= mine


def test_every_panel_queries_the_datasource_variable() -> None:
    for p in panels():
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], f"{p['title']!r} has no query"
        for t in p["targets"]:
            assert t.get("datasource", DATASOURCE) == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]


def test_dashboard_queries_are_plain_promql() -> None:
    """No Grafana macros or variables: each query runs as-is against Prometheus."""
    for where, query in dashboard_queries():
        assert "$" not in query, where


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    out = check_queries([q for _, q in queries], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(queries)} rules found" in out.stdout


@pytest.mark.parametrize(
    "query",
    [
        "sum(increase(asklepios_kickouts_total[5m])",  # unbalanced parenthesis
        "rate(asklepios_watched_nodes)",  # a range vector is needed
        "max by (node) asklepios_node_state{state=ready}",  # unquoted label value
    ],
)
def test_the_parser_check_catches_a_broken_query(query: str, tmp_path: Path) -> None:
    out = check_queries(["up", query], tmp_path)
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


def test_the_dashboard_shows_what_operators_need() -> None:
    used = {m for _, q in dashboard_queries() for m in METRIC_NAME.findall(q)}
    assert DASHBOARD_METRICS - used == set()
    kinds = {p["type"] for p in panels()}
    assert {"state-timeline", "heatmap", "table", "stat", "timeseries"} <= kinds


def expr_test(tmp_path: Path, group: Manifest) -> subprocess.CompletedProcess[str]:
    (tmp_path / "none.yaml").write_text("groups: []\n")
    tests = {"rule_files": ["none.yaml"], "evaluation_interval": "1m", "tests": [group]}
    (tmp_path / "expr-test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", "expr-test.yaml", cwd=tmp_path)


def test_the_node_state_query_maps_each_state_to_its_label(tmp_path: Path) -> None:
    state_panel = panel("Node state")
    [target] = state_panel["targets"]
    [mapping] = state_panel["fieldConfig"]["defaults"]["mappings"]
    code = {option["text"]: int(value) for value, option in mapping["options"].items()}
    assert set(code) == {"ready", "counting down", "kicked out", "counting up", "waiting for pods", "held", "excluded"}
    leader = 'job="asklepios", pod="asklepios-5f7c9-a", instance="10.0.1.5:8080"'
    # node i is in state i: one series at 1, the others of the node at 0 (as the
    # controller may export them) or absent
    series = []
    for i, state in enumerate(code):
        node = f"control{i}"
        series.append({"series": f'asklepios_node_state{{{leader}, node="{node}", state="{state}"}}', "values": "1x5"})
        other = "ready" if state != "ready" else "excluded"
        series.append({"series": f'asklepios_node_state{{{leader}, node="{node}", state="{other}"}}', "values": "0x5"})
    out = expr_test(
        tmp_path,
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": target["expr"],
                    "eval_time": "3m",
                    "exp_samples": [
                        {"labels": f'{{node="control{i}"}}', "value": code[state]} for i, state in enumerate(code)
                    ],
                }
            ],
        },
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_node_counts_come_from_the_leader(tmp_path: Path) -> None:
    """The follower's own count (here a stale 5) must not show."""
    a = 'job="asklepios", pod="asklepios-5f7c9-a", instance="10.0.1.5:8080"'
    b = 'job="asklepios", pod="asklepios-5f7c9-b", instance="10.0.2.7:8080"'
    series = [
        {"series": f"asklepios_is_leader{{{a}}}", "values": "1x5"},
        {"series": f"asklepios_is_leader{{{b}}}", "values": "0x5"},
        {"series": f"asklepios_watched_nodes{{{a}}}", "values": "3x5"},
        {"series": f"asklepios_watched_nodes{{{b}}}", "values": "5x5"},
        {"series": f"asklepios_notready_nodes{{{a}}}", "values": "1x5"},
        {"series": f"asklepios_notready_nodes{{{b}}}", "values": "2x5"},
    ]
    checks = [
        {"expr": t["expr"], "eval_time": "3m", "exp_samples": [{"labels": "{}", "value": value}]}
        for title, value in (("Watched nodes", 3), ("NotReady nodes", 1))
        for t in panel(title)["targets"]
    ]
    out = expr_test(tmp_path, {"interval": "1m", "input_series": series, "promql_expr_test": checks})
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------- prometheus-operator overlay


def test_the_prometheusrule_is_the_rule_file() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "asklepios"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"] == {"groups": rule_file()["groups"]}
    out = run(sys.executable, "hack/monitoring/sync-prometheusrule.py", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_servicemonitor_scrapes_both_replicas_as_job_asklepios() -> None:
    monitor = one("ServiceMonitor")
    service = one("Service", "asklepios-metrics")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == NAMESPACE
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace: the Service's
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    [down] = [a for a in alerts() if a["alert"] == "AsklepiosDown"]
    assert f'up{{job="{job}"}}' in down["expr"]
    # The Service reaches the pods' metrics port.
    deployment = one("Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_the_dashboard_configmap_is_provisioned_for_grafana() -> None:
    config_map = one("ConfigMap", "asklepios-dashboard")
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["asklepios.json"]) == dashboard()
    kubernetes_validate.validate(config_map, "1.37", strict=True)


@functools.cache
def crd_dir() -> Path:
    tool("go")
    out = run("bash", "hack/monitoring/crds.sh")
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def pinned_version() -> str:
    found = re.search(
        r"^require github\.com/prometheus-operator/prometheus-operator (v\S+)$",
        (ROOT / "hack" / "monitoring" / "go.mod").read_text(),
        flags=re.MULTILINE,
    )
    assert found is not None, "hack/monitoring/go.mod pins no prometheus-operator version"
    return found.group(1)


@functools.cache
def crd(plural: str) -> Manifest:
    loaded: Manifest = yaml.safe_load((crd_dir() / f"monitoring.coreos.com_{plural}.yaml").read_text())
    return loaded


def strict(schema: Any) -> Any:
    """The schema, rejecting unknown fields (what `kubectl apply --validate=strict` does)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate(resource: Manifest, plural: str) -> None:
    definition = crd(plural)
    group, _, version = resource["apiVersion"].partition("/")
    assert definition["spec"]["group"] == group
    assert definition["spec"]["names"]["kind"] == resource["kind"]
    [served] = [v for v in definition["spec"]["versions"] if v["name"] == version]
    assert served["served"] and served["storage"]
    schema = strict(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator(schema).validate(resource)


def test_the_crds_are_the_pinned_release() -> None:
    assert crd_dir().parent.parent.name == f"prometheus-operator@{pinned_version()}"
    for plural in ("servicemonitors", "prometheusrules"):
        annotations = crd(plural)["metadata"]["annotations"]
        assert annotations["operator.prometheus.io/version"] == pinned_version().removeprefix("v")


@pytest.mark.parametrize(
    ("kind", "plural"), [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")]
)
def test_custom_resources_validate_against_the_crds(kind: str, plural: str) -> None:
    validate(one(kind), plural)


@pytest.mark.parametrize(
    ("kind", "plural", "path", "value"),
    [
        ("ServiceMonitor", "servicemonitors", ("spec", "endpoints", 0, "intervall"), "30s"),  # unknown field
        ("ServiceMonitor", "servicemonitors", ("spec", "endpoints", 0, "interval"), "30 seconds"),  # bad duration
        ("PrometheusRule", "prometheusrules", ("spec", "groups", 0, "rules", 0, "for"), "2 minutes"),
        ("PrometheusRule", "prometheusrules", ("spec", "groups", 0, "rules", 0, "expr"), ["up"]),  # wrong type
    ],
)
def test_crd_validation_catches_mistakes(kind: str, plural: str, path: tuple[str | int, ...], value: Any) -> None:
    resource = copy.deepcopy(one(kind))
    node: Any = resource
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(resource, plural)
