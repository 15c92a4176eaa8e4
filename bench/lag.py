"""Scenario 1, kickout and kickin lag: deadline to taint change, seen in a watch.

N bulk nodes are watched (kubelet ports open). Nodes die one at a time, ``spread /
kickouts`` seconds apart (a node is reused only once its previous cycle ended), so
deadlines are spread over time. Each death is a real one for Asklepios' evidence:
``crash(name)`` (the node leaves its kwok, its Lease is deleted, its kubelet port
answers nothing: a connect times out, as towards a machine that is off), then
``set_ready(name, "False")``, which marks the precise start. When the bench's own
streaming watch shows the out-of-service taint, the node is powered on again
(``restore``: back into its kwok, which recreates the Lease and posts Ready=True); the
watch then shows the taint removed.

Asklepios starts a countdown at the later of the Ready condition's
``lastTransitionTime`` (1-second resolution) and the moment it first saw the NotReady
period, and writes that start into the node's ``asklepios.io/notready-since``
annotation (``since``). So two deadlines are reported for each kickout:

* **API deadline** = ``since`` of that annotation + KICKOUT: the deadline Asklepios
  knows, i.e. when its watch delivered the NotReady event + KICKOUT. The lag against
  it is Asklepios' own reaction: timer, the evidence (a GET of the node's Lease and a
  TCP connect to its kubelet port), the merge PATCH, and the event travelling back
  through the apiserver's watch to the bench.
* **precise deadline** = the instant the bench's status PATCH returned + KICKOUT: what
  a user with a stopwatch sees. It exceeds the API lag by the time the NotReady event
  took to reach Asklepios.

Kickin likewise: API = ``since`` of ``asklepios.io/ready-since`` + KICKIN (the later of
Ready's lastTransitionTime, the kickout and Asklepios seeing Ready); precise = receive
time of the Ready=True event + KICKIN. Asklepios' own ``asklepios_kickout_delay_seconds``
histogram (deadline to kickout PATCH answered) is scraped for a cross-check.
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

from asklepios_lab import audit
from bench.cluster import WATCHED_LABEL, lab
from bench.controller import Controller, Sampler, histogram
from bench.results import Steps, distribution, epoch, histogram_quantile, write_result
from bench.watch import NodeTracker, Watch, ready_of

JSON = dict[str, Any]
PHASE_TIMEOUT = 90.0
RELEASE_WAIT = 5.0  # restore anyway if the kickout record says nothing of "released" by then


@attrs.define
class Cycle:
    """One kickout and the kickin after it, on one node (epoch seconds)."""

    node: str
    t_crash: float  # crash() called: the node leaves its kwok, Lease deleted, port silent
    t_set: float  # the status PATCH to Ready=False returned
    ltt_notready: float | None
    since_notready: float | None = None  # asklepios.io/notready-since "since": the countdown's start
    t_mark: float | None = None  # receive time of that annotation
    t_taint: float | None = None
    record_at: float | None = None  # the kickout annotation's "at"
    record_since: float | None = None  # the kickout annotation's "since"
    t_released: float | None = None  # the kickout record says "released" (its pods are gone)
    t_restore: float | None = None  # restore() returned
    t_ready: float | None = None  # Ready=True seen in the watch
    ltt_ready: float | None = None
    since_ready: float | None = None  # asklepios.io/ready-since "since"
    t_untaint: float | None = None
    failed: str = ""


def _targets(names: list[str], kickouts: int) -> list[str]:
    if len(names) >= kickouts:
        step = len(names) // kickouts
        return names[::step][:kickouts]
    rounds = math.ceil(kickouts / len(names))
    return (names * rounds)[:kickouts]


def _since(annotation: str | None) -> float | None:
    """The ``since`` of a period mark or kickout annotation (JSON), as epoch seconds."""
    if not annotation:
        return None
    try:
        data = orjson.loads(annotation)
    except orjson.JSONDecodeError:
        return None
    return epoch(data.get("since")) if isinstance(data, dict) else None


def _kick_out(cp: Any, node: str) -> Cycle:
    """A real death, then Ready=False at a known instant."""
    t_crash = time.time()
    cp.crash(node)
    result = cp.set_ready(node, "False")
    return Cycle(node, t_crash, time.time(), epoch(ready_of(result)[1]))


def _follow(cp: Any, tracker: NodeTracker, cyc: Cycle, now: float, kickout_s: int, restore_after: str) -> None:
    """Advance one cycle from what the watch saw; restore the node once it is kicked out."""
    node = cyc.node
    if cyc.t_taint is None:
        hit = tracker.last(node, "taint_on", after=cyc.t_set)
        if hit is not None:
            cyc.t_taint = hit[0]
            record = orjson.loads(hit[1]) if hit[1] else {}
            cyc.record_at, cyc.record_since = epoch(record.get("at")), epoch(record.get("since"))
            mark = tracker.last(node, "notready_mark", after=cyc.t_crash)
            if mark is not None:
                cyc.t_mark, cyc.since_notready = mark[0], _since(mark[1])
        elif now > cyc.t_set + kickout_s + PHASE_TIMEOUT:
            cyc.failed = "no kickout seen"
    if cyc.t_taint is not None and cyc.t_restore is None:
        if restore_after == "released" and cyc.t_released is None and now < cyc.t_taint + RELEASE_WAIT:
            released = [h for h in tracker.since(node, "kickout_record", cyc.t_taint) if '"released"' in (h[1] or "")]
            if not released:
                return
            cyc.t_released = released[0][0]
        cp.restore(node, wait_ready=False)
        cyc.t_restore = time.time()
    elif cyc.t_taint is not None and cyc.t_restore is not None and cyc.t_untaint is None:
        off = tracker.last(node, "taint_off", after=cyc.t_taint)
        if off is not None:
            cyc.t_untaint = off[0]
            ready = tracker.last(node, "ready", after=cyc.t_taint)
            if ready is not None:
                cyc.t_ready, cyc.ltt_ready = ready[0], epoch(ready[1])
            mark = tracker.last(node, "ready_mark", after=cyc.t_taint)
            if mark is not None:
                cyc.since_ready = _since(mark[1])
        elif now > cyc.t_restore + PHASE_TIMEOUT:
            cyc.failed = "no kickin seen"


def _drive(
    lb: Any, tracker: NodeTracker, targets: list[str], spread: float, kickout_s: int, restore_after: str
) -> list[Cycle]:
    """Run every kickout/kickin cycle; returns them all (finished or failed)."""
    cp = lb.cp
    queue, done = deque(targets), []
    active: dict[str, Cycle] = {}
    free_at: dict[str, float] = {}
    interval, t0, issued = spread / len(targets), time.time(), 0
    while queue or active:
        now = time.time()
        for node, cyc in list(active.items()):
            _follow(cp, tracker, cyc, now, kickout_s, restore_after)
            if cyc.t_untaint is not None or cyc.failed:
                if cyc.failed:
                    print(f"[lag] {node}: {cyc.failed}", flush=True)
                    cp.restore(node, wait_ready=False)
                done.append(cyc)
                del active[node]
                free_at[node] = now + 1.0 + random.random()  # not phase-locked to whole seconds
        if queue and now >= t0 + issued * interval:
            node = queue[0]
            if node not in active and now >= free_at.get(node, 0.0):
                queue.popleft()
                active[node] = _kick_out(cp, node)
                issued += 1
                if issued % 50 == 0:
                    print(f"[lag] {issued}/{len(targets)} powered off, {len(done)} cycles done", flush=True)
        time.sleep(0.01)
    return done


def audit_requests(path: Path) -> list[JSON]:
    """Asklepios' requests: verb, resource, name, received and completed (epoch s)."""
    by_id: dict[str, JSON] = {}
    for event in audit.records(path):
        ref = event.get("objectRef") or {}
        what = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
        received = epoch(event["requestReceivedTimestamp"])
        req = by_id.setdefault(event["auditID"], {"verb": event["verb"], "what": what, "name": ref.get("name", ""),
                                                  "received": received, "completed": None})  # fmt: skip
        if event.get("stage") == "ResponseComplete":
            req["completed"] = epoch(event["stageTimestamp"])
            req["code"] = (event.get("responseStatus") or {}).get("code")
    return sorted((r for r in by_id.values() if r["completed"] is not None), key=lambda r: float(r["received"]))


