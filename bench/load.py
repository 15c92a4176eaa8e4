"""Scenario 2, apiserver load: what Asklepios asks of the apiserver, counted by the apiserver.

The apiserver writes an audit log of Asklepios' user only (Metadata level). Each
request is one audit ID; the policy keeps the ResponseStarted stage as well as
ResponseComplete, so a long-running watch is counted once, when it opens (its
ResponseComplete comes minutes later, when it ends). Requests are attributed to a
window by ``requestReceivedTimestamp``.

* **steady state**: nothing failing, for ``window`` seconds after the start-up list
  and watches are open. Asklepios runs with leader election on, as in production,
  so the Lease renewals (GET + UPDATE every 2 s) are part of the figure.
* **burst**: ``burst`` nodes set NotReady at once, until all are kicked out; then
  all handed back, until all are kicked in. Requests in each phase (Lease traffic
  excluded) divided by the number of nodes give requests per kickout / kickin.

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


def read_audit(path: Path) -> list[JSON]:
    """One record per request (first stage seen): t, verb, what, code."""
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
        }
    return sorted(seen.values(), key=lambda r: float(r["t"]))


def count(records: list[JSON], start: float, end: float, *, leases: bool = True) -> dict[str, int]:
    """Requests received in [start, end) by ``verb resource``."""
    counter = Counter(
        f"{r['verb']} {r['what']}" for r in records if start <= r["t"] < end and (leases or r["what"] != "leases")
    )
    return dict(sorted(counter.items()))


def _burst(lb: Lab, tracker: NodeTracker, nodes: list[str], ready: bool) -> tuple[float, float]:
    """Flip ``nodes`` at once; wait for all taints to go on (or off). Returns (start, end)."""
    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        if ready:
            list(pool.map(lambda n: lb.cp.clear_ready(n, wait_ready=False), nodes))
        else:
            list(pool.map(lambda n: lb.cp.set_ready(n, "False"), nodes))
    want = not ready
    tracker.wait(lambda: all(tracker.tainted.get(n, False) == want for n in nodes), 180)
    time.sleep(3)  # the Event POST follows the PATCH
    return start, time.time()


def run(nodes: int, *, window: float = 180.0, burst: int = 100, keep: bool = False) -> Path:
    steps = Steps()
    with lab(audit=True, keep=keep) as lb:
        steps.done("control plane up")
        names = lb.add_nodes(nodes)
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
        "steady_per_minute_without_leases": sum(v for k, v in steady.items() if "leases" not in k) / minutes,
        "steady_by_request_per_minute": {k: v / minutes for k, v in steady.items()},
        "burst_nodes": len(chosen),
        "per_kickout": sum(kickout.values()) / len(chosen),
        "per_kickin": sum(kickin.values()) / len(chosen),
        "kickout_phase": kickout,
        "kickin_phase": kickin,
        "startup_first_30s": count(records, started, started + 30),
        "whole_run": count(records, 0, float("inf")),
        "polling_reference_per_minute_computed": polling_reference_per_minute(nodes),
        "asklepios_watch_restarts": {k: v for k, v in metrics.items() if k.startswith("asklepios_watch_restarts")},
        "asklepios_warnings": warnings,
    }
    params = {"nodes": nodes, "window_s": window, "burst": burst, "leader_election": True}
    notes = [
        "watches are counted once, when they open (audit stage ResponseStarted)",
        "polling_reference_per_minute_computed = 6 * (3N + 1): computed, not measured",
    ]
    return write_result(
        f"load-{nodes}", "load", params=params, summary=summary, raw={"requests": len(records)},
        steps=steps, notes=notes,
    )  # fmt: skip
