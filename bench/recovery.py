"""Scenario 4, recovery: the seed incident, from power cut to balanced again, in phases.

Three control-plane nodes (one kwok each, lab defaults: node Lease 4 s, node-monitor
grace 5 s) run the ``mariadb-server`` and ``rabbitmq-rabbitmq`` StatefulSets, 3
replicas each, preferred pod anti-affinity, tolerating not-ready/unreachable for 2 s.
Asklepios runs with KICKOUT=KICKIN=10 s and the balancer on (selector
``application in (mariadb,rabbitmq)``), ASKLEPIOS_FORCE_DELETE as asked, and
optionally fencing through the lab's Redfish BMC. Each run crashes one node (SIGKILL
of its kwok, kubelet port closed: its BMC still says On, as for a hung machine) and,
once every pod runs elsewhere, restores it (with fencing, Asklepios powers it on
through the BMC itself). Phase ends are receive times of the bench's node and pod
watches, and the BMC's own notifications:

crash -> NotReady (node-monitor grace) -> tainted (kickout: countdown from when
Asklepios saw NotReady, then the evidence: Lease GET, TCP probe, with fencing
ForceOff and the wait for PowerState Off) -> old pods gone (Asklepios' force delete,
or the pod garbage collector's 20 s scan without it) -> replacements Running;
restore (or BMC power On) -> Ready -> untainted (kickin) -> balanced (one pod per
node per StatefulSet).

With ``--volumes`` every pod has a ReadWriteOnce volume through the lab's real
attach/detach chain (:mod:`asklepios_lab.volumes`) and is Ready only once it is
attached to its node, so "Running elsewhere" is "Ready elsewhere with its data", and
"tainted -> old pods gone -> Running" becomes: tainted -> the dead node's
VolumeAttachments gone (the attach-detach controller detaches under the taint, the
CSI attacher unpublishes) -> replacements Ready (attached on their new nodes).
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from asklepios_lab import BmcRecord, workloads
from bench.cluster import lab
from bench.controller import Controller
from bench.results import Steps, epoch, percentile, write_result
from bench.watch import NodeTracker, PodTracker, Watch

JSON = dict[str, Any]
NAMESPACE = "bench-seed"
STATEFULSETS = {"mariadb-server": "mariadb", "rabbitmq-rabbitmq": "rabbitmq"}
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
TIMEOUT = 120.0
KICKOUT_S = 10
GRACE_S = 5.0
FENCING_SECRET = "asklepios-bmc"  # noqa: S105 - the Secret's name, not a password
LOGGED = (
    "node kicked out", "node kicked in", "pod moved", "pod force-deleted", "pods released", "ForceOff sent",
    "BMC confirmed power Off", "node powered on", "eviction refused by a PodDisruptionBudget; will retry",
    "waiting for every replica to be Ready",
)  # fmt: skip


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


VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"


class AttachmentTracker:
    """VolumeAttachments by name (node, attached) and when each was deleted, from a watch."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.live: dict[str, tuple[str, bool]] = {}
        self.gone: dict[str, float] = {}

    def handle(self, t: float, kind: str, obj: JSON) -> None:
        name = str(obj["metadata"]["name"])
        with self.lock:
            if kind == "DELETED":
                self.live.pop(name, None)
                self.gone[name] = t
            else:
                attached = bool((obj.get("status") or {}).get("attached"))
                self.live[name] = (str(obj["spec"].get("nodeName") or ""), attached)
                self.gone.pop(name, None)
            self.lock.notify_all()

    def on(self, node: str) -> set[str]:
        with self.lock:
            return {name for name, (where, _) in self.live.items() if where == node}

    def wait_gone(self, names: set[str], timeout: float) -> float | None:
        """The receive time of the last of ``names`` deleted (None on timeout)."""
        with self.lock:
            if self.lock.wait_for(lambda: names <= self.gone.keys(), timeout):
                return max((self.gone[n] for n in names), default=time.time())
        return None


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


def _bmc_time(records: list[BmcRecord], kind: str, value: str, after: float) -> float | None:
    return next((r.time for r in records if r.kind == kind and r.value == value and r.time >= after), None)


