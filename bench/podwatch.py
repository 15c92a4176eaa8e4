"""Scenario 5, the pod-watch choice: one watch per kicked-out node vs one cluster-wide pod watch.

Asklepios follows the pods of each kicked-out node with its own list+watch
(``/api/v1/pods?fieldSelector=spec.nodeName=<node>``, ``engine/nodepods.py``). The
alternative is one cluster-wide pod watch kept all the time. This scenario measures
both on the same cluster: 5000 bulk nodes with 10 pods each (50,000 pods, created as
the memory scenario creates them, by importing ``bench.memory``'s helpers).

Each configuration runs in a fresh child process (``python -m bench.podwatch child``)
that uses Asklepios' own code and identity (the measured commit, see
``bench.controller.SOURCE``):

* ``none``: the same imports and client, no pod watch (the baseline);
* ``per-node xK``: ``NodePodWatches.follow`` on K nodes, as K kicked-out nodes;
* ``cluster-wide``: one ``Reflector`` of ``/api/v1/pods`` with ``parse_pod_ref``,
  keeping every pod's ``PodRef``, i.e. what a cluster-wide watch would need.

For each: time from starting the watches to all listed (child's clock), RSS after the
sync and its peak (``/proc``, VmRSS / VmHWM), CPU of the child, kube-apiserver's and
etcd's CPU during the sync, then during a churn (``churn`` pods, one per node, get an
annotation patched: each a MODIFIED event for whoever watches it) and an idle window;
and the events the child received. Separately, the bench lists the pods itself as the
reflector does (pages of 500): bytes and time of the whole cluster's list, and of one
node's. CPU of the apiserver is shown as measured and minus its idle rate (kwok's
5000 Lease renewals a minute and the controllers run all the time).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import REPO_DIR
from bench.controller import CLOCK_TICKS, SOURCE
from bench.results import Steps, write_result

JSON = dict[str, Any]
PAGE = 500  # the reflector's page size
SETTLE_S = 5.0
IDLE_S = 20.0
CHURN_ANNOTATION = "bench.asklepios.dev/churn"


# --------------------------------------------------------------------------- the child


def _rss_kib() -> tuple[int, int]:
    rss = hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def child(kubeconfig: str, mode: str, nodes: list[str], out: Path) -> None:
    """Run one configuration until SIGTERM; report to ``out`` (one JSON object per line)."""
    import anyio  # noqa: PLC0415 - the child imports what the controller imports, the parent needs none of it

    from asklepios.engine.nodepods import NodePodWatches  # noqa: PLC0415
    from asklepios.kube.client import KubeClient  # noqa: PLC0415
    from asklepios.kube.pods import parse_pod_ref  # noqa: PLC0415
    from asklepios.kube.reflector import Reflector  # noqa: PLC0415

    events = {"n": 0}

    def report(**fields: Any) -> None:
        with out.open("a") as f:
            f.write(json.dumps(fields) + "\n")

    class CountingStore:
        def __init__(self, on_sync: Callable[[], None]) -> None:
            self.items: dict[str, Any] = {}
            self.synced = False
            self.on_sync = on_sync

        def replace(self, items: dict[str, Any]) -> None:
            self.items, self.synced = items, True
            self.on_sync()

        def upsert(self, key: str, item: Any) -> None:
            self.items[key] = item
            events["n"] += 1

        def delete(self, key: str) -> None:
            self.items.pop(key, None)
            events["n"] += 1

    async def main() -> None:
        async with KubeClient.connect(kubeconfig) as client, anyio.create_task_group() as tg:
            started = time.perf_counter()
            ready = anyio.Event()

            def check() -> None:
                if synced():
                    ready.set()

            def changed(node: str) -> None:
                events["n"] += 1
                check()

            store = CountingStore(check)
            watches = NodePodWatches(client, 290, changed=changed)

            def synced() -> bool:
                return store.synced if mode == "cluster" else all(watches.pods(n) is not None for n in nodes)

            def count() -> int:
                return len(store.items) if mode == "cluster" else sum(len(watches.pods(n) or ()) for n in nodes)

            if mode == "cluster":
                reflector = Reflector(client=client, path="/api/v1/pods", parse=parse_pod_ref, watch_timeout=290)
                tg.start_soon(reflector.run, store)
            else:
                for node in nodes:  # followed before run(): started together when it starts
                    watches.follow(node)
                tg.start_soon(watches.run)
            check()
            await ready.wait()
            listed = time.perf_counter() - started
            gc.collect()
            events["n"] = 0  # the replace() of each node store counted as a change
            report(event="synced", list_s=listed, items=count(), rss_kib=_rss_kib()[0])
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    rss, hwm = _rss_kib()
                    report(event="final", events=events["n"], items=count(), rss_kib=rss, hwm_kib=hwm)
                    tg.cancel_scope.cancel()
                    return

    anyio.run(main)


# -------------------------------------------------------------------------- the parent


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_mib(pid: int) -> tuple[float, float]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss / 1024, hwm / 1024


class Cpus:
    """CPU seconds of the apiserver and etcd between two marks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {k: pids[k] for k in ("kube-apiserver", "etcd")}

    def now(self) -> dict[str, float]:
        return {k: _cpu(p) for k, p in self.pids.items()}

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def _list_bytes(api: Any, query: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, bytes, items) of a paged list of pods, as the reflector lists."""
    started, size, items = time.perf_counter(), 0, 0
    q = {**query, "limit": str(PAGE)}
    while True:
        status, body = api.request("GET", "/api/v1/pods", query=q, timeout=120)
        if status != 200:
            raise RuntimeError(f"list pods -> {status}")
        size += len(body)
        page = json.loads(body)
        items += len(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return time.perf_counter() - started, size, items
        q["continue"] = token


def _direct_lists(api: Any, cpus: Cpus, followed: list[str], reps: int = 3) -> JSON:
    """The bench's own paged lists: the whole cluster's pods, and one node's."""
    out: JSON = {}
    runs: list[JSON] = []
    for _ in range(reps):
        before = cpus.now()
        seconds, size, items = _list_bytes(api, {})
        runs.append({"seconds": seconds, "bytes": size, "items": items, "cpu_s": Cpus.since(before, cpus.now())})
    out["cluster_wide"] = {
        "runs": runs,
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "bytes": runs[-1]["bytes"],
        "items": runs[-1]["items"],
        "apiserver_cpu_s_median": statistics.median(r["cpu_s"]["kube-apiserver"] for r in runs),
    }
    node_runs: list[JSON] = []
    for node in followed:
        before = cpus.now()
        seconds, size, items = _list_bytes(api, {"fieldSelector": f"spec.nodeName={node}"})
        node_runs.append({"node": node, "seconds": seconds, "bytes": size, "items": items,
                          "cpu_s": Cpus.since(before, cpus.now())})  # fmt: skip
    out["one_node"] = {
        "runs": node_runs,
        "seconds_median": statistics.median(r["seconds"] for r in node_runs),
        "bytes_median": statistics.median(r["bytes"] for r in node_runs),
        "items_median": statistics.median(r["items"] for r in node_runs),
        "apiserver_cpu_s_median": statistics.median(r["cpu_s"]["kube-apiserver"] for r in node_runs),
    }
    return out


