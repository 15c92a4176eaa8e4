"""Asklepios benchmarks: kickout lag, apiserver load, memory/CPU, and recovery.

Every scenario runs against the local control-plane lab (real etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok nodes) with Asklepios as a real
``python -m asklepios run`` process, writes ``bench/results/<scenario>.json``, and
regenerates ``bench/results/RESULTS.md`` from every JSON file there. Nothing here
asserts on time: benchmarks measure and report.

    python -m bench lag --nodes 1000      # one scenario, one size
    python -m bench all                   # everything, each piece under the cluster lock
    python -m bench table                 # only regenerate RESULTS.md
"""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent
