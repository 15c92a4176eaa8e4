"""Scenario 3, memory and CPU: Asklepios at thousands of nodes and tens of thousands of pods.

Bulk kwok nodes (all watched) carry balancer pods (label ``asklepios.io/balance=true``)
owned by real StatefulSets: the kube-controller-manager creates them, with
``schedulerName: bench-binder`` so that kube-scheduler leaves them alone, and the
bench binds each one itself (``pods/binding``, as a scheduler does) to a node chosen
so that no StatefulSet has two pods on one node: the balancer has nothing to move,
which is the steady state. kwok then marks them Running.

Phases measured on the controller process (``/proc``, sampled every second):
initial sync (start until both lists are in and 10 s passed), a steady window, and
a burst of ``burst`` nodes powered off with the guard off (the lab's ``crash``: their
kwok stops renewing their Leases, node-lifecycle marks them Unknown after its grace
period, Asklepios kicks them out, and the control plane evicts the pods there, which
the StatefulSets recreate), in two waves: ``FIRST_WAVE`` nodes at once, then the rest
(see FIRST_WAVE). Between the steady window and the burst, a second controller runs
under ``tracemalloc`` (``bench.tracemem``) to show what the synced RSS is made of.
On a lab without ``crash`` for single
bulk nodes the burst falls back to ``set_ready(False)``, which Asklepios now holds
(their Leases are still renewed): then it measures held kickouts, not deaths.
The bench also parses the same pods and nodes with Asklepios' own parsers under
``tracemalloc``, which sizes the caches apart from the interpreter and libraries, and
measures what importing Asklepios costs (``bench.tracemem --imports``).

``ASKLEPIOS_BENCH_MEMORY_BASELINE=<commit>[,<commit>...]`` also runs those commits'
Asklepios (a ``git archive`` snapshot of ``src/asklepios`` on ``PYTHONPATH``) against the
same cluster before the measured one, each up to its sync and a minute after: a
before/after on one lab, one machine, one load.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from asklepios.engine.podshard import PodShard
from asklepios.kube.nodes import parse_node
from asklepios.kube.pods import parse_pod
from asklepios.kube.reflector import object_key
from asklepios_lab import Api
from bench import REPO_DIR
from bench.cluster import WATCHED_LABEL, Lab, lab
from bench.controller import Controller, Sampler
from bench.results import Steps, write_result
from bench.tracemem import import_costs
from bench.watch import NodeTracker, Watch

JSON = dict[str, Any]
NAMESPACE = "bench-pods"
REPLICAS = 100
SCHEDULER = "bench-binder"
BASELINE_ENV = "ASKLEPIOS_BENCH_MEMORY_BASELINE"
# The burst comes in two waves: Asklepios follows each kicked-out node with its own pod
# watch, one pooled connection each, and kubernetes-asyncio's pool holds 100 connections;
# beyond that, its other requests (Lease reads, the kickout PATCH) wait for a watch to end.
FIRST_WAVE = 90


def statefulset(name: str, replicas: int) -> JSON:
    labels = {"app.kubernetes.io/name": name, "asklepios.io/balance": "true", "tier": "bench"}
    container = {
        "name": "main",
        "image": "registry.local/bench/app:1.0",
        "ports": [{"containerPort": 8080, "name": "http"}],
        "env": [{"name": "MODE", "value": "bench"}, {"name": "REPLICA_SET", "value": name}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "schedulerName": SCHEDULER,
                    "containers": [container],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def _bind_all(api: Api, nodes: list[str], total: int, timeout: float = 3600) -> None:
    """Bind every pending pod: pod ``sts-S-I`` goes to node ``(S * REPLICAS + I) % len(nodes)``."""
    bound, deadline = 0, time.monotonic() + timeout

    def bind(pod: JSON) -> bool:
        name = pod["metadata"]["name"]
        _, s, i = name.rsplit("-", 2)
        node = nodes[(int(s) * REPLICAS + int(i)) % len(nodes)]
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}  # fmt: skip
        status, _ = api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/binding", body)
        return 200 <= status < 300  # a failed binding leaves the pod unbound: listed and tried again

    with ThreadPoolExecutor(12) as pool:
        while bound < total and time.monotonic() < deadline:
            page = api.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                           query={"fieldSelector": "spec.nodeName=", "limit": "2000"})  # fmt: skip
            items = page["items"]
            if not items:
                time.sleep(2)
                continue
            bound += sum(pool.map(bind, items))
            print(f"[memory] bound {bound}/{total} pods", flush=True)


def _wait_ready(api: Api, total: int, timeout: float = 1800) -> int:
    """Wait until every pod is Ready; returns how many had to be marked Ready by hand.

    Under the load of creating them, node-lifecycle may mark a node that kwok was slow to
    initialise Unknown and its pods NotReady; kwok re-initialises the node but never sets
    a Running pod Ready again. After a minute without progress such pods get Ready=True
    (what their kubelet would post), so the setup ends; the count is reported.
    """
    deadline, repaired = time.monotonic() + timeout, 0
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        sets = api.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets")["items"]
        ready = sum(int(s.get("status", {}).get("readyReplicas", 0)) for s in sets)
        if ready >= total:
            return repaired
        if ready != last:
            last, since = ready, time.monotonic()
        elif time.monotonic() - since > 60:
            for sts in sets:
                if int(sts.get("status", {}).get("readyReplicas", 0)) < REPLICAS:
                    repaired += _mark_ready(api, sts["metadata"]["name"])
            since = time.monotonic()
        print(f"[memory] {ready}/{total} pods Ready", flush=True)
        time.sleep(10)
    raise TimeoutError("pods not Ready")


def _mark_ready(api: Api, statefulset_name: str) -> int:
    pods = api.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                   query={"labelSelector": f"app.kubernetes.io/name={statefulset_name}"})["items"]  # fmt: skip
    count = 0
    for pod in pods:
        conditions = pod.get("status", {}).get("conditions") or ()
        if pod["spec"].get("nodeName") and not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            api.patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/status",
                      {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "strategic")  # fmt: skip
            count += 1
    return count


def _size_caches(api: Api) -> JSON:
    """Bytes held by Asklepios' parsed views of every node and pod (tracemalloc).

    The list pages are fetched as bytes first; decoding happens under tracing, page by
    page, and each page is dropped after parsing, as the reflector does: what stays is
    the cache, including the strings it shares with the decoded JSON. Pods go through the
    balancer's own store (`PodShard`), nodes are keyed as the reflector keys them.
    """
    result: JSON = {}
    for what, path in (("nodes", "/api/v1/nodes"), ("pods", "/api/v1/pods")):
        pages: list[bytes] = []
        query = {"limit": "500"}
        while True:
            status, body = api.request("GET", path, query=query)
            if status != 200:
                raise RuntimeError(f"list {path} -> {status}")
            pages.append(body)
            token = orjson.loads(body)["metadata"].get("continue")
            if not token:
                break
            query["continue"] = token
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        cache: dict[str, Any] = {}
        shard = PodShard(cache)
        for body in pages:
            for o in orjson.loads(body)["items"]:
                if what == "pods":
                    shard.upsert(object_key(o), parse_pod(o))
                else:
                    cache[object_key(o)] = parse_node(o)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        result[what] = {"objects": len(cache), "mib": held / 2**20, "bytes_each": held / max(1, len(cache))}
        del pages, cache
    return result


def _pods_listed(ctl: Controller, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in ctl.logs():
            if line.get("msg") == "listed" and line.get("resource") == "/api/v1/pods":
                return time.time()
        time.sleep(0.5)
    raise TimeoutError("asklepios never listed the pods")


def _profile(lb: Lab, env: dict[str, str]) -> JSON:
    """A second controller under tracemalloc (bench.tracemem): what the synced caches are made of."""
    out = lb.workdir / "tracemalloc.json"
    prof = Controller(lb.kubeconfig, env, lb.workdir / "logs" / "asklepios-tracemalloc.log",
                      argv=[sys.executable, "-m", "bench.tracemem", str(out)]).start()  # fmt: skip
    try:
        prof.wait_ready(900)
        _pods_listed(prof, 900)
        time.sleep(10)
        os.kill(prof.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 300
        while not out.exists() and time.monotonic() < deadline and prof.proc and prof.proc.poll() is None:
            time.sleep(1)
        time.sleep(2)
    finally:
        prof.stop()
    report: JSON = orjson.loads(out.read_bytes()) if out.exists() else {"error": "no tracemalloc report"}
    return report


def _snapshot(commit: str) -> tuple[str, Path]:
    """(short commit, directory to put on PYTHONPATH) of a read-only copy of its src/asklepios."""
    short = subprocess.run(["git", "rev-parse", "--short", commit], cwd=REPO_DIR, capture_output=True, text=True,
                           check=True).stdout.strip()  # fmt: skip
    target = Path(tempfile.mkdtemp(prefix=f"asklepios-baseline-{short}-"))
    archive = subprocess.run(["git", "archive", "--format=tar", short, "src/asklepios"], cwd=REPO_DIR,
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return short, target


def _baseline(lb: Lab, env: dict[str, str], commit: str, steady: float = 60.0) -> JSON:
    """Another commit's Asklepios on the same cluster: RSS and CPU up to its sync, and a minute after."""
    short, target = _snapshot(commit)
    log_path = lb.workdir / "logs" / f"asklepios-baseline-{short}.log"
    ctl = Controller(lb.kubeconfig, {**env, "PYTHONPATH": str(target / "src")}, log_path).start()
    sampler = Sampler(ctl, interval=1.0)
    sampler.start()
    try:
        ctl.wait_ready(600)
        listed_at = _pods_listed(ctl, 600)
        time.sleep(10)
        sync_end = time.time()
        time.sleep(steady)
        steady_end = time.time()
    finally:
        sampler.stop()
        ctl.stop()
        shutil.rmtree(target, ignore_errors=True)
    return {
        "commit": short,
        "pods_listed_after_s": listed_at - ctl.started_at,
        "phases": {
            "initial sync (start to lists in +10 s)": sampler.window(ctl.started_at, sync_end),
            f"steady ({steady:.0f} s)": sampler.window(sync_end, steady_end),
        },
        "samples": sampler.samples,
    }


