"""Scenario `mass-outage`: a rack goes dark; does Asklepios stay responsive and cheap?

N bulk nodes are watched (kubelet ports open), two Asklepios replicas run with the
leader election on, as in production. Two storms, measured one after the other:

* **storm 1**: ``storm1`` nodes (above ASKLEPIOS_MAX_UNHEALTHY, default 50 %) die
  within seconds: ``crash`` (out of their kwok, Lease deleted, kubelet port silent:
  a connect times out) then Ready=Unknown at once (``set_ready``; node-lifecycle would take the
  bulk grace period), from 64 threads. Every kickout must be held, which needs the
  whole storm to land within KICKOUT (60 s by default): a node whose deadline passes
  while the count is still below the guard is rightly kicked out. The nodes stay
  dead past their kickout deadline plus ``hold`` seconds, then are powered on again.
* **storm 2**: ``storm2`` nodes (below the guard) die at once (Ready=False): all are
  kicked out. Kickout lag = taint seen by the bench's watch - (the moment the bench's
  Ready=False PATCH returned + KICKOUT: Asklepios cannot have seen it earlier), and
  the time from the first crash to the last taint. That lag is split in two with
  Asklepios' own record of each period's start (`kickout.since` in the ConfigMap
  `asklepios-records`, read before the restore): how late the NotReady reached
  Asklepios, and the taint after Asklepios' own deadline (that mark + KICKOUT).

Per storm, per replica: event-loop lag p50/p99/max (from the replica's own
``asklepios_event_loop_lag_seconds``, the difference of two scrapes; bucket
resolution, max is the upper bound of the highest bucket hit), CPU seconds and RSS
peak (``/proc``, every second), ``/healthz`` answers other than 200 (polled every
0.5 s). Overall: leader Lease renewals missed (gaps between the leader's
successful Lease UPDATEs in the audit log longer than 1.5 retry periods) and
leadership changes (the Lease's holder, polled every 0.5 s), and the apiserver
requests of both replicas, from the audit log.

With ``pods`` > 0 the balancer is on and the nodes carry that many balancer pods
(StatefulSets of 100, ``asklepios.io/balance=true``, created and bound as the memory
scenario does, ``bench.memory``), so both replicas also keep a cluster-wide pod watch
through the storms: node-lifecycle marks the pods of storm 1's Unknown nodes NotReady
(one pod event each), and storm 2's kickouts force-delete the pods of the dead nodes.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asklepios.core.records import RECORDS_CONFIGMAP, NodeRecord, node_key
from bench.cluster import BULK_GRACE_SECONDS, WATCHED_LABEL, Lab, lab
from bench.controller import Controller, Sampler, histogram
from bench.lag import audit_requests, kickout_steps
from bench.load import count, is_leader_lease, read_audit
from bench.memory import REPLICAS, add_pods
from bench.results import Steps, distribution, histogram_quantile, source_commit, write_result
from bench.watch import NodeTracker, Watch

JSON = dict[str, Any]
RETRY_PERIOD = 2.0  # ASKLEPIOS_LEASE_RETRY_SECONDS (default): the leader renews this often
QUIET_S = 20.0  # between the storms: no node went NotReady for this long, all Ready
SETTLE_TIMEOUT_S = 600.0
LAG = "asklepios_event_loop_lag_seconds"
RECORDS_NAMESPACE = "kube-system"  # ASKLEPIOS_NAMESPACE of both replicas


class Poller(threading.Thread):
    """Every ``interval`` s: each replica's /healthz, and the leader Lease's holder."""

    def __init__(self, lb: Lab, replicas: list[Controller], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="poller")
        self.lb, self.replicas, self.interval = lb, replicas, interval
        self.health: list[tuple[float, int, int]] = []  # (t, replica, status)
        self.holders: list[tuple[float, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for i, replica in enumerate(self.replicas):
                self.health.append((time.time(), i, replica.http("/healthz")[0]))
            lease = self.lb.cp.api.get_or_none("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/asklepios")
            holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
            if not self.holders or self.holders[-1][1] != holder:
                self.holders.append((time.time(), holder))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def failures(self, start: float, end: float) -> dict[str, int]:
        return {
            str(i): sum(1 for t, r, status in self.health if r == i and start <= t < end and status != 200)
            for i in range(len(self.replicas))
        }

    def changes(self, start: float, end: float) -> int:
        """Changes of the Lease's holder to another replica in [start, end) (a first holder is not one)."""
        inside = [h for t, h in self.holders if start <= t < end and h]
        before = [h for t, h in self.holders if t < start and h]
        held = before[-1:] + inside
        return sum(1 for a, b in itertools.pairwise(held) if a != b)


