"""Asklepios under tracemalloc: ``python -m bench.tracemem OUT.json`` runs ``asklepios run``.

Tracing starts before Asklepios (and its libraries) are imported, so the report
covers everything the process allocated through Python's allocators. On SIGUSR1
it writes ``OUT.json``: traced memory now and at peak, RSS, and the biggest
allocation sites by package and by line; tracing stops then. Tracing slows the process
down and adds its own overhead, so it is only used to explain the RSS measured
without it, never to measure.

``python -m bench.tracemem --imports [OUT.json]`` measures what importing costs, step
by step: each step imports one more package on top of the previous ones, in a fresh
interpreter (RSS: the least of three runs; traced: one more run under tracemalloc;
``-X importtime`` for the time), so each row is what that package adds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

MIB = 2**20


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _owner(frames: tuple[tuple[str, int], ...]) -> str:
    """The package of the innermost real file of a raw traceback (most recent frame first)."""
    for path, _line in frames:
        if path.startswith("<"):  # import machinery: the importing module is further out
            continue
        if "site-packages/" in path:
            return path.split("site-packages/", 1)[1].split("/", 1)[0]
        if "/src/asklepios/" in path:
            return "asklepios." + path.split("/src/asklepios/", 1)[1].split("/", 1)[0].removesuffix(".py")
        return "stdlib:" + path.rsplit("/", 1)[-1]
    return "<unknown>"


def report() -> dict[str, object]:
    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()  # the report itself is not traced (tracing it made it take minutes)

    def top(key: str, n: int) -> list[dict[str, object]]:
        return [
            {"mib": round(s.size / MIB, 2), "blocks": s.count, "where": s.traceback.format(limit=8)}
            for s in snapshot.statistics(key)[:n]
        ]

    packages: dict[str, int] = {}
    owners: dict[tuple[tuple[str, int], ...], str] = {}
    # The raw traces (domain, size, frames, ...): building a Trace object for each of
    # hundreds of thousands of blocks is what makes the public API slow here.
    for _domain, size, frames, *_rest in snapshot.traces._traces:  # type: ignore[attr-defined]
        owner = owners.get(frames)
        if owner is None:
            owner = owners[frames] = _owner(frames)
        packages[owner] = packages.get(owner, 0) + size
    return {
        "rss_mib": _rss_mib(),
        "traced_now_mib": current / MIB,
        "traced_peak_mib": peak / MIB,
        "by_package_mib": {k: round(v / MIB, 2) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])[:20]},
        "by_line": top("lineno", 25),
    }


# (label, modules): cumulative; each step adds its modules to all those before it.
IMPORT_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python (nothing imported)", ()),
    ("stdlib the app uses", ("asyncio", "ssl", "logging", "json", "datetime", "argparse", "ipaddress", "hashlib")),
    ("attrs, orjson", ("attrs", "orjson")),
    ("anyio", ("anyio",)),
    ("aiohttp (client and web)", ("aiohttp", "aiohttp.web")),
    ("prometheus_client", ("prometheus_client",)),
    ("yaml", ("yaml",)),
    ("stamina (tenacity)", ("stamina",)),
    ("environ-config", ("environ",)),
    ("kubernetes_asyncio, as Asklepios imports it (asklepios.kube.k8s)", ("asklepios.kube.k8s",)),
    ("asklepios (asklepios.cli: the rest of Asklepios)", ("asklepios.cli",)),
)
# Not a step: what the whole package would add instead (`import kubernetes_asyncio`, as before).
WHOLE_KUBERNETES_ASYNCIO = ("import kubernetes_asyncio (whole package, as before)", ("kubernetes_asyncio",))

_IMPORT_CHILD = r"""
import sys, time, tracemalloc
trace = sys.argv[1] == "1"
if trace:
    tracemalloc.start()
started = time.perf_counter()
for name in sys.argv[2:]:
    __import__(name)
seconds = time.perf_counter() - started
rss = 0.0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) / 1024
traced = tracemalloc.get_traced_memory()[0] / 2**20 if trace else 0.0
print(rss, traced, len(sys.modules), seconds)
"""


def _import_cost(modules: tuple[str, ...], runs: int = 3) -> dict[str, float]:
    def run(trace: bool) -> list[float]:
        argv = [sys.executable, "-c", _IMPORT_CHILD, "1" if trace else "0", *modules]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return [float(x) for x in out.split()]

    plain = [run(trace=False) for _ in range(runs)]
    traced = run(trace=True)
    return {
        "rss_mib": min(p[0] for p in plain),
        "traced_mib": traced[1],
        "modules": plain[0][2],
        "import_s": min(p[3] for p in plain),
    }


def import_costs() -> dict[str, Any]:
    """Cumulative import steps: RSS, traced memory and modules after each, and what it added."""
    rows: list[dict[str, Any]] = []
    alternative: dict[str, Any] = {}
    so_far: tuple[str, ...] = ()
    previous: dict[str, float] | None = None
    for label, modules in IMPORT_STEPS:
        before = so_far
        so_far = (*so_far, *modules)
        cost = _import_cost(so_far)
        row: dict[str, Any] = {"step": label, "modules_imported": list(modules), **cost}
        if previous is not None:
            row["added_rss_mib"] = cost["rss_mib"] - previous["rss_mib"]
            row["added_traced_mib"] = cost["traced_mib"] - previous["traced_mib"]
            row["added_modules"] = cost["modules"] - previous["modules"]
        rows.append(row)
        if label.startswith("kubernetes_asyncio"):
            whole = _import_cost((*before, *WHOLE_KUBERNETES_ASYNCIO[1]))
            base = previous or cost
            alternative = {
                "step": WHOLE_KUBERNETES_ASYNCIO[0],
                "instead_of": label,
                **whole,
                "added_rss_mib": whole["rss_mib"] - base["rss_mib"],
                "added_traced_mib": whole["traced_mib"] - base["traced_mib"],
                "added_modules": whole["modules"] - base["modules"],
            }
        previous = cost
    return {"steps": rows, "alternative": alternative, "python": sys.version.split()[0]}


def _print_import_costs(data: dict[str, Any]) -> None:
    rows = [*data["steps"], data["alternative"]]
    print(f"{'step':68s} {'RSS':>7s} {'+RSS':>6s} {'traced':>7s} {'+traced':>7s} {'modules':>7s} {'+mod':>5s}")
    for r in rows:
        print(
            f"{r['step'][:68]:68s} {r['rss_mib']:7.1f} {r.get('added_rss_mib', 0):6.1f} {r['traced_mib']:7.1f} "
            f"{r.get('added_traced_mib', 0):7.1f} {int(r['modules']):7d} {int(r.get('added_modules', 0)):5d}"
        )


def main() -> int:
    if sys.argv[1:2] == ["--imports"]:
        data = import_costs()
        _print_import_costs(data)
        if len(sys.argv) > 2:
            Path(sys.argv[2]).write_text(json.dumps(data, indent=2))
        return 0
    out = Path(sys.argv[1])
    tracemalloc.start(8)

    def dump(_signum: int, _frame: FrameType | None) -> None:
        try:
            data = report()
        except Exception as exc:  # a report bug must not kill the controller
            data = {"error": repr(exc)}
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))

    signal.signal(signal.SIGUSR1, dump)
    from asklepios.cli import main as asklepios_main  # noqa: PLC0415 - traced from here on

    return asklepios_main(["run"])


if __name__ == "__main__":
    sys.exit(main())
