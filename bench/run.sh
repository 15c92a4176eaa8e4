#!/usr/bin/env bash
# Run every benchmark scenario and size, each under the cluster lock
# (flock /tmp/asklepios-cluster.lock, or $ASKLEPIOS_BENCH_LOCK), then regenerate
# bench/results/RESULTS.md. Extra arguments go to `python -m bench all`
# (e.g. --memory-window 300, --only lag load).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m bench all "$@"