def _churn(api: Any, namespace: str, pods: list[str], round_no: int) -> float:
    """Patch an annotation on each of ``pods`` (8 at a time); returns the seconds it took."""
    started = time.perf_counter()
    body = {"metadata": {"annotations": {CHURN_ANNOTATION: str(round_no)}}}

    def patch(name: str) -> None:
        api.patch(f"/api/v1/namespaces/{namespace}/pods/{name}", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(patch, pods))
    return time.perf_counter() - started


def _wait_line(path: Path, event: str, proc: subprocess.Popen[bytes], timeout: float) -> JSON:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                parsed: JSON = json.loads(line)
                if parsed.get("event") == event:
                    return parsed
        if proc.poll() is not None:
            raise RuntimeError(f"podwatch child exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"podwatch child: no {event!r} within {timeout}s")


def _configuration(lb: Any, cpus: Cpus, mode: str, nodes: list[str], churn_pods: list[str], round_no: int) -> JSON:
    from bench.memory import NAMESPACE  # noqa: PLC0415 - with its helpers, below

    work = lb.workdir / f"podwatch-{mode}-{len(nodes)}"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "report.jsonl"
    # the apiserver's idle rate just before, to tell what the watches add
    idle_before = cpus.now()
    time.sleep(10)
    background = {k: v / 10 for k, v in Cpus.since(idle_before, cpus.now()).items()}
    env = {**os.environ, **SOURCE.env()}
    argv = [sys.executable, "-m", "bench.podwatch", "child", str(lb.kubeconfig), mode, str(out), *nodes]
    with (work / "child.log").open("wb") as log:
        start_cpu, t0 = cpus.now(), time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT)
        try:
            synced = _wait_line(out, "synced", proc, 600)
            sync_s, sync_cpu = time.monotonic() - t0, Cpus.since(start_cpu, cpus.now())
            child_cpu_sync = _cpu(proc.pid)
            time.sleep(SETTLE_S)
            rss_synced, hwm_synced = _rss_mib(proc.pid)
            before, child_before, t1 = cpus.now(), _cpu(proc.pid), time.monotonic()
            churn_s = _churn(lb.cp.api, NAMESPACE, churn_pods, round_no)
            time.sleep(SETTLE_S)
            churn_window = time.monotonic() - t1
            churn_cpu, child_churn = Cpus.since(before, cpus.now()), _cpu(proc.pid) - child_before
            before, child_before = cpus.now(), _cpu(proc.pid)
            time.sleep(IDLE_S)
            idle_cpu, child_idle = Cpus.since(before, cpus.now()), _cpu(proc.pid) - child_before
            rss_end, hwm_end = _rss_mib(proc.pid)
            proc.send_signal(signal.SIGTERM)
            final = _wait_line(out, "final", proc, 30)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def minus_idle(cpu: dict[str, float], seconds: float) -> dict[str, float]:
        return {k: v - background[k] * seconds for k, v in cpu.items()}

    return {
        "mode": mode,
        "followed_nodes": len(nodes),
        "pods_held": synced["items"],
        "list_s_child": synced["list_s"],
        "start_to_synced_s": sync_s,
        "rss_synced_mib": rss_synced,
        "rss_peak_mib": max(hwm_synced, hwm_end),
        "rss_end_mib": rss_end,
        "child_cpu_s_to_sync": child_cpu_sync,
        "cpu_s_during_sync": sync_cpu,
        "cpu_s_during_sync_minus_idle": minus_idle(sync_cpu, sync_s),
        "churn_pods": len(churn_pods),
        "churn_patch_s": churn_s,
        "churn_window_s": churn_window,
        "events_received": final["events"],
        "child_cpu_s_churn": child_churn,
        "cpu_s_during_churn": churn_cpu,
        "cpu_s_during_churn_minus_idle": minus_idle(churn_cpu, churn_window),
        "idle_window_s": IDLE_S,
        "child_cpu_s_idle": child_idle,
        "cpu_s_idle_window": idle_cpu,
        "apiserver_idle_rate_cpu_s_per_s": background,
    }