def _since(annotation: str | None) -> float | None:
    data = orjson.loads(annotation) if annotation else None
    return epoch(data.get("since")) if isinstance(data, dict) else None


def _moves_open(ctl: Controller) -> int:
    """Evictions of the balancer whose outcome it has not decided yet (from its log)."""
    counts = {"pod evicted": 0, "pod moved": 0, "rebalance failed": 0}
    for line in ctl.logs():
        msg = line.get("msg")
        if msg in counts:
            counts[str(msg)] += 1
    return counts["pod evicted"] - counts["pod moved"] - counts["rebalance failed"]


def _settle(ctl: Controller, timeout: float = 30.0) -> float:
    """Wait until the balancer has judged its moves (it does at its next round), so the next crash
    cannot be blamed on this run's move; returns how long that took."""
    started = time.monotonic()
    while _moves_open(ctl) > 0 and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return time.monotonic() - started


def _one_run(
    cp: Any,
    nodes: NodeTracker,
    pods: PodTracker,
    victim: str,
    marks: list[JSON],
    *,
    fencing: bool,
    attachments: AttachmentTracker | None = None,
) -> dict[str, float]:
    with pods.lock:
        old = {uid for uid, p in pods.pods.items() if p["node"] == victim}
    old_vas = attachments.on(victim) if attachments is not None else set()
    if attachments is not None and not old_vas:
        raise RuntimeError(f"no VolumeAttachment on {victim} before the crash")
    t_crash = time.time()
    cp.crash(victim)
    t_notready = _need(nodes.wait_for(victim, "notready", t_crash, TIMEOUT), "NotReady", victim)
    t_taint = _need(nodes.wait_for(victim, "taint_on", t_crash, TIMEOUT), "kickout", victim)
    mark = nodes.last(victim, "notready_mark", t_crash)
    deadline = (_since(mark[1]) or t_notready) + KICKOUT_S if mark else t_notready + KICKOUT_S
    _need(pods.wait(lambda: old <= pods.gone.keys(), TIMEOUT), "old pods gone", victim)
    t_gone = max(pods.gone[uid] for uid in old)
    t_vas_gone = None
    if attachments is not None:
        t_vas_gone = _need(attachments.wait_gone(old_vas, TIMEOUT), "old VolumeAttachments gone", victim)
    t_running = _need(pods.wait(lambda: _running_without(pods, victim), TIMEOUT), "Running", victim)
    bmc: list[BmcRecord] = cp.bmc().timeline(victim) if fencing else []
    if fencing:  # Asklepios powers it on through the BMC once its pods are gone
        wait_until = time.monotonic() + TIMEOUT
        while _bmc_time(bmc, "power", "On", t_crash) is None and time.monotonic() < wait_until:
            time.sleep(0.1)
            bmc = cp.bmc().timeline(victim)
        t_restore = _need(_bmc_time(bmc, "power", "On", t_crash), "BMC power On", victim)
    else:
        t_restore = time.time()
        cp.restore(victim, wait_ready=False)
    t_ready = _need(nodes.wait_for(victim, "ready", t_restore, TIMEOUT), "Ready", victim)
    t_untaint = _need(nodes.wait_for(victim, "taint_off", t_restore, TIMEOUT), "kickin", victim)
    t_balanced = _need(pods.wait(lambda: _balanced(pods), TIMEOUT), "balanced", victim)
    if fencing:
        bmc = cp.bmc().timeline(victim)
    mark_t = {"crash": t_crash, "notready": t_notready, "deadline": deadline, "tainted": t_taint, "gone": t_gone,
              "running": t_running, "restore": t_restore, "ready": t_ready, "untainted": t_untaint,
              "balanced": t_balanced}  # fmt: skip
    phases = {
        "crash -> NotReady (node-monitor grace)": t_notready - t_crash,
        "NotReady -> tainted (kickout)": t_taint - t_notready,
        "kickout deadline -> tainted (evidence, PATCH, watch)": t_taint - deadline,
        "tainted -> old pods gone": t_gone - t_taint,
    }
    if t_vas_gone is None:
        phases["old pods gone -> replacements Running (reschedule, start)"] = t_running - t_gone
    else:
        mark_t["vas_gone"] = t_vas_gone
        phases.update({
            "tainted -> old VolumeAttachments gone (detach under the taint)": t_vas_gone - t_taint,
            "old VolumeAttachments gone -> replacements Ready (attach elsewhere, Ready)": t_running - t_vas_gone,
        })  # fmt: skip
    phases["crash -> all Running elsewhere (total)"] = t_running - t_crash
    if fencing:
        force_off = _need(_bmc_time(bmc, "reset", "Off", t_crash), "ForceOff", victim)
        off = _need(_bmc_time(bmc, "power", "Off", t_crash), "power Off", victim)
        on_request = _need(_bmc_time(bmc, "reset", "On", t_crash), "power On request", victim)
        mark_t.update({"force_off": force_off, "off": off, "on_request": on_request})
        phases.update({
            "fencing: kickout deadline -> ForceOff sent": force_off - deadline,
            "fencing: ForceOff -> BMC reports Off (emulator applies it)": off - force_off,
            "fencing: BMC Off -> tainted": t_taint - off,
            "fencing: old pods gone -> power On sent": on_request - t_gone,
            "fencing: power On sent -> BMC reports On": t_restore - on_request,
        })  # fmt: skip
    phases.update({
        "restore -> Ready (kwok restarts, takes the Lease)": t_ready - t_restore,
        "Ready -> untainted (kickin)": t_untaint - t_ready,
        "untainted -> balanced (balancer evictions)": t_balanced - t_untaint,
        "restore -> balanced (total)": t_balanced - t_restore,
    })  # fmt: skip
    marks.append({"victim": victim, **mark_t})
    return phases


