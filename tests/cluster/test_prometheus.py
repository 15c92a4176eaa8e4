"""The alerts and the dashboard on a real Prometheus, scraping the real Asklepios (issue 15).

A real ``prometheus`` (Debian's package, 2.42, installed by hack/prometheus.sh; the
test fails without it) runs as a lab process on 127.0.0.1 with its storage in the
test's temp dir. It scrapes two ``python -m asklepios run`` replicas (leader election
on) every second as job ``asklepios``, each target labelled ``pod`` like the Kubernetes
service discovery of docs/monitoring.md does, and loads k8s/monitoring/rules.yaml.

The alerts are the real expressions; only their ``for:`` durations (minutes) are
shortened to :data:`SHORT_FOR` in the copy Prometheus loads, so that they can fire
within a test. The ``for:`` timing itself is covered by promtool's unit tests
(k8s/monitoring/rules-test.yaml, run by tests/unit/test_monitoring.py).

The scenario, on four watched nodes (control1-3 hold the 3-pod StatefulSet `db` behind
a PDB; compute1 holds nothing), every node with a Redfish BMC of the lab's emulator:

1. compute1 reports NotReady while its kubelet keeps renewing its Lease: its kickout
   is held ("kubelet alive") for the rest of the test. AsklepiosKickoutHeld must fire,
   with exactly the labels alertname, severity, node and reason.
2. control3 loses power (ASKLEPIOS_MAX_UNHEALTHY=2, so the guard does not hold a
   second NotReady node): it is fenced through its BMC (AsklepiosNodeFenced must fire),
   kicked out (AsklepiosNodeKickedOut must fire), its pod moves to control1 or control2,
   the pod's release is recorded (recovery time), it is powered
   on, boots and is kicked in.
3. The balancer wants the doubled-up pod back on control3; the PDB (minAvailable 3)
   refuses the eviction (429: a failed write, asklepios_api_errors_total{operation=
   "evict"}) until the test relaxes it; then the pod moves.

Watches are ended by the apiserver every 27 to 30 s (ASKLEPIOS_WATCH_TIMEOUT_SECONDS=30;
60 in picture mode), so that the watch-restart panel has data. Not shorter: a normal
end of a watch is not progress, and in the lab a watch of a quiet resource gets no
bookmark, so a watch without events is reported stale (asklepios_watch_stale,
AsklepiosWatchStale) after ASKLEPIOS_WATCH_TIMEOUT_SECONDS + 60 s. That must stay
longer than any quiet stretch of the scenario (the cordoned-nodes watch sees nothing
from the start to the kickout).

Then, through Prometheus' HTTP API, every query of every panel and annotation of
k8s/monitoring/dashboard.json is run as a range query over the scenario: it must
parse and return data (at least one finite sample: a quantile of an empty histogram
is NaN, which is no data). :data:`ALLOWED_EMPTY` lists the exceptions, asserted
exactly. The "per 5 minutes" panels must also have counted this scenario's events,
including the first event of a labelled counter (a series born at 1). Alerts that
must not fire on this healthy-controller story must never have fired.

With ``RENDER_DASHBOARD=<png path>`` the same scenario runs slower (longer countdowns,
45 s of quiet before and after) and hack/render-dashboard.py draws the dashboard
from this Prometheus into that file (docs/monitoring.md: the README picture).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from asklepios_lab import ControlPlane, wait_for, workloads
from asklepios_lab.procs import Proc, free_port
from tests.cluster.checks import SEL, env, has_oos, power_cut, wait_node
from tests.cluster.runner import Asklepios, AsklepiosFactory, wait_value

JSON = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "monitoring" / "rules.yaml"
DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboard.json"
RENDER = ROOT / "hack" / "render-dashboard.py"
BMC_SECRET = "bmc-credentials"

SHORT_FOR = "5s"  # every alert's `for:` in the copy of the rules Prometheus loads
PICTURE = os.environ.get("RENDER_DASHBOARD", "")  # a PNG path: run slower, then draw the dashboard
COUNTDOWN = 15 if PICTURE else 5  # ASKLEPIOS_KICKOUT_SECONDS and ASKLEPIOS_KICKIN_SECONDS
QUIET = 45.0 if PICTURE else 0.0  # seconds of nothing happening before and after the story
WATCH_TIMEOUT = 60 if PICTURE else 30  # ASKLEPIOS_WATCH_TIMEOUT_SECONDS (see the docstring)

# Dashboard queries (as named by `dashboard_queries`) allowed to return no data in this
# scenario, and why. Asserted exactly: a new panel without data fails the test.
ALLOWED_EMPTY: dict[str, str] = {}

# Alerts this scenario must fire; alerts it may fire, each with what makes it right to fire
# (a query over the scenario that must return data). Any other alert firing fails the test.
MUST_FIRE = {"AsklepiosKickoutHeld", "AsklepiosNodeKickedOut", "AsklepiosNodeFenced"}
MAY_FIRE = {
    # the 429s of the refused evictions: `rate(...[5m]) * 60 > 1` for the shortened `for:`
    "AsklepiosWriteErrors": "sum(asklepios_api_errors_total) > 0",
    # the scheduler may put the moved pod back next to its sibling (the balancer backs off
    # for a minute, then moves it again): a real failure, rightly alerted on
    "AsklepiosRebalanceFailed": "sum(asklepios_rebalance_failures_total) > 0",
}

# The "per 5 minutes" panels count this scenario's events: (panel title, legend) -> count,
# the highest value over the scenario. `None`: at least one.
COUNTED: dict[tuple[str, str], int | None] = {
    ("Kickouts, kickins and repairs (per 5 minutes)", "kickouts"): 1,
    ("Kickouts, kickins and repairs (per 5 minutes)", "kickins"): 1,
    ("Kickouts held, by reason (per 5 minutes)", "kubelet alive"): None,
    ("Fencing, by action and result (per 5 minutes)", "off ok"): 1,
    ("Fencing, by action and result (per 5 minutes)", "on ok"): 1,
    ("Pods (per 5 minutes)", "rebalanced"): 1,
    ("API errors and write conflicts (per 5 minutes)", "error: evict"): None,
    ("Watch restarts, by resource and cause (per 5 minutes)", "nodes timeout"): None,
}


# ------------------------------------------------------------------- Prometheus


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if found is None:
        pytest.fail("prometheus not found: run hack/prometheus.sh (Debian's prometheus package)")
    return found


def short_rules() -> str:
    """k8s/monitoring/rules.yaml with every `for:` set to SHORT_FOR; nothing else changed."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    return yaml.safe_dump(rules, sort_keys=False)