def run(
    nodes: int = 5000,
    *,
    pods_per_node: int = 10,
    followed: tuple[int, ...] = (1, 20),
    churn: int = 5000,
    keep: bool = False,
) -> Path:
    from bench.cluster import lab  # noqa: PLC0415 - the child needs none of the lab
    from bench.memory import REPLICAS, _setup  # noqa: PLC0415

    steps = Steps()
    pods = nodes * pods_per_node // REPLICAS * REPLICAS
    with lab(keep=keep) as lb:
        steps.done("control plane up")
        names, repaired = _setup(lb, nodes, pods, steps)
        cpus = Cpus(lb.cp.pids())
        most = max(followed, default=1)
        chosen = names[:: max(1, len(names) // most)][:most]
        # pod sts-S-I runs on node (100 S + I) mod N: the first N pods in that order, one per node
        churn_pods = [f"sts-{i // REPLICAS:04d}-{i % REPLICAS}" for i in range(min(churn, pods))]
        direct = _direct_lists(lb.cp.api, cpus, chosen)
        steps.done("the bench's own lists (cluster, per node)")
        configs = [("nodes", []), *[("nodes", chosen[:k]) for k in followed], ("cluster", [])]
        results = []
        for i, (mode, followed_nodes) in enumerate(configs):
            results.append(_configuration(lb, cpus, mode, followed_nodes, churn_pods, i))
            label = "cluster-wide" if mode == "cluster" else f"per-node x{len(followed_nodes)}"
            label = "no pod watch" if mode == "nodes" and not followed_nodes else label
            steps.done(f"{label} watch measured")
    summary = {
        "nodes": nodes,
        "pods": pods,
        "pods_marked_ready_by_bench": repaired,
        "direct_lists": {k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in direct.items()},
        "configurations": results,
    }
    params = {"nodes": nodes, "pods": pods, "followed": list(followed), "churn": churn, "page_size": PAGE,
              "settle_s": SETTLE_S, "idle_s": IDLE_S}  # fmt: skip
    return write_result("podwatch", "podwatch", params=params, summary=summary, raw={"direct_lists": direct},
                        steps=steps)  # fmt: skip


if __name__ == "__main__" and len(sys.argv) >= 5 and sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3], sys.argv[5:], Path(sys.argv[4]))