def _last(
    requests: list[JSON], verb: str, what: str, name: str, lo: float, hi: float, *, first: bool = False
) -> JSON | None:
    """The last (or first) such request received within [lo, hi]."""
    key = (verb, what, name)
    hits = [r for r in requests if (r["verb"], r["what"], r["name"]) == key and lo <= r["received"] <= hi]
    return (hits[0] if first else hits[-1]) if hits else None


def kickout_steps(requests: list[JSON], kickouts: list[tuple[str, float, float]]) -> JSON:
    """Per kickout (node, deadline, taint seen), the requests at the deadline and the gaps between them.

    Without fencing the record is stored 0.5 s ahead of the deadline (since 5cda8b1), so
    the deadline's path is the Lease GET and the node PATCH; a records PATCH between
    them (a record stored late, or another node's) is counted in its own steps, and
    `to_node_patch` is measured from whichever came last.
    """
    steps: dict[str, list[float]] = {k: [] for k in ("to_lease_get", "lease_get", "to_records_patch", "records_patch",
                                                     "to_node_patch", "node_patch", "to_watch")}  # fmt: skip
    conflicts = 0  # node PATCHes answered 409 (the node changed since Asklepios read it: read again, retried)
    for node, deadline, taint in kickouts:
        patch = _last(requests, "patch", "nodes", node, deadline - 1, taint, first=True)
        refused = [r for r in requests if r["what"] == "nodes" and r["name"] == node and r.get("code") == 409
                   and deadline - 1 <= r["received"] <= taint]  # fmt: skip
        conflicts += len(refused)
        if patch is None:
            continue
        get = _last(requests, "get", "leases", node, deadline - 1, patch["received"])
        if get is None:
            continue
        rec = _last(requests, "patch", "configmaps", "asklepios-records", get["completed"], patch["received"])
        steps["to_lease_get"].append(get["received"] - deadline)
        steps["lease_get"].append(get["completed"] - get["received"])
        if rec is not None:
            steps["to_records_patch"].append(rec["received"] - get["completed"])
            steps["records_patch"].append(rec["completed"] - rec["received"])
        steps["to_node_patch"].append(patch["received"] - (rec or get)["completed"])
        steps["node_patch"].append(patch["completed"] - patch["received"])
        steps["to_watch"].append(taint - patch["completed"])
    return {**{k: distribution(v) for k, v in steps.items()}, "node_patch_conflicts": conflicts}


