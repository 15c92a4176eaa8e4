#!/usr/bin/env bash
# Makes sure promtool (and prometheus) are installed, for the monitoring tests
# (tests/unit/test_monitoring.py: `promtool check rules`, `promtool test rules`,
# `promtool check config`). Idempotent: nothing is done when promtool is on PATH.
# Otherwise, as root, installs Debian's `prometheus` package (bookworm: 2.42.0,
# about 20 MB: 8 s measured from nothing, package lists included). Without root it says what to
# run and fails: the tests fail without promtool, they are never skipped.
#
#   hack/prometheus.sh        # prints the promtool version last
set -euo pipefail
step() { printf '\n== %s\n' "$*" >&2; }

if ! command -v promtool >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "promtool not found: install Debian's prometheus package (sudo apt-get install --no-install-recommends prometheus)" >&2
    exit 1
  fi
  step "installing prometheus (Debian package: promtool for the monitoring tests)"
  start=$(date +%s)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package enables and, where systemd runs, starts a Prometheus server on
  # :9090. Only the binaries are wanted here: stop and disable that service.
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  echo "prometheus installed in $(( $(date +%s) - start ))s" >&2
fi
promtool --version 2>&1 | head -n 1