def loop_lag(before: dict[str, float], after: dict[str, float]) -> JSON:
    """p50/p99/max of the lag histogram's increase between two scrapes of one replica."""
    b0, _, c0 = histogram(before, LAG)
    b1, s1, c1 = histogram(after, LAG)
    delta = {le: b1[le] - b0.get(le, 0.0) for le in b1}
    hit = [le for le in sorted(delta) if delta[le] > delta.get(_below(delta, le), 0.0)]
    n = c1 - c0
    return {
        "ticks": n,
        "p50_s": histogram_quantile(delta, 0.5) if n else math.nan,
        "p99_s": histogram_quantile(delta, 0.99) if n else math.nan,
        "max_at_most_s": hit[-1] if hit else 0.0,
        "mean_s": (s1 - histogram(before, LAG)[1]) / n if n else math.nan,
    }


def _below(buckets: dict[float, float], le: float) -> float:
    lower = [b for b in buckets if b < le]
    return max(lower) if lower else -1.0


def renewals(records: list[JSON], start: float, end: float) -> JSON:
    """The leader's successful Lease UPDATEs in [start, end): count, the longest gap, those missed."""
    times = [r["t"] for r in records if is_leader_lease(r) and r["verb"] == "update" and r["code"] == 200]
    inside = [t for t in times if start <= t < end]
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    missed = sum(max(0, round(g / RETRY_PERIOD) - 1) for g in gaps if g > 1.5 * RETRY_PERIOD)
    return {"renewals": len(inside), "longest_gap_s": max(gaps, default=math.nan), "missed": missed}


def _parallel(work: Callable[[str], Any], nodes: list[str], threads: int = 64) -> tuple[float, float]:
    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, nodes))
    return started, time.time()


def _die(cp: Any, node: str, ready: str) -> float:
    """Crash ``node`` and set its Ready condition; returns when the status PATCH returned."""
    cp.crash(node)
    cp.set_ready(node, ready)
    return time.time()


def _quiet(seconds: float) -> JSON:
    time.sleep(seconds)
    return {}


