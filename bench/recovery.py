"""Scenario 4, recovery: the seed incident, from power cut to balanced again, in phases.

Three control-plane nodes (one kwok each, lab defaults: node Lease 4 s, node-monitor
grace 5 s) run the ``mariadb-server`` and ``rabbitmq-rabbitmq`` StatefulSets, 3
replicas each, preferred pod anti-affinity, tolerating not-ready/unreachable for 2 s.
Asklepios runs with KICKOUT=KICKIN=10 s and the balancer on (selector
``application in (mariadb,rabbitmq)``). Each run crashes one node (SIGKILL of its
kwok) and, once every pod runs elsewhere, restores it. Phase ends are receive times
of the bench's own node and pod watches:

crash -> NotReady (node-monitor grace) -> tainted (kickout) -> old pods gone (the pod
garbage collector force-deletes them; it scans every 20 s) -> replacements Running;
restore -> Ready -> untainted (kickin) -> balanced (one pod per node per StatefulSet).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.cluster import lab
from bench.controller import Controller
from bench.results import Steps, write_result
from bench.watch import NodeTracker, PodTracker, Watch

JSON = dict[str, Any]
NAMESPACE = "bench-seed"
STATEFULSETS = {"mariadb-server": "mariadb", "rabbitmq-rabbitmq": "rabbitmq"}
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
TIMEOUT = 120.0


def statefulset(name: str, application: str) -> JSON:
    labels = {"application": application, "app.kubernetes.io/name": name}
    tolerations: list[JSON] = [
        {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
        for k in ("not-ready", "unreachable")
    ]
    anti = {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {CONTROL_PLANE: ""},
                    "tolerations": tolerations,
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [anti]}},
                    "containers": [{"name": "main", "image": f"registry.local/{application}:1"}],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def _members(pods: PodTracker, name: str) -> list[JSON]:
    return [
        p for p in pods.pods.values()
        if p["labels"].get("app.kubernetes.io/name") == name and not p["deleting"]
    ]  # fmt: skip


def _running_without(pods: PodTracker, victim: str) -> bool:
    return all(
        len(m := _members(pods, name)) == 3 and all(p["ready"] and p["node"] not in ("", victim) for p in m)
        for name in STATEFULSETS
    )


def _balanced(pods: PodTracker) -> bool:
    return all(
        len(m := _members(pods, name)) == 3 and all(p["ready"] for p in m) and len({p["node"] for p in m}) == 3
        for name in STATEFULSETS
    )


def _need(value: float | None, what: str, victim: str) -> float:
    if value is None:
        raise TimeoutError(f"{what} not seen within {TIMEOUT}s (victim {victim})")
    return value


def _one_run(cp: Any, nodes: NodeTracker, pods: PodTracker, victim: str, marks: list[JSON]) -> dict[str, float]:
    with pods.lock:
        old = {uid for uid, p in pods.pods.items() if p["node"] == victim}
    t_crash = time.time()
    cp.crash(victim)
    t_notready = _need(nodes.wait_for(victim, "notready", t_crash, TIMEOUT), "NotReady", victim)
    t_taint = _need(nodes.wait_for(victim, "taint_on", t_crash, TIMEOUT), "kickout", victim)
    _need(pods.wait(lambda: old <= pods.gone.keys(), TIMEOUT), "old pods gone", victim)
    t_gone = max(pods.gone[uid] for uid in old)
    t_running = _need(pods.wait(lambda: _running_without(pods, victim), TIMEOUT), "Running", victim)
    t_restore = time.time()
    cp.restore(victim, wait_ready=False)
    t_ready = _need(nodes.wait_for(victim, "ready", t_restore, TIMEOUT), "Ready", victim)
    t_untaint = _need(nodes.wait_for(victim, "taint_off", t_restore, TIMEOUT), "kickin", victim)
    t_balanced = _need(pods.wait(lambda: _balanced(pods), TIMEOUT), "balanced", victim)
    marks.append({"victim": victim, "crash": t_crash, "notready": t_notready, "tainted": t_taint,
                  "gone": t_gone, "running": t_running, "restore": t_restore, "ready": t_ready,
                  "untainted": t_untaint, "balanced": t_balanced})  # fmt: skip
    return {
        "crash -> NotReady (node-monitor grace)": t_notready - t_crash,
        "NotReady -> tainted (kickout)": t_taint - t_notready,
        "tainted -> old pods gone (pod GC force-delete)": t_gone - t_taint,
        "old pods gone -> replacements Running (reschedule, start)": t_running - t_gone,
        "crash -> all Running elsewhere (total)": t_running - t_crash,
        "restore -> Ready (kwok restarts, takes the Lease)": t_ready - t_restore,
        "Ready -> untainted (kickin)": t_untaint - t_ready,
        "untainted -> balanced (balancer evictions)": t_balanced - t_untaint,
        "restore -> balanced (total)": t_balanced - t_restore,
    }


def run(*, runs: int = 5, keep: bool = False) -> Path:
    steps = Steps()
    with lab(bulk=False, keep=keep) as lb:
        cp = lb.cp
        names = [cp.add_node(f"control{i}", control_plane=True)["metadata"]["name"] for i in range(3)]
        lb.create_namespace(NAMESPACE)
        node_tracker, pod_tracker = NodeTracker(), PodTracker()
        node_watch = Watch(cp.api, "/api/v1/nodes", node_tracker.handle).begin()
        pod_watch = Watch(cp.api, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_tracker.handle).begin()
        for name, app in STATEFULSETS.items():
            cp.api.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets", statefulset(name, app))
        if pod_tracker.wait(lambda: _balanced(pod_tracker), TIMEOUT) is None:
            raise TimeoutError("StatefulSets not Running one pod per node")
        steps.done("control plane, 3 nodes, StatefulSets Running")
        ctl = Controller(
            lb.kubeconfig,
            {
                "ASKLEPIOS_KICKOUT_SECONDS": "10",
                "ASKLEPIOS_KICKIN_SECONDS": "10",
                "ASKLEPIOS_BALANCER": "true",
                "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
            },
            lb.workdir / "logs" / "asklepios.log",
        ).start()
        results: list[dict[str, float]] = []
        marks: list[JSON] = []
        try:
            ctl.wait_ready(60)
            for i in range(runs):
                victim = names[i % len(names)]
                results.append(_one_run(cp, node_tracker, pod_tracker, victim, marks))
                steps.done(f"run {i + 1} ({victim})")
                time.sleep(3)
            metrics = ctl.metrics()
            warnings = ctl.warnings()
            log = [
                {k: v for k, v in line.items() if k in ("ts", "msg", "node", "pod", "to_node", "from_node")}
                for line in ctl.logs()
                if line.get("msg") in ("node kicked out", "node kicked in", "pod moved", "eviction refused "
                                       "by a PodDisruptionBudget; will retry", "waiting for every replica to be Ready")
            ]  # fmt: skip
        finally:
            ctl.stop()
            node_watch.stop()
            pod_watch.stop()
    phases = {
        phase: {
            "median": statistics.median(r[phase] for r in results),
            "max": max(r[phase] for r in results),
            "min": min(r[phase] for r in results),
            "values": [r[phase] for r in results],
        }
        for phase in results[0]
    }
    summary = {
        "runs": len(results),
        "phases": phases,
        "kickouts": metrics.get("asklepios_kickouts_total"),
        "kickins": metrics.get("asklepios_kickins_total"),
        "rebalanced_pods": metrics.get("asklepios_rebalanced_pods_total"),
        "asklepios_warnings": warnings,
    }
    params = {"runs": runs, "kickout_s": 10, "kickin_s": 10, "toleration_s": 2, "node_monitor_grace_s": 5,
              "node_lease_s": 4}  # fmt: skip
    raw = {"runs": results, "marks": marks, "asklepios_log": log}
    return write_result("recovery", "recovery", params=params, summary=summary, raw=raw, steps=steps)
