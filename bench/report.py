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


def table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _lag(docs: list[JSON]) -> list[str]:
    header = ["watched nodes", "kickouts", "kickout lag, API deadline (s)",
              "kickout lag, precise deadline (s)", "kickin lag, API deadline (s)",
              "kickin lag, precise deadline (s)",
              "Asklepios histogram mean / p99 (s)", "RSS after sync (MiB)"]  # fmt: skip
    rows = []
    for d in sorted(docs, key=lambda d: d["params"]["nodes"]):
        s = d["summary"]
        h = s["asklepios_histogram"]
        rows.append([
            num(s["watched_nodes"]), num(s["kickouts"]), quad(s["kickout_lag_api_s"]),
            quad(s["kickout_lag_precise_s"]), quad(s["kickin_lag_api_s"]), quad(s["kickin_lag_precise_s"]),
            f"{num(h['mean_s'], 3)} / {num(h['p99_s'], 3)}", num(s["rss_synced_mib"], 0),
        ])  # fmt: skip
    title = ["## Kickout and kickin lag", "", "Each lag cell: p50 / p95 / p99 / max."]
    return [*title, "", *table(header, rows)]


def _load(docs: list[JSON]) -> list[str]:
    header = ["watched nodes", "steady requests/min (measured)", "of which Lease", "without Lease",
              "original's polling, requests/min (COMPUTED 6(3N+1), not measured)",
              "requests per kickout", "requests per kickin", "steady window (s)"]  # fmt: skip
    rows = []
    for d in sorted(docs, key=lambda d: d["params"]["nodes"]):
        s = d["summary"]
        lease = s["steady_per_minute"] - s["steady_per_minute_without_leases"]
        rows.append([
            num(s["watched_nodes"]), num(s["steady_per_minute"], 1), num(lease, 1),
            num(s["steady_per_minute_without_leases"], 1), num(s["polling_reference_per_minute_computed"]),
            num(s["per_kickout"]), num(s["per_kickin"]), num(s["steady_window_s"], 0),
        ])  # fmt: skip
    kinds = sorted({k for d in docs for k in d["summary"]["steady_by_request_per_minute"]})
    detail = [
        [num(d["summary"]["watched_nodes"])]
        + [num(d["summary"]["steady_by_request_per_minute"].get(k, 0.0), 1) for k in kinds]
        for d in sorted(docs, key=lambda d: d["params"]["nodes"])
    ]
    return ["## Apiserver load", "", *table(header, rows), "",
            "Steady state, requests/min by verb and resource:", "",
            *table(["watched nodes", *kinds], detail)]  # fmt: skip


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


def _recovery(docs: list[JSON]) -> list[str]:
    out = ["## Recovery (seed scenario)", ""]
    for d in docs:
        s = d["summary"]
        out.append(f"{s['runs']} runs ({d['scenario']}), seconds:")
        out.append("")
        rows = [[phase, num(v["median"]), num(v["max"]), num(v["min"])] for phase, v in s["phases"].items()]
        out += table(["phase", "median (s)", "max (s)", "min (s)"], rows)
        out.append("")
    return out


RENDER: dict[str, Callable[[list[JSON]], list[str]]] = {
    "lag": _lag,
    "load": _load,
    "memory": _memory,
    "recovery": _recovery,
}


def render(docs: list[JSON]) -> str:
    out = ["# Asklepios benchmark results", "",
           "Generated by `python -m bench table` from `bench/results/*.json`;",
           "see bench/README.md for the method and what dominates each figure.", ""]  # fmt: skip
    for kind, fn in RENDER.items():
        mine = [d for d in docs if d["kind"] == kind]
        if mine:
            out += [*fn(mine), ""]
    out += ["## Runs", ""]
    rows = [[d["scenario"], d["finished"], d.get("asklepios_commit", "-"), num(d["timing"]["total_s"], 0),
             ", ".join(f"{k} {v:.0f}" for k, v in d["timing"]["steps_s"].items())]
            for d in docs]  # fmt: skip
    out += table(["scenario", "finished (UTC)", "Asklepios commit", "wall time (s)", "steps (s)"], rows)
    if docs:
        m = docs[-1]["machine"]
        out += ["", f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
                    f"Python {m['python']}, Linux {m['kernel']}."]  # fmt: skip
    return "\n".join(out) + "\n"


def load_results() -> list[JSON]:
    """Every result file, sorted by scenario name."""
    docs = [orjson.loads(p.read_bytes()) for p in sorted(RESULTS_DIR.glob("*.json"))]
    return [d for d in docs if isinstance(d, dict) and "kind" in d]


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