def _lags(cycles: list[Cycle], kickout_s: int, kickin_s: int) -> JSON:
    ok = [c for c in cycles if not c.failed]
    out_api = [c.t_taint - (c.since_notready + kickout_s) for c in ok if c.t_taint and c.since_notready]
    out_precise = [c.t_taint - (c.t_set + kickout_s) for c in ok if c.t_taint]
    in_api = [c.t_untaint - (c.since_ready + kickin_s) for c in ok if c.t_untaint and c.since_ready]
    in_precise = [c.t_untaint - (c.t_ready + kickin_s) for c in ok if c.t_untaint and c.t_ready]
    return {
        "kickout_lag_api_s": distribution(out_api),
        "kickout_lag_precise_s": distribution(out_precise),
        "kickin_lag_api_s": distribution(in_api),
        "kickin_lag_precise_s": distribution(in_precise),
        # what the API deadline is made of, against the precise one
        "notready_seen_after_s": distribution([c.since_notready - c.t_set for c in ok if c.since_notready]),
        "notready_mark_seen_after_s": distribution([c.t_mark - c.t_set for c in ok if c.t_mark]),
        "condition_truncation_s": distribution([c.t_set - c.ltt_notready for c in ok if c.ltt_notready]),
        "kickout_record_since_matches_mark": sum(
            1 for c in ok if c.record_since and c.since_notready and abs(c.record_since - c.since_notready) < 1e-3
        ),
        "taint_to_released_s": distribution([c.t_released - c.t_taint for c in ok if c.t_released and c.t_taint]),
        "restore_to_ready_s": distribution([c.t_ready - c.t_restore for c in ok if c.t_ready and c.t_restore]),
        "ready_seen_after_s": distribution([c.since_ready - c.t_ready for c in ok if c.since_ready and c.t_ready]),
        "failed_cycles": len(cycles) - len(ok),
    }


