"""``python -m bench <scenario> [options]``: run one scenario, or ``all`` of them.

``all`` runs every scenario and size as its own child process, each wrapped in
``flock <lock file>`` (``ASKLEPIOS_BENCH_LOCK``, default /tmp/asklepios-cluster.lock)
so that no two control planes share the machine; then it regenerates RESULTS.md.
A single scenario does not take the lock itself: wrap it, as ``all`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import REPO_DIR, lag, lists, load, massoutage, memory, podwatch, recovery
from bench.controller import SOURCE
from bench.report import write_table

SIZES = (10, 1000, 5000)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("lag", help="kickout/kickin lag at N watched nodes")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--kickouts", type=int, default=200)
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which NotReady starts spread")
    p.add_argument("--kickout-seconds", type=int, default=5)
    p.add_argument("--kickin-seconds", type=int, default=5)
    p.add_argument("--restore-after", choices=("released", "taint"), default="released",
                   help="power a kicked-out node on once its record says released (default), or at once")  # fmt: skip
    p = sub.add_parser("load", help="apiserver requests of Asklepios at N watched nodes")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--window", type=float, default=180.0, help="steady-state window, seconds")
    p.add_argument("--burst", type=int, default=100, help="nodes kicked out at once for per-kickout counts")
    p = sub.add_parser("mass-outage", help="two storms of dead nodes against two replicas (loop lag, Lease, cost)")
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--storm1", type=int, default=3000, help="nodes Unknown within seconds (above the guard)")
    p.add_argument("--storm2", type=int, default=100, help="nodes dead at once (below the guard)")
    p.add_argument("--kickout-seconds", type=int, default=60, help="longer than storm 1 takes to land")
    p.add_argument("--hold", type=float, default=30.0, help="seconds storm 1 lasts past the kickout deadline")
    p.add_argument("--pods", type=int, default=0, help="balancer pods on the nodes (balancer on if > 0)")
    p = sub.add_parser("lists", help="what each kind of list costs the apiserver and etcd")
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--pods", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--release", default=None, help="Kubernetes release, e.g. 1.28 (default: the lab's default)")
    p = sub.add_parser("memory", help="RSS/CPU at many nodes and balancer pods")
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods-per-node", type=int, default=10)
    p.add_argument("--window", type=float, default=600.0, help="steady window, seconds (issue: 10 min)")
    p.add_argument("--burst", type=int, default=500, help="nodes going NotReady at once")
    p.add_argument("--no-profile", action="store_true", help="skip the tracemalloc run of the controller")
    p = sub.add_parser("recovery", help="seed scenario: crash to Running elsewhere, restore to balanced")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--force-delete", choices=("true", "false"), default="true",
                   help="ASKLEPIOS_FORCE_DELETE of the measured controller")  # fmt: skip
    p.add_argument("--fencing", action="store_true", help="ASKLEPIOS_FENCING=redfish with the lab's BMC")
    p.add_argument("--volumes", action="store_true", help="a ReadWriteOnce volume per pod (the lab's attach chain)")
    p = sub.add_parser("podwatch", help="one cluster-wide pod watch vs a watch per kicked-out node")
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods-per-node", type=int, default=10)
    p.add_argument("--followed", type=int, nargs="*", default=[1, 20], help="per-node watch counts to measure")
    p.add_argument("--churn", type=int, default=5000, help="pods patched during each configuration's window")
    p = sub.add_parser("soak", help="random overlapping faults; invariants from the audit log and watches")
    p.add_argument("--minutes", type=float, default=3.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=1, help="the fault plan's seed (the same seed replays it)")
    p.add_argument("--fencing", choices=("redfish", "off"), default="redfish",
                   help="ASKLEPIOS_FENCING of every process (off: the probe and the Lease alone decide)")  # fmt: skip
    p.add_argument(
        "--results-dir", type=Path, default=None, help="where the JSON and SOAK.md go (default: bench/results)"
    )
    p = sub.add_parser("all", help="every scenario and size, each under the cluster lock")
    p.add_argument("--memory-window", type=float, default=600.0)
    p.add_argument("--only", nargs="*", default=(), help="scenario names to run (default: all)")
    sub.add_parser("table", help="regenerate results/RESULTS.md from the JSON files")
    for name, child in sub.choices.items():
        if name not in ("all", "table"):
            child.add_argument("--keep", action="store_true", help="keep the lab's work directory")
        if name in ("lag", "load", "recovery", "podwatch", "mass-outage"):
            child.add_argument("--source", default="HEAD",
                               help="Asklepios to measure: a commit (snapshot of its src/asklepios, default "
                                    "HEAD) or 'worktree' (src/ as it is now)")  # fmt: skip
    return parser


def _all(memory_window: float, only: tuple[str, ...]) -> int:
    lock = os.environ.get("ASKLEPIOS_BENCH_LOCK", "/tmp/asklepios-cluster.lock")
    flock = shutil.which("flock")
    pieces = [["lag", "--nodes", str(n)] for n in SIZES]
    pieces += [["load", "--nodes", str(n)] for n in SIZES]
    pieces += [["memory", "--window", str(memory_window)]]
    pieces += [["recovery", "--runs", "10", "--force-delete", v] for v in ("true", "false")]
    pieces += [["recovery", "--runs", "10", "--fencing"], ["podwatch"]]
    failed = 0
    for piece in pieces:
        if only and piece[0] not in only:
            continue
        argv = [sys.executable, "-m", "bench", *piece]
        if flock:
            argv = [flock, lock, *argv]
        started = time.monotonic()
        print(f"[bench] running {' '.join(argv)}", flush=True)
        code = subprocess.run(argv, cwd=REPO_DIR).returncode
        print(f"[bench] {' '.join(piece)}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        failed += code != 0
    write_table()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.scenario == "all":
        return _all(args.memory_window, tuple(args.only))
    if args.scenario == "table":
        write_table()
        return 0
    if getattr(args, "source", None):
        SOURCE.select(args.source)
    if args.scenario == "lag":
        lag.run(args.nodes, kickouts=args.kickouts, spread=args.spread, kickout_s=args.kickout_seconds,
                kickin_s=args.kickin_seconds, restore_after=args.restore_after, keep=args.keep)  # fmt: skip
    elif args.scenario == "load":
        load.run(args.nodes, window=args.window, burst=args.burst, keep=args.keep)
    elif args.scenario == "mass-outage":
        massoutage.run(args.nodes, storm1=args.storm1, storm2=args.storm2, kickout_s=args.kickout_seconds,
                       hold=args.hold, pods=args.pods, keep=args.keep)  # fmt: skip
    elif args.scenario == "lists":
        lists.run(nodes=args.nodes, pods=args.pods, repeat=args.repeat, version=args.release, keep=args.keep)
    elif args.scenario == "memory":
        memory.run(args.nodes, pods_per_node=args.pods_per_node, window=args.window, burst=args.burst,
                   profiled=not args.no_profile, keep=args.keep)  # fmt: skip
    elif args.scenario == "recovery":
        recovery.run(
            runs=args.runs,
            force_delete=args.force_delete == "true",
            fencing=args.fencing,
            volumes=args.volumes,
            keep=args.keep,
        )
    elif args.scenario == "podwatch":
        podwatch.run(args.nodes, pods_per_node=args.pods_per_node, followed=tuple(args.followed), churn=args.churn,
                     keep=args.keep)  # fmt: skip
    elif args.scenario == "soak":
        from bench.soak.runner import run as soak  # noqa: PLC0415 - only the soak needs its modules

        return soak(args.minutes, args.seed, keep=args.keep, results_dir=args.results_dir, fencing=args.fencing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
