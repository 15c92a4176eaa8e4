"""Scenario 2, apiserver load: what Asklepios asks of the apiserver, counted by the apiserver.

The apiserver writes an audit log of Asklepios' user only (Metadata level). Each
request is one audit ID; the policy keeps the ResponseStarted stage as well as
ResponseComplete, so a long-running watch is counted once, when it opens (its
ResponseComplete comes minutes later, when it ends). Requests are attributed to a
window by ``requestReceivedTimestamp``.

* **steady state**: nothing failing, for ``window`` seconds after the start-up list
  and watches are open. Asklepios runs with leader election on, as in production,
  so its leader Lease renewals (one UPDATE every 2 s) are part of the figure.
* **burst**: ``burst`` nodes die at once (``crash``: out of their kwok, Lease deleted,
  kubelet port silent; then ``set_ready(name, "False")``), until all are kicked out;
  then all are powered on again (``restore``), until all are kicked in. Requests in
  each phase, without the leader Lease's renewals (the node Lease GETs of the death
  verdict stay in), divided by the number of nodes give requests per kickout / kickin.

The original Asklepios polled: about 3N+1 requests per 10-second round, i.e.
6(3N+1) per minute. That figure is *computed* and shown beside the measured one.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from bench.cluster import WATCHED_LABEL, Lab, lab
from bench.controller import Controller
from bench.results import Steps, epoch, write_result
from bench.watch import NodeTracker, Watch

JSON = dict[str, Any]


def polling_reference_per_minute(nodes: int) -> int:
    """The original's polling model, computed (not measured): 3N+1 requests every 10 s."""
    return 6 * (3 * nodes + 1)


LEADER_LEASE = ("kube-system", "asklepios")


def read_audit(path: Path) -> list[JSON]:
    """One record per request (first stage seen): t, verb, what, code, namespace, name."""
    seen: dict[str, JSON] = {}
    for line in path.read_bytes().splitlines():
        event = orjson.loads(line)
        audit_id = event["auditID"]
        if audit_id in seen:
            continue
        ref = event.get("objectRef") or {}
        what = ref.get("resource", event.get("requestURI", "?").split("?")[0])
        if ref.get("subresource"):
            what += "/" + ref["subresource"]
        seen[audit_id] = {
            "t": epoch(event["requestReceivedTimestamp"]),
            "verb": event["verb"],
            "what": what,
            "code": (event.get("responseStatus") or {}).get("code"),
            "ns": ref.get("namespace", ""),
            "name": ref.get("name", ""),
        }
    return sorted(seen.values(), key=lambda r: float(r["t"]))


def is_leader_lease(record: JSON) -> bool:
    return bool(record["what"] == "leases" and (record["ns"], record["name"]) == LEADER_LEASE)


def label(record: JSON) -> str:
    """``verb resource``; Leases told apart: the leader's own, and nodes' (kube-node-lease)."""
    what = record["what"]
    if what == "leases":
        what = "leases (leader)" if is_leader_lease(record) else f"leases ({record['ns']})"
    return f"{record['verb']} {what}"


def count(records: list[JSON], start: float, end: float, *, leases: bool = True) -> dict[str, int]:
    """Requests received in [start, end) by ``verb resource``; ``leases=False`` leaves out the leader Lease."""
    counter = Counter(label(r) for r in records if start <= r["t"] < end and (leases or not is_leader_lease(r)))
    return dict(sorted(counter.items()))


def codes(records: list[JSON], start: float, end: float) -> dict[str, int]:
    """Response codes of the requests received in [start, end) (leader Lease left out), by ``verb resource code``."""
    counter = Counter(f"{label(r)} {r['code']}" for r in records if start <= r["t"] < end and not is_leader_lease(r))
    return dict(sorted(counter.items()))


def _die(lb: Lab, node: str) -> None:
    lb.cp.crash(node)
    lb.cp.set_ready(node, "False")


def _burst(lb: Lab, tracker: NodeTracker, nodes: list[str], ready: bool) -> tuple[float, float]:
    """Power ``nodes`` off (or on) at once; wait for all taints to go on (or off). Returns (start, end)."""
    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        if ready:
            list(pool.map(lambda n: lb.cp.restore(n, wait_ready=False), nodes))
        else:
            list(pool.map(lambda n: _die(lb, n), nodes))
    want = not ready
    if not tracker.wait(lambda: all(tracker.tainted.get(n, False) == want for n in nodes), 180):
        missing = [n for n in nodes if tracker.tainted.get(n, False) != want]
        print(f"[load] not {'kicked in' if ready else 'kicked out'} within 180 s: {missing[:10]}", flush=True)
    time.sleep(3)  # the Event POST follows the PATCH
    return start, time.time()


