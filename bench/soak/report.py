"""The soak's figures: ``results/soak-<minutes>m-<seed>.json``, a table printed and appended to SOAK.md.

Everything is computed from the recorded :class:`~bench.soak.model.History` and the
checkers' results: faults by kind (fault log), Asklepios' actions (audit log: node
patches by kind, force deletes, evictions, Events by reason, holds by reason from the
``KickoutHeld`` Events' messages), power actions (the BMC emulator's timeline), the
invariants, the recovery and kickin time distributions, RSS over time (sampled from
``/proc/<pid>/status``) and the processes (restarts, exits).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import RESULTS_DIR
from bench.results import _clean, distribution, machine, source_commit
from bench.soak.faults import DURATIONS, Planned
from bench.soak.invariants import CheckResult, Timelines
from bench.soak.model import History, Params

JSON = dict[str, Any]
MIB = 1024 * 1024


def _faults(history: History) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in history.faults:
        if r.index >= 0 and r.phase in ("start", "skip", "error"):
            out[r.kind]["injected" if r.phase == "start" else r.phase] += 1
    return {k: {"injected": c["injected"], "skipped": c["skip"], "errors": c["error"]} for k, c in sorted(out.items())}


def _actions(history: History, tl: Timelines) -> JSON:
    kinds = Counter(p.kind for p in tl.patches if p.ok)
    events: Counter[str] = Counter()
    holds: Counter[str] = Counter()
    deletes = evictions = failed = 0
    for w in history.writes:
        if w.user not in tl.users or w.resource == "leases" or w.resource.endswith("reviews"):
            continue
        failed += not w.ok
        if w.resource == "events" and w.verb == "create" and w.ok:
            reason = str(w.body.get("reason", ""))
            events[reason] += 1
            if reason == "KickoutHeld":
                holds[str(w.body.get("message", "")).split(":")[0]] += 1
        elif w.resource == "pods" and w.verb == "delete" and w.ok:
            deletes += 1
        elif w.subresource == "eviction" and w.ok:
            evictions += 1
    power = Counter(f"{e.kind} {e.value}" for e in history.bmc)
    return {
        "kickouts": kinds["kickout"],
        "kickins": kinds["kickin"],
        "repairs": kinds["repair"],
        "kickout record updates": kinds["record"],
        "countdown marks": kinds["marks"],
        "pods force-deleted": deletes,
        "evictions": evictions,
        "failed writes (any status not 2xx, 409 included)": failed,
        "BMC: ForceOff requested": power["reset Off"],
        "BMC: powered Off": power["power Off"],
        "BMC: On requested": power["reset On"],
        "BMC: powered On": power["power On"],
        "events": dict(sorted(events.items())),
        "holds_by_reason": dict(sorted(holds.items())),
    }


def _rss(history: History, samples: Sequence[tuple[float, str, int]]) -> JSON:
    by_process: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t, name, rss in samples:
        by_process[name].append((t, rss))
    per_process = {
        name: {
            "seconds": round(s[-1][0] - s[0][0]),
            "first_mib": s[0][1] / MIB,
            "last_mib": s[-1][1] / MIB,
            "max_mib": max(r for _, r in s) / MIB,
        }
        for name, s in by_process.items()
    }
    minutes: dict[int, list[int]] = defaultdict(list)
    for t, _, rss in samples:
        minutes[int((t - history.start) // 60)].append(rss)
    series = [{"minute": m, "min_mib": min(v) / MIB, "max_mib": max(v) / MIB} for m, v in sorted(minutes.items())]
    longest = max(per_process.items(), key=lambda kv: kv[1]["seconds"], default=None)
    return {
        "max_mib": max((rss for _, _, rss in samples), default=0) / MIB,
        "longest_process": {"name": longest[0], **longest[1]} if longest else None,
        "by_minute": series,
        "by_process": per_process,
    }


def _processes(history: History) -> JSON:
    how = Counter(i.how or "running" for i in history.incarnations)
    return {
        "processes": len(history.incarnations),
        "restarts": len(history.incarnations) - 2,
        "stopped by": dict(how),
        "exit codes": dict(Counter(str(i.exit_code) for i in history.incarnations)),
    }


def _bounds(p: Params) -> JSON:
    return {
        "decision_window_s (inv 1)": p.decision_window,
        "guard_slack_s (inv 2)": p.guard_slack,
        "max_unhealthy (inv 2)": p.max_unhealthy,
        "recovery: grace + kickout + bound (inv 5)": [p.grace, p.kickout, p.recovery_bound],
        "kickin: kickin + bound (inv 6)": [p.kickin, p.kickin_bound],
        "pod_wait_s (inv 6)": p.pod_wait,
        "outage_settle_s (inv 5, 6)": p.outage_settle,
    }


def build(
    history: History,
    results: Sequence[CheckResult],
    planned: Sequence[Planned],
    rss: Sequence[tuple[float, str, int]],
    *,
    minutes: float,
    seed: int,
    timing: Mapping[str, float],
    settings: Mapping[str, str],
    workdir: str,
    source: str = "",
    commit: str = "",
) -> JSON:
    tl = Timelines(history)
    violations = [v for r in results for v in r.violations]
    recovery = next((r.samples for r in results if r.invariant == "5"), ())
    kickin = next((r.samples for r in results if r.invariant == "6"), ())
    summary = {
        "passed": not violations,
        "violations": len(violations),
        "duration_s": round(history.end - history.start, 1),
        "faults": _faults(history),
        "actions": _actions(history, tl),
        "invariants": [
            {
                "invariant": r.invariant,
                "title": r.title,
                "checks": r.checks,
                "violations": len(r.violations),
                "set aside": dict(r.notes),
            }
            for r in results
        ],
        "recovery_s": distribution(list(recovery)),
        "kickin_after_ready_s": distribution(list(kickin)),
        "rss": _rss(history, rss),
        "processes": _processes(history),
        "apiserver_outages_s": [round(o.end - o.start, 1) for o in history.outages],
        "watch_gaps": len(history.watch_gaps),
    }
    return {
        "scenario": f"soak-{minutes:g}m-{seed}" + ("-no-fencing" if settings.get("ASKLEPIOS_FENCING") == "off" else ""),
        "kind": "soak",
        "finished": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "asklepios_commit": commit or source_commit(),
        "asklepios_source_sha256": source,
        "params": {
            "minutes": minutes,
            "seed": seed,
            "nodes": list(history.params.watched),
            "statefulsets": dict(history.params.statefulsets),
            "settings": dict(settings),
            "bounds": _bounds(history.params),
            "fault_durations_s": {k: [list(r) for r in v] for k, v in DURATIONS.items()},
        },
        "timing": {k: round(v, 1) for k, v in timing.items()},
        "summary": summary,
        "violations": [
            {
                "invariant": v.invariant,
                "t": v.t,
                "at": _rel(history, v.t),
                "node": v.node,
                "what": v.what,
                "evidence": list(v.evidence),
            }
            for v in violations
        ],
        "plan": [
            {"index": f.index, "at": f.at, "kind": f.kind, "order": list(f.order), "durations": list(f.durations)}
            for f in planned
        ],
        "fault_log": [
            {
                "t": r.t,
                "at": _rel(history, r.t),
                "index": r.index,
                "kind": r.kind,
                "phase": r.phase,
                "targets": list(r.targets),
                "detail": r.detail,
            }
            for r in history.faults
        ],
        "lab_workdir": workdir,
    }


def _rel(history: History, t: float) -> str:
    if math.isinf(t):
        return "end"
    rel = t - history.start
    return f"{int(rel // 60):02d}:{rel % 60:04.1f}"


def _q(d: Mapping[str, Any]) -> str:
    if not d.get("count"):
        return "-"
    return " / ".join(f"{d[k]:.1f}" for k in ("p50", "p95", "max")) + f" (n={d['count']})"


def markdown(doc: JSON) -> list[str]:
    s = doc["summary"]
    a = s["actions"]
    verdict = "PASS" if s["passed"] else f"FAIL: {s['violations']} violations"
    lines = [
        f"## {doc['scenario']}: {verdict}",
        "",
        f"Finished {doc['finished']}, Asklepios {doc['asklepios_commit']} (src snapshot "
        f"{doc['asklepios_source_sha256']}), {doc['machine']['nproc']} cores; "
        f"faults for {doc['params']['minutes']:g} min, {s['duration_s']:.0f} s recorded; "
        f"wall time {doc['timing']['total']:.0f} s (set-up {doc['timing']['setup']:.0f} s, "
        f"drain {doc['timing']['drain']:.0f} s).",
        "",
        "| fault | injected | skipped |",
        "|---|---|---|",
        *(f"| {k} | {v['injected']} | {v['skipped']} |" for k, v in s["faults"].items()),
        "",
        "| invariant | checks | violations | set aside |",
        "|---|---|---|---|",
        *(
            f"| {i['invariant']}. {i['title']} | {i['checks']} | {i['violations']} | "
            + (", ".join(f"{k}: {v}" for k, v in i["set aside"].items() if v) or "-")
            + " |"
            for i in s["invariants"]
        ),
        "",
        "| figure | value |",
        "|---|---|",
        f"| kickouts / kickins / repairs | {a['kickouts']} / {a['kickins']} / {a['repairs']} |",
        "| holds by reason (KickoutHeld Events) | "
        + (", ".join(f"{k}: {v}" for k, v in a["holds_by_reason"].items()) or "-")
        + " |",
        f"| BMC ForceOff requested / On requested | {a['BMC: ForceOff requested']} / {a['BMC: On requested']} |",
        f"| pods force-deleted / evictions | {a['pods force-deleted']} / {a['evictions']} |",
        f"| recovery: node death to its pods Running elsewhere, p50 / p95 / max (s) | {_q(s['recovery_s'])} |",
        f"| kickin after Ready, p50 / p95 / max (s) | {_q(s['kickin_after_ready_s'])} |",
        f"| Asklepios processes (restarts) | {s['processes']['processes']} ({s['processes']['restarts']}) |",
        f"| RSS max (MiB); longest-lived process first / last / max | {_rss_line(s['rss'])} |",
        f"| apiserver outages (s) | {', '.join(str(x) for x in s['apiserver_outages_s']) or '-'} |",
    ]
    if doc["violations"]:
        lines += ["", "Violations:", ""]
        for v in doc["violations"]:
            evidence = f" ({'; '.join(v['evidence'])})" if v["evidence"] else ""
            lines.append(f"- invariant {v['invariant']} at {v['at']} {v['node']}: {v['what']}{evidence}")
    return lines


def _rss_line(rss: JSON) -> str:
    longest = rss.get("longest_process")
    if not longest:
        return "-"
    return (
        f"{rss['max_mib']:.0f}; {longest['name']} ({longest['seconds']} s): "
        f"{longest['first_mib']:.0f} / {longest['last_mib']:.0f} / {longest['max_mib']:.0f}"
    )


def emit(doc: JSON, history: History, results: Sequence[CheckResult], into: Path = RESULTS_DIR) -> None:
    """Write the JSON, append the section to SOAK.md, print the table (and, on failure, the replay)."""
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"{doc['scenario']}.json"
    soak_md = into / "SOAK.md"
    path.write_bytes(orjson.dumps(_clean(doc), option=orjson.OPT_INDENT_2))
    section = markdown(doc)
    if not soak_md.exists():
        soak_md.write_text(
            "# Soak results\n\nOne section per run of `python -m bench soak --minutes N --seed S`, appended by\n"
            "each run (the method: bench/soak/runner.py, bench/soak/invariants.py, bench/soak/faults.py).\n"
        )
    with soak_md.open("a") as f:
        f.write("\n" + "\n".join(section) + "\n")
    print("\n".join(section), flush=True)
    print(f"[soak] wrote {path} and appended to {soak_md}", flush=True)
    if not doc["summary"]["passed"]:
        seed, minutes = doc["params"]["seed"], doc["params"]["minutes"]
        print(f"\n[soak] VIOLATIONS. Replay: python -m bench soak --minutes {minutes:g} --seed {seed}", flush=True)
        print("[soak] fault log:", flush=True)
        for r in doc["fault_log"]:
            print(f"  {r['at']} #{r['index']} {r['kind']} {r['phase']} {','.join(r['targets'])} {r['detail']}")
        for result in results:
            for v in result.violations:
                print(f"[soak] invariant {v.invariant} at {_rel(history, v.t)} on {v.node}: {v.what}", flush=True)
                for line in v.evidence:
                    print(f"         {line}", flush=True)