def _kicked_out(tracker: NodeTracker, chosen: list[str], since: float, timeout: float) -> JSON:
    """Wait until every node of ``chosen`` carries the out-of-service taint, at most ``timeout``."""
    done = tracker.wait(lambda: all(tracker.tainted.get(n, False) for n in chosen), timeout)
    with tracker.lock:
        count = sum(1 for n in chosen if tracker.tainted.get(n, False))
    return {"nodes": len(chosen), "kicked_out": count, "all": done, "after_s": time.time() - since}


def _power_off(lb: Lab, chosen: list[str]) -> str:
    """Take ``chosen`` down at once: a power cut if the lab can cut single bulk nodes, else NotReady."""
    crash = hasattr(lb.cp, "crash") and hasattr(lb.cp, "powered_off")

    def act(name: str) -> None:
        if crash:
            lb.cp.crash(name)
        else:
            lb.cp.set_ready(name, "False")

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(act, chosen))
    return "crash" if crash else "set_ready False"


def add_pods(lb: Lab, names: list[str], pods: int) -> int:
    """``pods`` balancer pods on ``names`` (StatefulSets of REPLICAS), all Running and Ready;
    returns how many the bench had to mark Ready (see ``_wait_ready``)."""
    lb.create_namespace(NAMESPACE)
    api = lb.cp.api
    for s in range(pods // REPLICAS):
        api.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets", statefulset(f"sts-{s:04d}", REPLICAS))
    _bind_all(api, names, pods)
    return _wait_ready(api, pods)


def _setup(lb: Lab, nodes: int, pods: int, steps: Steps) -> tuple[list[str], int]:
    names = lb.add_nodes(nodes, timeout=1800)
    steps.done(f"{nodes} bulk nodes Ready")
    repaired = add_pods(lb, names, pods)
    steps.done(f"{pods} pods created, bound, Running")
    return names, repaired


def run(
    nodes: int = 5000,
    *,
    pods_per_node: int = 10,
    window: float = 600.0,
    burst: int = 500,
    profiled: bool = True,
    keep: bool = False,
) -> Path:
    steps = Steps()
    load_start = os.getloadavg()
    pods = nodes * pods_per_node // REPLICAS * REPLICAS
    baseline_commits = [c for c in os.environ.get(BASELINE_ENV, "").split(",") if c]
    baselines: list[JSON] = []
    with lab(keep=keep) as lb:
        steps.done("control plane up")
        names, repaired = _setup(lb, nodes, pods, steps)
        tracker = NodeTracker()
        watch = Watch(lb.cp.api, "/api/v1/nodes", tracker.handle, {"labelSelector": f"{WATCHED_LABEL}=true"})
        watch.begin()
        env = {
            "ASKLEPIOS_NODE_SELECTOR": f"{WATCHED_LABEL}=true",
            "ASKLEPIOS_MAX_UNHEALTHY": "100%",
            "ASKLEPIOS_BALANCER": "true",
            "ASKLEPIOS_KICKOUT_SECONDS": "10",
            "ASKLEPIOS_KICKIN_SECONDS": "10",
        }
        for commit in baseline_commits:
            baselines.append(_baseline(lb, env, commit))
            steps.done(f"baseline {baselines[-1]['commit']}: synced, +60 s")
        ctl = Controller(lb.kubeconfig, env, lb.workdir / "logs" / "asklepios.log").start()
        sampler = Sampler(ctl, interval=1.0)
        sampler.start()
        try:
            ready_at = ctl.wait_ready(600)
            listed_at = _pods_listed(ctl, 600)
            time.sleep(10)
            sync_end = time.time()
            steps.done("asklepios synced (nodes and pods)")
            time.sleep(window)
            steady_end = time.time()
            steps.done(f"steady window {window:.0f} s")
            # Before the burst: a synced cluster with no kicked-out node, as after the sync.
            profile = _profile(lb, env) if profiled else {}
            steps.done("controller under tracemalloc")
            burst_start = time.time()
            chosen = names[:: max(1, nodes // burst)][:burst]
            first, rest = chosen[:FIRST_WAVE], chosen[FIRST_WAVE:]
            how = _power_off(lb, first)
            waves = [_kicked_out(tracker, first, burst_start, 600)]
            time.sleep(30)
            first_end = burst_end = time.time()
            steps.done(f"burst, wave 1: {len(first)} nodes down at once ({how}), kicked out, +30 s")
            if rest:
                _power_off(lb, rest)
                waves.append(_kicked_out(tracker, chosen, first_end, 600))
                time.sleep(30)
                burst_end = time.time()
                steps.done(f"burst, wave 2: {len(rest)} more down ({len(chosen)} in all), kicked out or 600 s, +30 s")
            peak = ctl.peak_rss_bytes() / 2**20
            metrics = ctl.metrics()
            warnings = ctl.warnings()
        finally:
            sampler.stop()
            ctl.stop()
            watch.stop()
        caches = _size_caches(lb.cp.api)
        steps.done("cache sizing (tracemalloc)")
    imports = import_costs()
    steps.done("import costs")
    down = "powered off" if how == "crash" else "set NotReady"
    summary = {
        "nodes": nodes,
        "pods": pods,
        "pods_marked_ready_by_bench": repaired,
        "phases": {
            "initial sync (start to lists in +10 s)": sampler.window(ctl.started_at, sync_end),
            f"steady ({window:.0f} s)": sampler.window(sync_end, steady_end),
            f"burst, wave 1 ({len(first)} nodes {down} at once, to all kicked out +30 s)": sampler.window(
                burst_start, first_end
            ),
            **(
                {
                    f"burst, wave 2 (+{len(rest)} nodes, {len(chosen)} down, to all kicked out or 600 s, +30 s)": (
                        sampler.window(first_end, burst_end)
                    )
                }
                if rest
                else {}
            ),
        },
        "burst_waves": waves,
        "burst_how": how,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "nodes_synced_after_s": ready_at - ctl.started_at,
        "pods_listed_after_s": listed_at - ctl.started_at,
        "peak_rss_mib_vmhwm": peak,
        "kickouts": metrics.get("asklepios_kickouts_total"),
        "asklepios_watch_restarts": {k: v for k, v in metrics.items() if k.startswith("asklepios_watch_restarts")},
        "asklepios_warnings": warnings,
        "cache_sizes_tracemalloc": caches,
        "import_costs": imports,
        "baselines": [{k: v for k, v in b.items() if k != "samples"} for b in baselines],
        "controller_tracemalloc": {
            k: v for k, v in profile.items() if not k.startswith("by_line") and k != "by_traceback"
        },
    }
    params = {"nodes": nodes, "pods": pods, "replicas_per_statefulset": REPLICAS, "window_s": window,
              "burst": burst, "baselines": baseline_commits}  # fmt: skip
    raw = {"samples": sampler.samples, "tracemalloc": profile,
           "baseline_samples": {b["commit"]: b["samples"] for b in baselines}}  # fmt: skip
    name = "memory" if nodes == 5000 else f"memory-{nodes}"
    return write_result(name, "memory", params=params, summary=summary, raw=raw, steps=steps)