class Prometheus:
    """A real Prometheus (a lab Proc: always reaped) scraping Asklepios replicas as job `asklepios`."""

    def __init__(self, tmp: Path, targets: dict[str, int], namespace: str) -> None:
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "rules.yaml").write_text(short_rules())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": "asklepios",  # AsklepiosDown selects up{job="asklepios"}
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": namespace, "pod": pod}}
                        for pod, port in targets.items()
                    ],
                }
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc = Proc(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.dir / "prometheus.log",
        )
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # 127.0.0.1: no proxy

    def __enter__(self) -> Prometheus:
        self.proc.start()
        wait_for(self._ready, 30, what="prometheus /-/ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()

    def _ready(self) -> bool:
        self.proc.check_alive()
        try:
            with self._open(f"{self.url}/-/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>: its `data`. A query Prometheus refuses (a parse error...) raises."""
        self.proc.check_alive()
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._open(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[JSON]:
        result: list[JSON] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def query_range(self, expr: str, start: float, end: float, step: float = 1) -> list[JSON]:
        result: list[JSON] = self.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def alerts(self) -> list[JSON]:
        found: list[JSON] = self.api("alerts")["alerts"]
        return found

    def wait(self, expr: str, timeout: float, what: str) -> float:
        """Wait until the instant query `expr` returns a sample; its value."""
        return wait_value(lambda: self.value(expr), timeout, what, interval=0.5)


class QueryError(AssertionError):
    pass


# -------------------------------------------------------------------- dashboard


def panels() -> list[JSON]:
    """Every panel but rows, including panels nested in collapsed rows."""
    found: list[JSON] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every annotation query."""
    annotations = json.loads(DASHBOARD.read_text())["annotations"]["list"]
    queries = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]
    queries += [(f"annotation {a['name']!r}", a["expr"]) for a in annotations if a.get("expr") is not None]
    return queries


def no_data(result: list[JSON]) -> str | None:
    """Why a range query's result is no data (None: it has data)."""
    if not result:
        return "no series"
    if not any(math.isfinite(float(v)) for series in result for _, v in series["values"]):
        return f"{len(result)} series, no finite sample (NaN: e.g. a quantile of an empty histogram)"
    return None


def legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, val in labels.items():
        text = text.replace("{{" + key + "}}", val)
    return text


def counted(prom: Prometheus, title: str, name: str, start: float, end: float) -> float:
    """The highest value over [start, end] of the series of panel `title` whose legend is `name`."""
    [panel] = [p for p in panels() if p["title"] == title]
    best = 0.0
    for target in panel["targets"]:
        for series in prom.query_range(target["expr"], start, end):
            if legend(target["legendFormat"], series["metric"]) == name:
                best = max([best, *(float(v) for _, v in series["values"])])
    return best


# --------------------------------------------------------------------- scenario


def one_per_node(cp: ControlPlane, namespace: str, hosts: list[str]) -> dict[str, str] | None:
    where = workloads.placement(cp, namespace, "db")
    return where if sorted(where.values()) == sorted(hosts) else None


def pause(seconds: float, what: str) -> None:
    """Let time pass (picture mode's quiet minutes): a deadline, not a bare sleep."""
    if seconds > 0:
        until = time.monotonic() + seconds
        wait_for(lambda: time.monotonic() >= until, seconds + 5, interval=1, what=what)


@pytest.mark.timeout(900 if PICTURE else 300)
def test_alerts_fire_and_every_panel_has_data_on_a_real_prometheus(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory, tmp_path: Path
) -> None:
    cp = control_plane
    prom_binary = prometheus_binary()  # fail at once (not after the setup) without prometheus
    assert Path(prom_binary).is_file()
    hosts = [nodes.add(s, labels={SEL: nodes.prefix, "db": "yes"}) for s in ("control1", "control2", "control3")]
    [held] = nodes.watched("compute1")
    bmc = cp.bmc()
    credentials = bmc.inventory([*hosts, held])
    cp.api.create(
        f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": BMC_SECRET}, "stringData": credentials}
    )
    workloads.create(cp, namespace, workloads.statefulset("db", "db", node_selector={"db": "yes"}))
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "db"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "db"}}, "minAvailable": 3},
    }
    workloads.create(cp, namespace, pdb)
    wait_value(lambda: one_per_node(cp, namespace, hosts), 60, "db: one pod per node")

    settings = env(
        nodes.prefix,
        ASKLEPIOS_KICKOUT_SECONDS=str(COUNTDOWN),
        ASKLEPIOS_KICKIN_SECONDS=str(COUNTDOWN),
        ASKLEPIOS_MAX_UNHEALTHY="2",  # compute1 held and control3 down at once: control3 must go
        ASKLEPIOS_LEADER_ELECTION="true",
        ASKLEPIOS_NAMESPACE=namespace,  # the Lease and the BMC Secret
        ASKLEPIOS_LEASE_DURATION_SECONDS="4",
        ASKLEPIOS_LEASE_RENEW_SECONDS="3",
        ASKLEPIOS_LEASE_RETRY_SECONDS="1",
        ASKLEPIOS_FENCING="redfish",
        ASKLEPIOS_FENCING_SECRET=BMC_SECRET,
        ASKLEPIOS_BALANCER="true",
        ASKLEPIOS_BALANCER_SELECTOR="application=db",
        ASKLEPIOS_BALANCER_NAMESPACES=namespace,
        ASKLEPIOS_WATCH_TIMEOUT_SECONDS=str(WATCH_TIMEOUT),
    )
    replicas = [asklepios(settings) for _ in range(2)]
    leader_of(replicas)
    targets = {f"asklepios-{i}": r.port for i, r in enumerate(replicas)}
    with Prometheus(tmp_path, targets, namespace) as prom:
        prom.wait('count(up{job="asklepios"} == 1) == 2', 30, "both replicas scraped")
        prom.wait("max(asklepios_watched_nodes and on (instance) (asklepios_is_leader == 1)) == 4", 30, "4 watched")
        # Prometheus' service discovery hands out targets up to 5 s after its start: with the
        # shortened `for:`, AsklepiosDown and AsklepiosNoLeader fire until the first scrapes.
        wait_for(lambda: not prom.alerts(), 30, what="no alert pending or firing before the story")
        start = time.time()
        pause(QUIET, "quiet before the story")

        # 1. A held kickout: compute1 NotReady, its kubelet alive (its kwok keeps renewing the Lease).
        cp.set_ready(held, "False")
        firing = wait_value(lambda: kickout_held_alert(prom, held), 60 + COUNTDOWN, "AsklepiosKickoutHeld firing")
        assert firing["labels"] == {
            "alertname": "AsklepiosKickoutHeld",
            "severity": "warning",
            "node": held,
            "reason": "kubelet alive",
        }
        assert firing["annotations"]["summary"] == f"Kickout of node {held} held: kubelet alive."

        # 2. A kickout: control3 loses power; fenced, kicked out, its pod moves, powered on, kicked in.
        victim = hosts[2]
        power_cut(cp, victim)
        wait_node(cp, victim, has_oos, 60 + COUNTDOWN, "control3 fenced and kicked out")
        for alert, severity in (("AsklepiosNodeKickedOut", "warning"), ("AsklepiosNodeFenced", "critical")):
            notice = wait_value(functools.partial(firing_alert, prom, alert), 30, f"{alert} firing")
            assert notice["labels"] == {"alertname": alert, "severity": severity}, notice
        survivors = set(hosts[:2])
        wait_value(
            lambda: (w := workloads.placement(cp, namespace, "db")) and len(w) == 3 and set(w.values()) <= survivors,
            90,
            "db Running on control1 and control2",
        )
        wait_node(cp, victim, lambda n: not has_oos(n), 90 + COUNTDOWN, "control3 powered on by its BMC and kicked in")

        # 3. The balancer moves the doubled-up pod back to control3, once the PDB lets it.
        prom.wait('sum(asklepios_api_errors_total{operation="evict"}) > 0', 60, "an eviction refused by the PDB")
        cp.api.patch(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/db", {"spec": {"minAvailable": 2}})
        wait_value(lambda: one_per_node(cp, namespace, hosts), 90, "db: one pod per node again")
        prom.wait("sum(asklepios_rebalanced_pods_total) >= 1", 30, "the move confirmed")
        prom.wait("sum(asklepios_kickins_total) >= 1 and sum(asklepios_fencing_total) >= 2", 10, "all scraped")
        prom.wait('sum(asklepios_watch_restarts_total{resource="nodes"}) > 0', WATCH_TIMEOUT + 10, "a watch ended")
        pause(QUIET, "quiet after the story")
        end = time.time() + 1  # the range's last step: every target scraped after it
        prom.wait(f'min(timestamp(up{{job="asklepios"}})) > {end}', 10, "a scrape after the end")
        assert kickout_held_alert(prom, held), "compute1 is held to the end"

        problems = {where: why for where, expr in dashboard_queries() if (why := panel_problem(prom, expr, start, end))}
        assert problems == ALLOWED_EMPTY, json.dumps(problems, indent=1)
        for (title, name), expected in COUNTED.items():
            got = counted(prom, title, name, start, end)
            if expected is None:
                assert got >= 1, f"{title}: {name!r} counted {got}, not this scenario's events"
            else:
                assert round(got) == expected, f"{title}: {name!r} counted {got}, not {expected}"
        fired = {s["metric"]["alertname"] for s in prom.query_range('ALERTS{alertstate="firing"}', start, end)}
        assert fired >= MUST_FIRE, fired
        wrong = {a for a in fired - MUST_FIRE if a not in MAY_FIRE or not prom.query_range(MAY_FIRE[a], start, end)}
        assert not wrong, f"alerts fired that this scenario must not fire: {sorted(wrong)}"

        if PICTURE:
            caption = (
                "Not Grafana: a matplotlib rendering (hack/render-dashboard.py) of the dashboard's own queries on real "
                "data: Prometheus 2.42 scraping two Asklepios replicas in the lab (tests/cluster/test_prometheus.py)."
            )
            render = [sys.executable, str(RENDER), "--prometheus", prom.url, "--start", f"{start:.0f}"]
            render += ["--end", f"{end:.0f}", "--output", PICTURE, "--caption", caption]
            render += ["--strip-prefix", f"{nodes.prefix}-"]  # the test's unique id in the node names
            subprocess.run(render, check=True, timeout=300)


def leader_of(replicas: list[Asklepios]) -> Asklepios:
    def probe() -> Asklepios | None:
        leaders = [r for r in replicas if r.metric("asklepios_is_leader") == 1]
        return leaders[0] if len(leaders) == 1 else None

    return wait_value(probe, 20, "exactly one leader")


def firing_alert(prom: Prometheus, name: str, **labels: str) -> JSON | None:
    """The firing alert `name` whose labels include `labels`, if any."""
    for alert in prom.alerts():
        have = alert["labels"]
        if alert["state"] == "firing" and have["alertname"] == name and labels.items() <= have.items():
            return alert
    return None


def kickout_held_alert(prom: Prometheus, node: str) -> JSON | None:
    return firing_alert(prom, "AsklepiosKickoutHeld", node=node)


def panel_problem(prom: Prometheus, expr: str, start: float, end: float) -> str | None:
    try:
        return no_data(prom.query_range(expr, start, end))
    except QueryError as exc:
        return str(exc)
