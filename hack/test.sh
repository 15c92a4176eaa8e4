#!/usr/bin/env bash
# The test command of the README: from a fresh clone, set up the venv, build the pinned
# control-plane binaries (first time only: minutes), lint, type-check, then run every
# test (unit + cluster). Exits non-zero on the first failure.
#
#   hack/test.sh                 # everything
#   hack/test.sh -k seed         # extra arguments go to pytest (and skip the soak)
#
# After pytest, a full run ends with the 3-minute soak (seed 1): random overlapping
# faults, the invariants checked from the audit log; any violation fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

bash hack/setup.sh
step "building helm (charts/asklepios tests; first time: minutes, one line; skipped when present)"
bash hack/helm/build.sh >/dev/null
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null || ! command -v tmux >/dev/null; then
  step "installing buildah, debootstrap (the image test) and tmux (status --watch test), Debian packages"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends buildah debootstrap crun tmux >/dev/null
fi
bash hack/prometheus.sh >/dev/null  # promtool for the monitoring tests (Debian package, first time only)

export PATH="$PWD/.venv/bin:$PATH"
step "ruff check";          ruff check .
step "ruff format --check"; ruff format --check .
step "mypy";                mypy
step "lint-imports";        lint-imports
step "pytest";              pytest -p no:cacheprovider "$@"
if [ "$#" -eq 0 ]; then
  step "soak: 3 minutes, seed 1 (results in a temporary directory)"
  python -m bench soak --minutes 3 --seed 1 --results-dir "$(mktemp -d -t asklepios-ci-soak-XXXX)"
fi
