"""Scenario 1, kickout and kickin lag: deadline to taint change, seen in a watch.

N bulk nodes are watched. Nodes are set NotReady (``set_ready(name, "False")``)
one at a time, ``spread / kickouts`` seconds apart (a node is reused only once its
previous cycle ended), so deadlines are spread over time. When the bench's own
streaming watch shows the out-of-service taint, the node is handed back to kwok
(``clear_ready``), which posts Ready=True; the watch then shows the taint removed.

Two deadlines are reported for each kickout, because the Ready condition's
``lastTransitionTime`` has 1-second resolution:

* **API deadline** = lastTransitionTime + KICKOUT: what Asklepios can know, so this
  lag is the controller's own reaction time (watch delivery, timer, PATCH, watch back).
* **precise deadline** = the instant the bench's status PATCH returned + KICKOUT: what
  a user with a stopwatch sees. It is up to 1 s *earlier* than the API lag (the
  timestamp is truncated, so Asklepios acts 0-1 s before the true deadline).

Kickin likewise: API = max(Ready lastTransitionTime, kickout annotation ``at``) +
KICKIN; precise = receive time of the Ready=True event + KICKIN. Asklepios' own
``asklepios_kickout_delay_seconds`` histogram is scraped for a cross-check.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import orjson

from bench.cluster import WATCHED_LABEL, lab
from bench.controller import Controller, Sampler, histogram
from bench.results import Steps, distribution, epoch, histogram_quantile, write_result
from bench.watch import NodeTracker, Watch, ready_of

JSON = dict[str, Any]
PHASE_TIMEOUT = 90.0


@attrs.define
class Cycle:
    """One kickout and the kickin after it, on one node (epoch seconds)."""

    node: str
    t_set: float  # the status PATCH to Ready=False returned
    ltt_notready: float | None
    t_taint: float | None = None
    record_at: float | None = None  # the kickout annotation's "at"
    t_clear: float | None = None
    t_ready: float | None = None  # Ready=True seen in the watch
    ltt_ready: float | None = None
    t_untaint: float | None = None
    failed: str = ""


def _targets(names: list[str], kickouts: int) -> list[str]:
    if len(names) >= kickouts:
        step = len(names) // kickouts
        return names[::step][:kickouts]
    rounds = math.ceil(kickouts / len(names))
    return (names * rounds)[:kickouts]


def _drive(lb: Any, tracker: NodeTracker, targets: list[str], spread: float, kickout_s: int) -> list[Cycle]:
    """Run every kickout/kickin cycle; returns them all (finished or failed)."""
    cp = lb.cp
    queue, done = deque(targets), []
    active: dict[str, Cycle] = {}
    free_at: dict[str, float] = {}
    interval, t0, issued = spread / len(targets), time.time(), 0
    while queue or active:
        now = time.time()
        for node, cyc in list(active.items()):
            if cyc.t_taint is None:
                hit = tracker.last(node, "taint_on", after=cyc.t_set)
                if hit is not None:
                    cyc.t_taint = hit[0]
                    record = orjson.loads(hit[1]) if hit[1] else {}
                    cyc.record_at = epoch(record.get("at"))
                    cp.clear_ready(node, wait_ready=False)
                    cyc.t_clear = time.time()
                elif now > cyc.t_set + kickout_s + PHASE_TIMEOUT:
                    cyc.failed = "no kickout seen"
            elif cyc.t_untaint is None:
                off = tracker.last(node, "taint_off", after=cyc.t_taint)
                if off is not None:
                    cyc.t_untaint = off[0]
                    ready = tracker.last(node, "ready", after=cyc.t_taint)
                    if ready is not None:
                        cyc.t_ready, cyc.ltt_ready = ready[0], epoch(ready[1])
                elif cyc.t_clear is not None and now > cyc.t_clear + PHASE_TIMEOUT:
                    cyc.failed = "no kickin seen"
            if cyc.t_untaint is not None or cyc.failed:
                if cyc.failed:
                    print(f"[lag] {node}: {cyc.failed}", flush=True)
                    cp.clear_ready(node, wait_ready=False)
                done.append(cyc)
                del active[node]
                free_at[node] = now + 1.0 + random.random()  # not phase-locked to whole seconds
        if queue and now >= t0 + issued * interval:
            node = queue[0]
            if node not in active and now >= free_at.get(node, 0.0):
                queue.popleft()
                result = cp.set_ready(node, "False")
                t_set = time.time()
                active[node] = Cycle(node, t_set, epoch(ready_of(result)[1]))
                issued += 1
                if issued % 50 == 0:
                    print(f"[lag] {issued}/{len(targets)} set NotReady, {len(done)} cycles done", flush=True)
        time.sleep(0.01)
    return done


def _lags(cycles: list[Cycle], kickout_s: int, kickin_s: int) -> JSON:
    ok = [c for c in cycles if not c.failed]
    out_api = [c.t_taint - (c.ltt_notready + kickout_s) for c in ok if c.t_taint and c.ltt_notready]
    out_precise = [c.t_taint - (c.t_set + kickout_s) for c in ok if c.t_taint]
    in_api = [
        c.t_untaint - (max(c.ltt_ready, c.record_at) + kickin_s)
        for c in ok
        if c.t_untaint and c.ltt_ready and c.record_at
    ]
    in_precise = [c.t_untaint - (c.t_ready + kickin_s) for c in ok if c.t_untaint and c.t_ready]
    return {
        "kickout_lag_api_s": distribution(out_api),
        "kickout_lag_precise_s": distribution(out_precise),
        "kickin_lag_api_s": distribution(in_api),
        "kickin_lag_precise_s": distribution(in_precise),
        "failed_cycles": len(cycles) - len(ok),
    }


def run(
    nodes: int,
    *,
    kickouts: int = 200,
    spread: float = 60.0,
    kickout_s: int = 5,
    kickin_s: int = 5,
    keep: bool = False,
) -> Path:
    steps = Steps()
    with lab(keep=keep) as lb:
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
                "ASKLEPIOS_KICKOUT_SECONDS": str(kickout_s),
                "ASKLEPIOS_KICKIN_SECONDS": str(kickin_s),
                "ASKLEPIOS_MAX_UNHEALTHY": "100%",
            },
            lb.workdir / "logs" / "asklepios.log",
        ).start()
        sampler = Sampler(ctl)
        try:
            synced_at = ctl.wait_ready(600)
            sampler.start()
            time.sleep(2)
            rss_synced = ctl.rss_bytes() / 2**20
            steps.done("asklepios synced")
            cycles = _drive(lb, tracker, _targets(names, kickouts), spread, kickout_s)
            steps.done(f"{len(cycles)} kickout/kickin cycles")
            metrics = ctl.metrics()
            warnings = ctl.warnings()
            rss_end, cpu_end = ctl.rss_bytes() / 2**20, ctl.cpu_seconds()
        finally:
            sampler.stop()
            ctl.stop()
            watch.stop()
    buckets, total, count = histogram(metrics, "asklepios_kickout_delay_seconds")
    summary = {
        "watched_nodes": nodes,
        "kickouts": len([c for c in cycles if c.t_taint]),
        "kickins": len([c for c in cycles if c.t_untaint]),
        **_lags(cycles, kickout_s, kickin_s),
        "asklepios_histogram": {
            "count": count,
            "mean_s": total / count if count else math.nan,
            "p50_s": histogram_quantile(buckets, 0.5),
            "p95_s": histogram_quantile(buckets, 0.95),
            "p99_s": histogram_quantile(buckets, 0.99),
            "buckets": {str(k): v for k, v in sorted(buckets.items())},
        },
        "sync_seconds": synced_at - ctl.started_at,
        "rss_synced_mib": rss_synced,
        "rss_end_mib": rss_end,
        "cpu_seconds_total": cpu_end,
        "watch_events": watch.events,
        "asklepios_watch_restarts": {k: v for k, v in metrics.items() if k.startswith("asklepios_watch_restarts")},
        "asklepios_warnings": warnings,
    }
    params = {"nodes": nodes, "kickouts": kickouts, "spread_s": spread, "kickout_s": kickout_s,
              "kickin_s": kickin_s}  # fmt: skip
    raw = {"cycles": [attrs.asdict(c) for c in cycles]}
    return write_result(f"lag-{nodes}", "lag", params=params, summary=summary, raw=raw, steps=steps)