class Storms:
    """Each storm's window, with scrapes, samples and polls of both replicas around it."""

    def __init__(self, lb: Lab, replicas: list[Controller], tracker: NodeTracker) -> None:
        self.lb, self.replicas, self.tracker = lb, replicas, tracker
        self.samplers = [Sampler(r) for r in replicas]
        self.poller = Poller(lb, replicas)
        self.windows: dict[str, JSON] = {}
        self.kickouts: list[tuple[str, float, float]] = []  # storm 2: (node, deadline, taint seen)

    def measured(self, name: str, body: Callable[[], JSON]) -> None:
        before = [r.metrics() for r in self.replicas]
        start = time.time()
        facts = body()
        end = time.time()
        after = [r.metrics() for r in self.replicas]
        self.windows[name] = {
            "start": start,
            "end": end,
            **facts,
            "replicas": [
                {
                    "leader_at_end": a.get("asklepios_is_leader") == 1.0,
                    "event_loop_lag": loop_lag(b, a),
                    "gc_gen2_pauses": r.gc_pauses(start, end),
                    **s.window(start, end),
                }
                for b, a, s, r in zip(before, after, self.samplers, self.replicas, strict=True)
            ],
            "healthz_failures": self.poller.failures(start, end),
            "leadership_changes": self.poller.changes(start, end),
        }

    def storm1(self, nodes: list[str], kickout_s: int, hold: float) -> JSON:
        cp, tracker = self.lb.cp, self.tracker
        t0, t1 = _parallel(lambda n: _die(cp, n, "Unknown"), nodes)
        print(f"[mass-outage] storm 1: {len(nodes)} nodes Unknown in {t1 - t0:.1f} s", flush=True)
        time.sleep(kickout_s + hold)
        tainted = [n for n in nodes if tracker.tainted.get(n, False)]
        r0, _ = _parallel(lambda n: cp.restore(n, wait_ready=False), nodes)
        back = tracker.wait(lambda: all(tracker.ready.get(n, False) for n in nodes), 300)
        return {"nodes": len(nodes), "down_within_s": t1 - t0, "kicked_out": len(tainted),
                "all_ready_again": back, "restore_started": r0}  # fmt: skip

    def settle(self, names: list[str], restored: float) -> JSON:
        """Wait until storm 1's aftermath in the lab is over, so that storm 2 measures storm 2 alone.

        In about half the runs, about 2,000 of storm 1's restored nodes went Unknown
        again: node-lifecycle had not taken their restore as a heartbeat, and marked
        them when node-monitor's grace had passed since their last one, before the
        crash. When that fell into storm 2's window (15 s after storm 1, before), each
        got a Lease look from the leader, and storm 2 measured the lab's event too. So
        storm 2 starts only when the grace has passed since the restore and no node went
        NotReady in the last ``QUIET_S`` seconds, all Ready. How many went NotReady in
        between is reported.
        """
        tracker, start = self.tracker, time.time()
        earliest = restored + BULK_GRACE_SECONDS + QUIET_S

        def settled() -> bool:
            now = time.time()
            if now < earliest or not all(tracker.ready.get(n, False) for n in names):
                return False
            return now - max(self._notready(names, 0.0).values(), default=0.0) >= QUIET_S

        while not settled() and time.time() - start < SETTLE_TIMEOUT_S:
            time.sleep(1)
        lapsed = self._notready(names, start)
        return {"waited_s": time.time() - start, "settled": settled(), "nodes_went_notready": len(lapsed)}

    def _notready(self, names: list[str], after: float) -> dict[str, float]:
        """Per node of ``names`` that went NotReady after ``after``: the last time it did."""
        with self.tracker.lock:
            return {
                n: t
                for n in names
                for t, what, _ in self.tracker.history.get(n, ())
                if what == "notready" and t > after
            }

    def _notready_marks(self, nodes: list[str]) -> dict[str, float]:
        """Per node, the start of its NotReady period in Asklepios' own record (`kickout.since`).

        Asklepios starts a countdown at the later of the Ready condition's time and the
        moment it saw the condition (core/periods.py), so its deadline is that mark +
        KICKOUT: how late the NotReady reached it is part of the lag the bench measures.
        """
        path = f"/api/v1/namespaces/{RECORDS_NAMESPACE}/configmaps/{RECORDS_CONFIGMAP}"
        data = (self.lb.cp.api.get_or_none(path) or {}).get("data") or {}
        marks: dict[str, float] = {}
        for node in nodes:
            record = NodeRecord.decode(data.get(node_key(node)))
            since = record.kickout.since if record is not None and record.kickout is not None else None
            if since is not None:  # else no record of a kickout (yet): left out of the split
                marks[node] = since.timestamp()
        return marks

    @staticmethod
    def _lag_split(down: dict[str, float], taint: dict[str, float], seen: dict[str, float], kickout_s: int) -> JSON:
        """The kickout lag in two: NotReady set -> Asklepios' mark, its own deadline -> the taint seen."""
        both = [n for n in taint if n in seen]
        return {
            "notready_seen_after_s": distribution([seen[n] - down[n] for n in both]),
            "taint_after_own_deadline_s": distribution([taint[n] - (seen[n] + kickout_s) for n in both]),
        }

    def storm2(self, nodes: list[str], kickout_s: int, everyone: list[str]) -> JSON:
        cp, tracker = self.lb.cp, self.tracker
        down: dict[str, float] = {}
        t0, t1 = _parallel(lambda n: down.__setitem__(n, _die(cp, n, "False")), nodes)
        print(f"[mass-outage] storm 2: {len(nodes)} nodes down in {t1 - t0:.1f} s", flush=True)
        tracker.wait(lambda: all(tracker.tainted.get(n, False) for n in nodes), kickout_s + 180)
        lags, taints, taint_at = [], [], {}
        for n in nodes:
            hit = tracker.last(n, "taint_on", after=t0)
            if hit is None:
                continue
            taints.append(hit[0])
            taint_at[n] = hit[0]
            lags.append(hit[0] - (down[n] + kickout_s))  # the deadline: Ready=False set + KICKOUT
            self.kickouts.append((n, down[n] + kickout_s, hit[0]))
        time.sleep(3)  # the NodeKickedOut Events follow the PATCHes
        end = time.time()
        seen_at = self._notready_marks(nodes)
        _parallel(lambda n: cp.restore(n, wait_ready=False), nodes)
        untainted = tracker.wait(lambda: not any(tracker.tainted.get(n, False) for n in nodes), 300)
        dying = set(nodes)
        bystanders = [n for n in self._notready(everyone, t0) if n not in dying]  # the lab's, not storm 2's
        return {"nodes": len(nodes), "down_within_s": t1 - t0, "kicked_out": len(taints),
                "other_nodes_went_notready": len(bystanders),
                "kickout_lag_s": distribution(lags),
                **self._lag_split(down, taint_at, seen_at, kickout_s),
                "first_crash_to_last_taint_s": (max(taints) - t0) if taints else math.nan,
                "kicked_out_window_end": end, "all_kicked_in_again": untainted}  # fmt: skip


def _pods(lb: Lab, names: list[str], pods: int, steps: Steps) -> JSON:
    """``pods`` balancer pods on ``names``, as ``bench memory`` makes them."""
    repaired = add_pods(lb, names, pods)
    steps.done(f"{pods} balancer pods created, bound, Running")
    return {"pods": pods, "pods_marked_ready_by_bench": repaired}


