#!/usr/bin/env bash
# Prints the directory holding the prometheus-operator CRDs (one YAML file per
# CRD) of the release pinned in hack/monitoring/go.mod, fetched through the Go
# module proxy into the Go module cache the first time (about 30 MB, seconds),
# verified against hack/monitoring/go.sum (a mismatch fails). Needs `go`.
#
#   hack/monitoring/crds.sh        # -> .../prometheus-operator@v0.85.0/example/prometheus-operator-crd
set -euo pipefail
cd "$(dirname "$0")"
module=github.com/prometheus-operator/prometheus-operator
# -mod=readonly: go.mod and go.sum are the pins, never updated here.
dir=$(GOFLAGS=-mod=readonly go mod download -json "$module" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if info.get("Error") or not info.get("Dir"):
    sys.exit(info.get("Error") or "go mod download gave no Dir")
print(info["Dir"])
')
crds="$dir/example/prometheus-operator-crd"
[[ -f "$crds/monitoring.coreos.com_servicemonitors.yaml" ]] || { echo "no CRDs in $crds" >&2; exit 1; }
echo "$crds"