def _fencing_setup(lb: Any, names: list[str]) -> dict[str, str]:
    """Every node gets a Redfish system of the lab's BMC; the Secret Asklepios reads; its settings."""
    cp = lb.cp
    bmc = cp.bmc()
    data = bmc.inventory(names)  # <node>.url for each, the credentials and ca.crt
    secret = {
        "metadata": {"name": FENCING_SECRET, "namespace": "kube-system"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    cp.api.create("/api/v1/namespaces/kube-system/secrets", secret)
    return {
        "ASKLEPIOS_FENCING": "redfish",
        "ASKLEPIOS_FENCING_SECRET": FENCING_SECRET,
        "ASKLEPIOS_NAMESPACE": "kube-system",
    }


def scenario_name(force_delete: bool, fencing: bool, volumes: bool = False) -> str:
    if fencing:
        name = "recovery-fencing" if force_delete else "recovery-fencing-no-force-delete"
    else:
        name = "recovery-force-delete" if force_delete else "recovery-no-force-delete"
    return f"{name}-volumes" if volumes else name


def run(
    *, runs: int = 10, force_delete: bool = True, fencing: bool = False, volumes: bool = False, keep: bool = False
) -> Path:
    steps = Steps()
    with lab(bulk=False, keep=keep) as lb:
        cp = lb.cp
        names = [cp.add_node(f"control{i}", control_plane=True)["metadata"]["name"] for i in range(3)]
        lb.create_namespace(NAMESPACE)
        node_tracker, pod_tracker = NodeTracker(), PodTracker()
        node_watch = Watch(cp.api, "/api/v1/nodes", node_tracker.handle).begin()
        pod_watch = Watch(cp.api, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_tracker.handle).begin()
        va_tracker, va_watch = None, None
        if volumes:
            for name in names:
                cp.volumes().add_node(name)
            va_tracker = AttachmentTracker()
            va_watch = Watch(cp.api, VA_PATH, va_tracker.handle).begin()
        for name, app in STATEFULSETS.items():
            sts = statefulset(name, app)
            if volumes:
                cp.volumes().provide(NAMESPACE, name, 3)
                sts = workloads.statefulset(name, app, node_selector={CONTROL_PLANE: ""}, volume=True)
            cp.api.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets", sts)
        if pod_tracker.wait(lambda: _balanced(pod_tracker), TIMEOUT) is None:
            raise TimeoutError("StatefulSets not Running one pod per node")
        extra = _fencing_setup(lb, names) if fencing else {}
        steps.done("control plane, 3 nodes, StatefulSets Running" + (", BMC" if fencing else ""))
        ctl = Controller(
            lb.kubeconfig,
            {
                "ASKLEPIOS_KICKOUT_SECONDS": str(KICKOUT_S),
                "ASKLEPIOS_KICKIN_SECONDS": str(KICKOUT_S),
                "ASKLEPIOS_BALANCER": "true",
                "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
                "ASKLEPIOS_BALANCER_MAX_MOVES_PER_HOUR": "600",  # 10 runs move each StatefulSet 10 times
                # 10 runs kick each of the 3 nodes out 3-4 times within minutes: flapping by design,
                # which would keep a node out (NodeFlapping) from its 4th kickout on
                "ASKLEPIOS_FLAP_MAX_KICKOUTS": "1000",
                "ASKLEPIOS_FORCE_DELETE": str(force_delete).lower(),
                **extra,
            },
            lb.workdir / "logs" / "asklepios.log",
        ).start()
        results: list[dict[str, float]] = []
        marks: list[JSON] = []
        try:
            ctl.wait_ready(60)
            for i in range(runs):
                victim = names[i % len(names)]
                results.append(
                    _one_run(cp, node_tracker, pod_tracker, victim, marks, fencing=fencing, attachments=va_tracker)
                )
                marks[-1]["balancer_settled_after_s"] = _settle(ctl)
                steps.done(f"run {i + 1} ({victim})")
                time.sleep(3)
            metrics = ctl.metrics()
            warnings = ctl.warnings()
            log = [
                {k: v for k, v in line.items()
                 if k in ("ts", "msg", "node", "pod", "to_node", "from_node", "evidence", "late_seconds",
                          "fencing_seconds")}
                for line in ctl.logs()
                if line.get("msg") in LOGGED
            ]  # fmt: skip
        finally:
            ctl.stop()
            node_watch.stop()
            pod_watch.stop()
            if va_watch is not None:
                va_watch.stop()
    phases = {
        phase: {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values),
            "min": min(values),
            "values": values,
        }
        for phase in results[0]
        for values in [[r[phase] for r in results]]
    }
    total = "crash -> all Running elsewhere (total)"
    goal = GRACE_S + KICKOUT_S + (3.0 if volumes else 2.0)  # issue 21: + 3 s with volumes
    summary = {
        "runs": len(results),
        "force_delete": force_delete,
        "fencing": fencing,
        "volumes": volumes,
        "phases": phases,
        "goal_crash_to_running_s": goal,
        "runs_within_goal": sum(1 for r in results if r[total] <= goal),
        "kickouts": metrics.get("asklepios_kickouts_total"),
        "kickins": metrics.get("asklepios_kickins_total"),
        "rebalanced_pods": metrics.get("asklepios_rebalanced_pods_total"),
        "rebalance_failures": metrics.get("asklepios_rebalance_failures_total"),
        "pods_force_deleted": metrics.get("asklepios_pods_force_deleted_total"),
        "fencing_seconds_sum": metrics.get("asklepios_fencing_seconds_sum"),
        "fencing_seconds_count": metrics.get("asklepios_fencing_seconds_count"),
        "kickout_delay_sum": metrics.get("asklepios_kickout_delay_seconds_sum"),
        "kickout_delay_count": metrics.get("asklepios_kickout_delay_seconds_count"),
        "asklepios_warnings": warnings,
    }
    params = {"runs": runs, "kickout_s": KICKOUT_S, "kickin_s": KICKOUT_S, "toleration_s": 2,
              "node_monitor_grace_s": GRACE_S, "node_lease_s": 4, "force_delete": force_delete, "fencing": fencing,
              "balancer_max_moves_per_hour": 600, "volumes": volumes}  # fmt: skip
    raw = {"runs": results, "marks": marks, "asklepios_log": log}
    name = scenario_name(force_delete, fencing, volumes)
    return write_result(name, "recovery", params=params, summary=summary, raw=raw, steps=steps)