def run(
    nodes: int,
    *,
    storm1: int,
    storm2: int,
    kickout_s: int = 60,
    hold: float = 30.0,
    pods: int = 0,
    keep: bool = False,
) -> Path:
    steps = Steps()
    pods = pods // REPLICAS * REPLICAS
    env = {
        "ASKLEPIOS_NODE_SELECTOR": f"{WATCHED_LABEL}=true",
        "ASKLEPIOS_KICKOUT_SECONDS": str(kickout_s),
        "ASKLEPIOS_KICKIN_SECONDS": "5",
        "ASKLEPIOS_LEADER_ELECTION": "true",
        "ASKLEPIOS_NAMESPACE": RECORDS_NAMESPACE,
        **({"ASKLEPIOS_BALANCER": "true"} if pods else {}),
    }
    with lab(audit=True, keep=keep) as lb:
        steps.done("control plane up")
        names = lb.add_nodes(nodes, listeners=True)
        steps.done(f"{nodes} bulk nodes Ready")
        pod_facts = _pods(lb, names, pods, steps) if pods else {"pods": 0}
        tracker = NodeTracker()
        watch = Watch(lb.cp.api, "/api/v1/nodes", tracker.handle, {"labelSelector": f"{WATCHED_LABEL}=true"})
        watch.begin()
        logs = lb.workdir / "logs"
        replicas = [Controller(lb.kubeconfig, env, logs / f"asklepios-{i}.log").start() for i in range(2)]
        storms = Storms(lb, replicas, tracker)
        try:
            for r in replicas:
                r.wait_ready(900)
            while not any(r.metrics().get("asklepios_is_leader") == 1.0 for r in replicas):
                time.sleep(0.5)
            for sampler in storms.samplers:
                sampler.start()
            storms.poller.start()
            time.sleep(15)
            steps.done("both replicas synced, one leading")
            first = names[:: max(1, nodes // storm1)][:storm1]
            storms.measured("quiet", lambda: _quiet(30))
            storms.measured("storm1", lambda: storms.storm1(first, kickout_s, hold))
            steps.done(f"storm 1: {len(first)} of {nodes} down, held, back")
            between = storms.settle(names, storms.windows["storm1"]["restore_started"])
            steps.done("the lab settled after storm 1")
            second = names[1 :: max(1, nodes // storm2)][:storm2]
            storms.measured("storm2", lambda: storms.storm2(second, kickout_s, names))
            steps.done(f"storm 2: {len(second)} of {nodes} down, kicked out, back")
            warnings = [r.warnings() for r in replicas]
        finally:
            for sampler in storms.samplers:
                sampler.stop()
            if storms.poller.is_alive():
                storms.poller.stop()
            for r in replicas:
                r.stop()
            watch.stop()
        time.sleep(2)
        assert lb.audit_log is not None
        records = read_audit(lb.audit_log)
        storm2_steps = kickout_steps(audit_requests(lb.audit_log), storms.kickouts)
    summary: JSON = {"watched_nodes": nodes, **pod_facts, "warnings": warnings, "between_storms": between}
    for name, w in storms.windows.items():
        start, end = w["start"], w["end"]
        summary[name] = {
            **{k: v for k, v in w.items() if k not in ("start", "end")},
            "seconds": end - start,
            "lease": renewals(records, start, end),
            "apiserver_requests": sum(count(records, start, end).values()),
            "apiserver_requests_by_request": count(records, start, end),
        }
    summary["storm2"]["kickout_steps_s"] = storm2_steps  # where the lag went, from the audit log (see bench/lag.py)
    params = {"nodes": nodes, "storm1": storm1, "storm2": storm2, "kickout_s": kickout_s, "hold_s": hold,
              "pods": pods, "balancer": bool(pods), "replicas": 2, "leader_election": True, "kubelet_ports": True,
              "death": "crash (out of kwok, Lease deleted, port silent); Unknown (1), False (2)"}  # fmt: skip
    notes = [
        "event-loop lag from each replica's histogram: p50/p99 interpolated within buckets, max = upper bound "
        "of the highest bucket with a tick",
        "Lease renewals missed: gaps between the leader's successful UPDATEs longer than 1.5 retry periods",
        "apiserver requests: both replicas (one identity), watches counted when they open",
    ]
    size = f"{nodes}-{storm1}-{storm2}" + (f"-pods{pods}" if pods else "")
    name = f"mass-outage-{size}-{source_commit().split()[0].replace('+', '-')}"
    return write_result(name, "mass-outage", params=params, summary=summary, raw={}, steps=steps, notes=notes)