def run(nodes: int, *, window: float = 180.0, burst: int = 100, keep: bool = False) -> Path:
    steps = Steps()
    with lab(audit=True, keep=keep) as lb:
        steps.done("control plane up")
        names = lb.add_nodes(nodes, listeners=True)
        steps.done(f"{nodes} bulk nodes Ready")
        tracker = NodeTracker()
        watch = Watch(lb.cp.api, "/api/v1/nodes", tracker.handle, {"labelSelector": f"{WATCHED_LABEL}=true"})
        watch.begin()
        ctl = Controller(
            lb.kubeconfig,
            {
                "ASKLEPIOS_NODE_SELECTOR": f"{WATCHED_LABEL}=true",
                "ASKLEPIOS_KICKOUT_SECONDS": "5",
                "ASKLEPIOS_KICKIN_SECONDS": "5",
                "ASKLEPIOS_MAX_UNHEALTHY": "100%",
                "ASKLEPIOS_LEADER_ELECTION": "true",
                "ASKLEPIOS_NAMESPACE": "kube-system",
            },
            lb.workdir / "logs" / "asklepios.log",
        ).start()
        try:
            started = ctl.started_at
            ctl.wait_ready(600)
            while ctl.metrics().get("asklepios_is_leader") != 1.0:
                time.sleep(0.5)
            time.sleep(15)
            steps.done("asklepios synced and leading")
            t0 = time.time()
            time.sleep(window)
            t1 = time.time()
            steps.done(f"steady window {window:.0f} s")
            chosen = names[:: max(1, nodes // burst)][:burst]
            out_start, out_end = _burst(lb, tracker, chosen, ready=False)
            in_start, in_end = _burst(lb, tracker, chosen, ready=True)
            steps.done(f"burst of {len(chosen)} kickouts and kickins")
            metrics = ctl.metrics()
            warnings = ctl.warnings()
        finally:
            ctl.stop()
            watch.stop()
        time.sleep(2)
        assert lb.audit_log is not None
        records = read_audit(lb.audit_log)
    minutes = (t1 - t0) / 60
    steady = count(records, t0, t1)
    kickout = count(records, out_start, out_end, leases=False)
    kickin = count(records, in_start, in_end, leases=False)
    summary = {
        "watched_nodes": nodes,
        "steady_window_s": t1 - t0,
        "steady_requests": sum(steady.values()),
        "steady_per_minute": sum(steady.values()) / minutes,
        "steady_per_minute_without_leases": sum(v for k, v in steady.items() if "(leader)" not in k) / minutes,
        "steady_by_request_per_minute": {k: v / minutes for k, v in steady.items()},
        "steady_leader_lease_per_minute": {k: v / minutes for k, v in steady.items() if "(leader)" in k},
        "burst_nodes": len(chosen),
        "per_kickout": sum(kickout.values()) / len(chosen),
        "per_kickin": sum(kickin.values()) / len(chosen),
        "kickout_phase": kickout,
        "kickin_phase": kickin,
        "per_kickout_by_request": {k: v / len(chosen) for k, v in kickout.items()},
        "per_kickin_by_request": {k: v / len(chosen) for k, v in kickin.items()},
        "kickout_phase_codes": codes(records, out_start, out_end),
        "kickin_phase_codes": codes(records, in_start, in_end),
        "kickout_phase_s": out_end - out_start,
        "kickin_phase_s": in_end - in_start,
        "kicked_out": sum(1 for n in chosen if tracker.last(n, "taint_on", out_start) is not None),
        "kicked_in": sum(1 for n in chosen if tracker.last(n, "taint_off", in_start) is not None),
        "startup_first_30s": count(records, started, started + 30),
        "whole_run": count(records, 0, float("inf")),
        "polling_reference_per_minute_computed": polling_reference_per_minute(nodes),
        "asklepios_watch_restarts": {k: v for k, v in metrics.items() if k.startswith("asklepios_watch_restarts")},
        "asklepios_kickouts_held": {k: v for k, v in metrics.items() if k.startswith("asklepios_kickouts_held_total")},
        "asklepios_warnings": warnings,
    }
    params = {"nodes": nodes, "window_s": window, "burst": burst, "leader_election": True, "kubelet_ports": True,
              "death": "crash (out of kwok, Lease deleted, port silent) + set_ready False"}  # fmt: skip
    notes = [
        "watches are counted once, when they open (audit stage ResponseStarted)",
        "per kickout / per kickin leave out the leader Lease's renewals; node Lease GETs (kube-node-lease) stay in",
        "polling_reference_per_minute_computed = 6 * (3N + 1): computed, not measured",
    ]
    return write_result(
        f"load-{nodes}", "load", params=params, summary=summary, raw={"requests": len(records)},
        steps=steps, notes=notes,
    )  # fmt: skip
