#!/usr/bin/env bash
# Builds the pinned upstream binaries of the local control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok, and the CSI
# external-attacher of the lab's volumes) from the Go
# module proxy, one at a time (a 2-core machine), into a cache directory outside
# the repository. A binary already there is not rebuilt. One line per binary on stderr
# (with its elapsed time); go's own output goes to the log file the line names.
#
#   hack/controlplane/build.sh            # build what is missing, print the bin dir last
#   hack/controlplane/build.sh 1.28       # the same for another release (v1.28/versions.env)
#   ASKLEPIOS_BIN_DIR=/path hack/controlplane/build.sh
#
# The bin dir is ~/.cache/asklepios/bin/<KUBERNETES_VERSION> ($XDG_CACHE_HOME if set).
# ASKLEPIOS_BIN_DIR overrides it for the default release only, so that binaries of two
# releases never end up in one directory. See select-version.sh for the selector.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/select-version.sh"
select_version "${1:-}"
cache_bin=${XDG_CACHE_HOME:-$HOME/.cache}/asklepios/bin/$KUBERNETES_VERSION
if $is_default; then bin_dir=${ASKLEPIOS_BIN_DIR:-$cache_bin}; else bin_dir=$cache_bin; fi
mkdir -p "$bin_dir"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly  # go.mod and go.sum are the pins: never updated by a build
log() { printf '[build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# version ldflags so that `kube-apiserver --version` reports the pinned version
build_date=2026-01-01T00:00:00Z  # fixed: reproducible binaries
version_ldflags() {  # version_ldflags <vX.Y.Z>: what the binaries report as their version
  local major=${1#v} minor
  minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$1 -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  echo "$flags"
}
k8s_ldflags=$(version_ldflags "$KUBERNETES_VERSION")

. "$here/../lib/gobuild.sh"
gobuild_log_dir+=/$KUBERNETES_VERSION  # one log per release and binary
build() {  # build <module dir> <package> <binary name> <ldflags>
  local dir=$1 pkg=$2 name=$3 ldflags=$4
  if [[ -x "$bin_dir/$name" ]]; then
    log "$name: already built"
    return
  fi
  go_build_quiet "$dir" "$pkg" "$bin_dir/$name" "$ldflags" "$name"
}

etcd_dir=$(module_dir etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
k8s_dir=$(module_dir kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION")
kwok_dir=$(module_dir kwok sigs.k8s.io/kwok "$KWOK_VERSION")
attacher_dir=$(module_dir csi-attacher github.com/kubernetes-csi/external-attacher/v4 "$CSI_ATTACHER_VERSION")
total=$(date +%s)
build "$etcd_dir" go.etcd.io/etcd/server/v3 etcd "-s -w"
build "$k8s_dir" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
if [[ -n ${APISERVER_REPORTING:-} ]]; then  # the same apiserver, linked to report an older version (seconds)
  build "$k8s_dir" k8s.io/kubernetes/cmd/kube-apiserver "kube-apiserver-${APISERVER_REPORTING%.*}" \
    "$(version_ldflags "$APISERVER_REPORTING")"
fi
build "$k8s_dir" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$k8s_ldflags"
build "$k8s_dir" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$k8s_ldflags"
build "$kwok_dir" sigs.k8s.io/kwok/cmd/kwok kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build "$attacher_dir" github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher csi-attacher \
  "-s -w -X main.version=$CSI_ATTACHER_VERSION"
log "all binaries present in $bin_dir ($(( $(date +%s) - total ))s)"
echo "$bin_dir"
