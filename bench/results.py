"""Numbers in, JSON out: percentiles, histogram quantiles, result files, the machine.

A result file is one JSON object: ``scenario`` (its file stem), ``kind`` (which
table of RESULTS.md renders it), ``params``, ``summary`` (the figures the table
shows), ``raw`` (per-sample data, for anyone who wants to re-analyse) and
``machine`` / ``timing`` (what it ran on, how long each step took).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import REPO_DIR, RESULTS_DIR
from bench.controller import SOURCE
from bench.report import write_table

JSON = dict[str, Any]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def distribution(values: Sequence[float]) -> JSON:
    """count, min, p50, p95, p99, max, mean of `values` (seconds or anything)."""
    return {
        "count": len(values),
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float:
    """Prometheus-style quantile (0..1) from cumulative buckets {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            width = count - previous_count
            fraction = 0.0 if width == 0 else (rank - previous_count) / width
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return bounds[-1]


def epoch(rfc3339: str | None) -> float | None:
    """Seconds since the epoch of an apiserver timestamp (``...Z``), or None."""
    if not rfc3339:
        return None
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def machine() -> JSON:
    """nproc, memory, CPU model, Python and kernel of this machine."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


class Steps:
    """Wall-clock durations of the named steps of a run, in order, and how busy the machine was.

    The machine is shared: the 1-minute load average is taken at the start, after each
    step and at the end, and the share of all CPUs busy over the run (/proc/stat), so
    contention from other work shows in the result file.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last = self.started
        self.steps: dict[str, float] = {}
        self.load_start = os.getloadavg()
        self._cpu_start = _cpu_ticks()
        self.load_after: dict[str, float] = {}

    def done(self, name: str) -> float:
        now = time.monotonic()
        self.steps[name] = round(now - self._last, 1)
        self._last = now
        self.load_after[name] = round(os.getloadavg()[0], 2)
        print(f"[bench] {name}: {self.steps[name]:.1f} s (load {self.load_after[name]:.2f})", flush=True)
        return self.steps[name]

    def as_json(self) -> JSON:
        return {"steps_s": self.steps, "total_s": round(time.monotonic() - self.started, 1)}

    def load_json(self) -> JSON:
        """Load averages (1, 5, 15 min) at start and end, 1-min after each step, CPU busy share."""
        busy0, total0 = self._cpu_start
        busy1, total1 = _cpu_ticks()
        return {
            "start": [round(x, 2) for x in self.load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
            "after_step_1min": self.load_after,
            "cpus_busy_percent": round(100.0 * (busy1 - busy0) / max(1, total1 - total0), 1),
        }


def source_commit() -> str:
    """The commit the measured Asklepios was built from (read-only git), "+dirty" if src/ differs.

    When the bench runs Asklepios from a snapshot of a commit (bench.controller.SOURCE),
    that commit, clean.
    """
    if SOURCE.commit:
        return SOURCE.describe()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO_DIR, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: make them null; round floats to microseconds."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_result(
    scenario: str,
    kind: str,
    *,
    params: JSON,
    summary: JSON,
    raw: JSON,
    steps: Steps,
    notes: Iterable[str] = (),
) -> Path:
    """Write ``results/<scenario>.json`` and regenerate RESULTS.md; returns the JSON path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario,
        "kind": kind,
        "finished": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "asklepios_commit": source_commit(),
        "params": params,
        "timing": steps.as_json(),
        "load_average": steps.load_json(),
        "notes": list(notes),
        "summary": summary,
        "raw": raw,
    }
    path = RESULTS_DIR / f"{scenario}.json"
    path.write_bytes(orjson.dumps(_clean(doc), option=orjson.OPT_INDENT_2))
    write_table()
    print(f"[bench] wrote {path}", flush=True)
    return path
