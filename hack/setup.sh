#!/usr/bin/env bash
# Shared by the README's two commands: a venv with Asklepios, its test tools and the
# lab, and the pinned control-plane binaries (built from the Go module proxy the first
# time: about 10 minutes on 2 cores; skipped when present).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }
if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv"
  python3.11 -m venv .venv
fi
step "installing asklepios[test] and asklepios-lab (editable)"
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' -e ./lab
step "building control-plane binaries (skipped when present)"
bash hack/controlplane/build.sh >/dev/null
