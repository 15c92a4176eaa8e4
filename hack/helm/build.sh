#!/usr/bin/env bash
# Builds the pinned Helm CLI (helm.sh/helm/v4 cmd/helm, pinned by go.mod/go.sum beside
# this script) from the Go module proxy into a cache directory outside the repository,
# the way hack/controlplane/build.sh builds the control plane. Skipped when present.
# One line on stderr with the elapsed time; go's output goes to the log the line names.
#
#   hack/helm/build.sh          # build if missing, print the helm binary's path last
#
# The binary: ~/.cache/asklepios/bin/helm-<version>/helm ($XDG_CACHE_HOME if set);
# ASKLEPIOS_HELM overrides the path (then nothing is built if it exists).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^require helm\.sh\/helm\/v4 \(v[0-9.]*\)$/\1/p' "$here/go.mod")
[[ -n $version ]] || { echo "hack/helm/build.sh: no 'require helm.sh/helm/v4 vX.Y.Z' line in $here/go.mod" >&2; exit 1; }
helm=${ASKLEPIOS_HELM:-${XDG_CACHE_HOME:-$HOME/.cache}/asklepios/bin/helm-$version/helm}
if [[ ! -x $helm ]]; then
  mkdir -p "$(dirname "$helm")"
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly  # go.mod and go.sum are the pins: never updated by a build
  . "$here/../lib/gobuild.sh"
  # helm reports this version (`helm version`), as its own release build would.
  go_build_quiet "$here" helm.sh/helm/v4/cmd/helm "$helm" \
    "-s -w -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" helm
fi
echo "$helm"