def run(
    nodes: int,
    *,
    kickouts: int = 200,
    spread: float = 60.0,
    kickout_s: int = 5,
    kickin_s: int = 5,
    restore_after: str = "released",
    keep: bool = False,
) -> Path:
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
                "ASKLEPIOS_KICKOUT_SECONDS": str(kickout_s),
                "ASKLEPIOS_KICKIN_SECONDS": str(kickin_s),
                "ASKLEPIOS_MAX_UNHEALTHY": "100%",
                "ASKLEPIOS_FLAP_MAX_KICKOUTS": "1000",  # 200 kickouts on as few as 10 nodes: no flap damping
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
            driven = time.time()
            cycles = _drive(lb, tracker, _targets(names, kickouts), spread, kickout_s, restore_after)
            gc_pauses = ctl.gc_pauses(driven, time.time())
            steps.done(f"{len(cycles)} kickout/kickin cycles")
            metrics = ctl.metrics()
            warnings = ctl.warnings()
            rss_end, cpu_end = ctl.rss_bytes() / 2**20, ctl.cpu_seconds()
        finally:
            sampler.stop()
            ctl.stop()
            watch.stop()
        assert lb.audit_log is not None
        done = [(c.node, c.t_set + kickout_s, c.t_taint) for c in cycles if not c.failed and c.t_taint is not None]
        steps_s = kickout_steps(audit_requests(lb.audit_log), done)
    buckets, total, count = histogram(metrics, "asklepios_kickout_delay_seconds")
    summary = {
        "watched_nodes": nodes,
        "kickouts": len([c for c in cycles if c.t_taint]),
        "kickins": len([c for c in cycles if c.t_untaint]),
        **_lags(cycles, kickout_s, kickin_s),
        "kickout_steps_s": steps_s,
        "gc_gen2_pauses": gc_pauses,
        "asklepios_histogram": {
            "count": count,
            "mean_s": total / count if count else math.nan,
            "p50_s": histogram_quantile(buckets, 0.5),
            "p95_s": histogram_quantile(buckets, 0.95),
            "p99_s": histogram_quantile(buckets, 0.99),
            "buckets": {str(k): v for k, v in sorted(buckets.items())},
        },
        "asklepios_kickouts_total": metrics.get("asklepios_kickouts_total"),
        "asklepios_kickins_total": metrics.get("asklepios_kickins_total"),
        "asklepios_kickouts_held": {k: v for k, v in metrics.items() if k.startswith("asklepios_kickouts_held_total")},
        "sync_seconds": synced_at - ctl.started_at,
        "rss_synced_mib": rss_synced,
        "rss_end_mib": rss_end,
        "cpu_seconds_total": cpu_end,
        "watch_events": watch.events,
        "asklepios_watch_restarts": {k: v for k, v in metrics.items() if k.startswith("asklepios_watch_restarts")},
        "asklepios_warnings": warnings,
    }
    params = {"nodes": nodes, "kickouts": kickouts, "spread_s": spread, "kickout_s": kickout_s,
              "kickin_s": kickin_s, "death": "crash (out of kwok, Lease deleted, port silent) + set_ready False",
              "kubelet_ports": True, "restore_after": restore_after}  # fmt: skip
    raw = {"cycles": [attrs.asdict(c) for c in cycles]}
    name = f"lag-{nodes}" if restore_after == "released" else f"lag-{nodes}-restore-at-{restore_after}"
    return write_result(name, "lag", params=params, summary=summary, raw=raw, steps=steps)
