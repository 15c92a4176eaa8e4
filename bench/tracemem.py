"""Asklepios under tracemalloc: ``python -m bench.tracemem OUT.json`` runs ``asklepios run``.

Tracing starts before Asklepios (and its libraries) are imported, so the report
covers everything the process allocated through Python's allocators. On SIGUSR1
it writes ``OUT.json``: traced memory now and at peak, RSS, and the biggest
allocation sites by package and by line; tracing stops then. Tracing slows the process
down and adds its own overhead, so it is only used to explain the RSS measured
without it, never to measure.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

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


def main() -> int:
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
