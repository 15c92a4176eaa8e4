"""RESULTS.md from every ``results/*.json``: one Markdown table per kind of scenario.

Regenerated after each scenario and by ``python -m bench table``; it only reads
the JSON files, so tables can be rebuilt without a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench import RESULTS_DIR

JSON = dict[str, Any]


def num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def quad(d: JSON | None) -> str:
    """'p50 / p95 / p99 / max' of a distribution."""
    if not d or not d.get("count"):
        return "-"
    return " / ".join(num(d.get(k)) for k in ("p50", "p95", "p99", "max"))


def tri(d: JSON | None, digits: int = 2) -> str:
    """'p50 / p99 / max' of a distribution."""
    if not d or not d.get("count"):
        return "-"
    return " / ".join(num(d.get(k), digits) for k in ("p50", "p99", "max"))


def table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _lag(docs: list[JSON]) -> list[str]:
    header = ["run", "watched nodes", "kickouts", "kickout lag, API deadline (s)",
              "kickout lag, precise deadline (s)", "kickin lag, API deadline (s)",
              "kickin lag, precise deadline (s)", "Asklepios histogram mean / p99 (s)",
              "RSS after sync (MiB)", "failed cycles"]  # fmt: skip
    rows = []
    for d in sorted(docs, key=lambda d: (d["params"]["nodes"], d["scenario"])):
        s = d["summary"]
        h = s["asklepios_histogram"]
        rows.append([
            d["scenario"], num(s["watched_nodes"]), num(s["kickouts"]), tri(s["kickout_lag_api_s"], 3),
            tri(s["kickout_lag_precise_s"], 3), tri(s["kickin_lag_api_s"], 3), tri(s["kickin_lag_precise_s"], 3),
            f"{num(h['mean_s'], 3)} / {num(h['p99_s'], 3)}", num(s["rss_synced_mib"], 0),
            num(s.get("failed_cycles", 0)),
        ])  # fmt: skip
    parts = [
        ("NotReady PATCH returned -> Asklepios' countdown start (s)", "notready_seen_after_s"),
        ("NotReady PATCH returned -> notready-since mark seen (s)", "notready_mark_seen_after_s"),
        ("Ready seen by the bench -> Asklepios' Ready period start (s)", "ready_seen_after_s"),
        ("taint seen -> kickout record says released (s)", "taint_to_released_s"),
        ("restore -> Ready=True seen (s)", "restore_to_ready_s"),
    ]
    detail = [[d["scenario"], *[tri(d["summary"].get(key), 3) for _, key in parts]]
              for d in sorted(docs, key=lambda d: (d["params"]["nodes"], d["scenario"]))]  # fmt: skip
    title = ["## Kickout and kickin lag", "", "Each lag cell: p50 / p99 / max, seconds."]
    return [*title, "", *table(header, rows), "", "What the deadlines are made of (p50 / p99 / max):", "",
            *table(["run", *[p for p, _ in parts]], detail)]  # fmt: skip


def _load(docs: list[JSON]) -> list[str]:
    header = ["watched nodes", "steady requests/min (measured)", "of which leader Lease", "without leader Lease",
              "original's polling, requests/min (COMPUTED 6(3N+1), not measured)",
              "requests per kickout", "requests per kickin", "burst nodes", "steady window (s)"]  # fmt: skip
    ordered = sorted(docs, key=lambda d: d["params"]["nodes"])
    rows = []
    for d in ordered:
        s = d["summary"]
        lease = s["steady_per_minute"] - s["steady_per_minute_without_leases"]
        rows.append([
            num(s["watched_nodes"]), num(s["steady_per_minute"], 1), num(lease, 1),
            num(s["steady_per_minute_without_leases"], 1), num(s["polling_reference_per_minute_computed"]),
            num(s["per_kickout"]), num(s["per_kickin"]), num(s["burst_nodes"]), num(s["steady_window_s"], 0),
        ])  # fmt: skip
    out = ["## Apiserver load", "", *table(header, rows), ""]
    kinds = sorted({k for d in docs for k in d["summary"]["steady_by_request_per_minute"]})
    detail = [[num(d["summary"]["watched_nodes"])]
              + [num(d["summary"]["steady_by_request_per_minute"].get(k, 0.0), 1) for k in kinds]
              for d in ordered]  # fmt: skip
    out += ["Steady state, requests/min by verb and resource:", "", *table(["watched nodes", *kinds], detail), ""]
    for phase, key in (("kickout", "per_kickout_by_request"), ("kickin", "per_kickin_by_request")):
        if not all(key in d["summary"] for d in docs):
            continue
        kinds = sorted({k for d in docs for k in d["summary"][key]})
        detail = [[num(d["summary"]["watched_nodes"])] + [num(d["summary"][key].get(k, 0.0)) for k in kinds]
                  for d in ordered]  # fmt: skip
        out += [f"Requests per {phase}, by verb and resource (burst phase / nodes; leader Lease left out):", "",
                *table(["watched nodes", *kinds], detail), ""]  # fmt: skip
    return out


def _memory(docs: list[JSON]) -> list[str]:
    out = ["## Memory and CPU", ""]
    for d in sorted(docs, key=lambda d: (d["scenario"] != "memory", -d["summary"]["nodes"], d["scenario"])):
        s = d["summary"]
        out.append(f"{num(s['nodes'])} nodes, {num(s['pods'])} balancer pods ({d['scenario']}):")
        out.append("")
        rows = [[phase, num(w.get("rss_last_mib"), 1), num(w.get("rss_max_mib"), 1),
                 num(w.get("cpu_seconds"), 1), num(w.get("cpu_percent_of_one_core"), 1),
                 num(w.get("seconds"), 0)]
                for phase, w in s["phases"].items()]  # fmt: skip
        out += table(["phase", "RSS at end (MiB)", "RSS max (MiB)", "CPU (s)", "CPU (% of one core)",
                      "duration (s)"], rows)  # fmt: skip
        out.append("")
        out += _memory_breakdown(d)
    return out


def _memory_breakdown(d: JSON) -> list[str]:
    """What a second controller, under tracemalloc, holds after its sync (see tracemem.py)."""
    prof = d.get("raw", {}).get("tracemalloc") or {}
    if "by_package_mib" not in prof:
        return []
    out = [f"Under tracemalloc after sync: {num(prof['traced_now_mib'], 1)} MiB traced now, "
           f"{num(prof['traced_peak_mib'], 1)} MiB at peak. Biggest owners (MiB): "
           + ", ".join(f"{k} {num(v, 1)}" for k, v in list(prof["by_package_mib"].items())[:6]) + ".",
           "", "Biggest allocation sites still live (MiB, blocks, line):", ""]  # fmt: skip
    rows = [[num(x["mib"], 1), num(x["blocks"]), _site(x["where"])] for x in prof.get("by_line", [])[:10]]
    return [*out, *table(["MiB", "blocks", "where"], rows), ""]


def _site(where: list[str]) -> str:
    """``file.py:line `code` `` from a formatted tracemalloc traceback."""
    files = [w.strip() for w in where if w.strip().startswith("File ")]
    code = where[-1].strip() if where and not where[-1].strip().startswith("File ") else ""
    place = ""
    if files:
        path, _, line = files[-1].removeprefix('File "').partition('", line ')
        place = f"{path.rsplit('/', 1)[-1]}:{line}"
    return place + (f" `{code}`".replace("|", "\\|") if code else "")


RECOVERY_ORDER = ("recovery-force-delete", "recovery-no-force-delete", "recovery-fencing")


def _recovery(docs: list[JSON]) -> list[str]:
    docs = sorted(docs, key=lambda d: (RECOVERY_ORDER.index(d["scenario"]) if d["scenario"] in RECOVERY_ORDER
                                       else len(RECOVERY_ORDER), d["scenario"]))  # fmt: skip
    phases: list[str] = []
    for d in docs:
        phases += [p for p in d["summary"]["phases"] if p not in phases]
    header = ["phase (s)"] + [f"{_recovery_label(d)}: p50 / p99 / max" for d in docs]
    rows = []
    for phase in phases:
        row = [phase]
        for d in docs:
            v = d["summary"]["phases"].get(phase)
            row.append(" / ".join(num(v.get(k)) for k in ("p50", "p99", "max")) if v else "-")
        rows.append(row)
    goal = [
        f"{_recovery_label(d)}: {d['summary'].get('runs_within_goal', '-')} of {d['summary']['runs']} runs"
        f" <= {num(d['summary'].get('goal_crash_to_running_s'), 0)} s"
        f" (grace + kickout + {3 if d['summary'].get('volumes') else 2} s)"
        for d in docs if "goal_crash_to_running_s" in d["summary"]
    ]  # fmt: skip
    out = ["## Recovery (seed scenario)", "", *table(header, rows), ""]
    if goal:
        out += ["Crash -> all Running elsewhere within the goal: " + "; ".join(goal) + ".", ""]
    return out


def _recovery_label(d: JSON) -> str:
    s = d["summary"]
    if "force_delete" not in s:
        return f"{d['scenario']} ({s['runs']} runs)"
    what = "fencing (redfish)" if s.get("fencing") else "no fencing"
    volumes = ", RWO volumes" if s.get("volumes") else ""
    return f"force delete {'on' if s['force_delete'] else 'off'}, {what}{volumes} ({s['runs']} runs)"


def _podwatch(docs: list[JSON]) -> list[str]:
    out = ["## Pod watch: one per kicked-out node vs one cluster-wide", ""]
    for d in docs:
        s = d["summary"]
        direct = s["direct_lists"]
        cw, one = direct["cluster_wide"], direct["one_node"]
        out += [f"{num(s['nodes'])} nodes, {num(s['pods'])} pods ({d['scenario']}). The bench's own paged lists "
                f"(pages of 500, as the reflector): all pods {num(cw['bytes'] / 2**20, 1)} MiB in "
                f"{num(cw['seconds_median'])} s (apiserver CPU {num(cw['apiserver_cpu_s_median'])} s); one node's "
                f"{num(one['items_median'], 0)} pods {num(one['bytes_median'] / 1024, 1)} KiB in "
                f"{num(one['seconds_median'], 3)} s (apiserver CPU {num(one['apiserver_cpu_s_median'], 3)} s).",
                ""]  # fmt: skip
        header = ["watch", "pods held", "list to synced (s)", "RSS after sync (MiB)", "RSS peak (MiB)",
                  "child CPU to sync (s)", "apiserver CPU during sync, minus idle (s)",
                  f"events received in churn ({num(s['configurations'][0]['churn_pods'])} pods patched)",
                  "child CPU in churn (s)", "apiserver CPU in churn, minus idle (s)",
                  f"child CPU idle {num(s['configurations'][0]['idle_window_s'], 0)} s"]  # fmt: skip
        rows = []
        for c in s["configurations"]:
            if c["mode"] == "cluster":
                name = "one cluster-wide (Reflector, parse_pod_ref)"
            elif c["followed_nodes"]:
                name = f"per node x{c['followed_nodes']} (NodePodWatches)"
            else:
                name = "none (baseline process)"
            rows.append([
                name, num(c["pods_held"]), num(c["list_s_child"]), num(c["rss_synced_mib"], 1),
                num(c["rss_peak_mib"], 1), num(c["child_cpu_s_to_sync"]),
                num(c["cpu_s_during_sync_minus_idle"]["kube-apiserver"]), num(c["events_received"]),
                num(c["child_cpu_s_churn"]), num(c["cpu_s_during_churn_minus_idle"]["kube-apiserver"]),
                num(c["child_cpu_s_idle"]),
            ])  # fmt: skip
        out += [*table(header, rows), ""]
    return out


def _mass_outage(docs: list[JSON]) -> list[str]:
    out = ["## Mass outage (two replicas, leader election on)", "",
           "Event-loop lag per replica (leader first at the end of the window): p50 / p99 / max-at-most seconds, "
           "from its own `asklepios_event_loop_lag_seconds`. Kickout lag against the countdown Asklepios wrote.",
           ""]  # fmt: skip
    rows = []
    for d in docs:
        s = d["summary"]
        for name in ("quiet", "storm1", "storm2"):
            w = s.get(name)
            if not w:
                continue
            reps = sorted(w["replicas"], key=lambda r: not r.get("leader_at_end"))
            lag = "; ".join(
                " / ".join(num(r["event_loop_lag"].get(k), 3) for k in ("p50_s", "p99_s", "max_at_most_s"))
                for r in reps
            )
            kick = tri(w.get("kickout_lag_s")) if name == "storm2" else "-"
            rows.append([d["scenario"], d.get("asklepios_commit", "-"), name,
                         f"{w.get('nodes', 0)} in {num(w.get('down_within_s'), 1)} s" if w.get("nodes") else "-",
                         str(w.get("kicked_out", "-")), lag, str(w["lease"]["missed"]), str(w["leadership_changes"]),
                         str(sum(w["healthz_failures"].values())),
                         " + ".join(num(r.get("cpu_seconds"), 1) for r in reps),
                         num(max((r.get("rss_max_mib") or 0.0) for r in reps), 1),
                         num(w["apiserver_requests"], 0), kick,
                         num(w.get("first_crash_to_last_taint_s"), 1)])  # fmt: skip
    header = ["run", "commit", "window", "down", "kicked out", "loop lag (s)", "Lease renewals missed",
              "leader changes", "/healthz failures", "CPU s", "RSS peak MiB", "apiserver requests",
              "kickout lag p50/p99/max (s)", "first crash -> last taint (s)"]  # fmt: skip
    return out + table(header, rows)


def _lists(docs: list[JSON]) -> list[str]:
    out = ["## What a list costs", "",
           "Per list (all its pages), averaged over the repeats: who served it and what it fetched, from the "
           "apiserver's storage metrics; its latency from the audit log.", ""]  # fmt: skip
    rows = []
    for d in docs:
        for r in d["summary"]["lists"]:
            cost = r["apiserver_per_list"]
            fetched = {
                (k.split("{")[1].rstrip("}") if "{" in k else "etcd"): v
                for k, v in cost.items()
                if k.startswith("apiserver_storage_list_fetched_objects_total")
            }
            if "apiserver_cache_list_fetched_objects_total" in cost:  # 1.28: the watch cache's own metric
                fetched["watchcache"] = cost["apiserver_cache_list_fetched_objects_total"]
            etcd = sum(v for k, v in cost.items() if k.startswith("etcd_request_duration_seconds_count"))
            served = ", ".join(
                f"{k.removeprefix('storage=') or 'etcd'}: {num(v, 0)} fetched" for k, v in fetched.items()
            )
            rows.append([d["params"]["release"], r["list"], str(r["pages"]), num(r["objects"], 0),
                         served or "-", num(etcd, 1), num(r["audit_seconds"].get("p50"), 3)])  # fmt: skip
    header = ["release", "list", "pages", "objects", "served by (objects fetched)", "etcd requests",
              "latency p50 per request (s)"]  # fmt: skip
    return out + table(header, rows)


RENDER: dict[str, Callable[[list[JSON]], list[str]]] = {
    "lag": _lag,
    "load": _load,
    "memory": _memory,
    "recovery": _recovery,
    "podwatch": _podwatch,
    "mass-outage": _mass_outage,
    "lists": _lists,
}


def render(docs: list[JSON]) -> str:
    out = ["# Asklepios benchmark results", "",
           "Generated by `python -m bench table` from `bench/results/*.json`;",
           "see bench/README.md for the method and what dominates each figure.", ""]  # fmt: skip
    for kind, fn in RENDER.items():
        mine = [d for d in docs if d["kind"] == kind]
        if mine:
            out += [*fn(mine), ""]
    out += ["## Runs", "",
            "Load: the machine's 1-minute load average at the start and at the end of the run, and the share of "
            "both CPUs busy over the run (the machine is shared with other work).", ""]  # fmt: skip
    rows = [[d["scenario"], d["finished"], d.get("asklepios_commit", "-"), num(d["timing"]["total_s"], 0),
             _load_cell(d), ", ".join(f"{k} {v:.0f}" for k, v in d["timing"]["steps_s"].items())]
            for d in docs]  # fmt: skip
    out += table(["scenario", "finished (UTC)", "Asklepios commit", "wall time (s)", "load start -> end (CPUs busy)",
                  "steps (s)"], rows)  # fmt: skip
    if docs:
        m = docs[-1]["machine"]
        out += ["", f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
                    f"Python {m['python']}, Linux {m['kernel']}."]  # fmt: skip
    return "\n".join(out) + "\n"


def _load_cell(d: JSON) -> str:
    load = d.get("load_average")
    if not load:
        return "-"
    return f"{num(load['start'][0])} -> {num(load['end'][0])} ({num(load.get('cpus_busy_percent'), 0)} %)"


def load_results() -> list[JSON]:
    """Every result file but the soaks' (they have SOAK.md), sorted by scenario name."""
    docs = [orjson.loads(p.read_bytes()) for p in sorted(RESULTS_DIR.glob("*.json"))]
    return [d for d in docs if isinstance(d, dict) and "kind" in d and d["kind"] != "soak"]


START, END = "<!-- results:start -->", "<!-- results:end -->"


def write_table() -> None:
    """Write results/RESULTS.md, and copy it into bench/README.md between the result markers."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = render(load_results())
    (RESULTS_DIR / "RESULTS.md").write_text(text)
    readme = RESULTS_DIR.parent / "README.md"
    if readme.exists():
        current = readme.read_text()
        if START in current and END in current:
            body = text.split("\n", 1)[1].replace("\n## ", "\n### ")  # demote headings one level
            head, rest = current.split(START, 1)
            readme.write_text(f"{head}{START}\n{body}{END}{rest.split(END, 1)[1]}")
