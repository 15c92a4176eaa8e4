#!/usr/bin/env bash
# Shared by the README's two commands: a venv with Asklepios, its test tools and the
# lab (from the lock file requirements/test.lock), and the pinned control-plane binaries
# (built from the Go module proxy the first time: about 10 minutes on 2 cores, one line
# per binary, go's output in the log that line names; skipped when present).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }
if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv"
  python3.11 -m venv .venv
fi
pip() { .venv/bin/pip --quiet --disable-pip-version-check "$@"; }
# Every dependency from the lock, each file checked against its hash (bash hack/lock.sh
# refreshes it); then the two local packages without dependencies or build isolation,
# so nothing at all is resolved from the index here.
step "installing the locked dependencies (requirements/test.lock, hashes required)"
pip install --require-hashes -r requirements/test.lock
step "installing asklepios and asklepios-lab (editable, dependencies from the lock only)"
pip install --no-deps --no-build-isolation -e . -e ./lab
pip check
step "building control-plane binaries (first time: about 10 minutes; skipped when present)"
bash hack/controlplane/build.sh >/dev/null
