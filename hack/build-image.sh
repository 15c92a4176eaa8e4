#!/usr/bin/env bash
# Build the Asklepios container image on a machine with neither a container
# registry nor a Docker engine, then check it runs. The venv comes from the lock file
# requirements/runtime.lock (hashes required); the image is FROM scratch plus what that
# venv's Python needs (Containerfile, hack/image/assemble.py).
#
#   hack/build-image.sh [--base IMAGE] [--rebuild-base] [--ca-bundle FILE]
#                       [--save FILE] [--no-verify]
#
# Needs root and Debian's buildah (apt-get install buildah debootstrap).
# Unless --base names an image that is already in local storage, the base
# image localhost/python:3.11-slim is made from a Debian bookworm rootfs
# (debootstrap; bookworm's python3 is 3.11) so that the Containerfile's FROM
# resolves without pulling. Storage driver vfs and isolation chroot work without
# overlay mounts or user namespaces; override with STORAGE_DRIVER=overlay.
#
# --ca-bundle FILE (default: $PIP_CERT or $SSL_CERT_FILE when set) is handed to
# the wheel-building step as the build secret pip-ca, for networks whose HTTPS
# goes through an intercepting proxy; it never ends up in the image.
# --save FILE writes the image as a docker-archive tarball, loadable with
#   ctr -n k8s.io images import FILE      (containerd, e.g. on Burrito nodes)
#   podman load -i FILE / docker load -i FILE
# and beside it the CycloneDX SBOM of the image's venv (FILE without .tar, plus
# .cdx.json: asklepios-0.1.0.tar -> asklepios-0.1.0.cdx.json), the copy of the
# image's own /opt/asklepios.cdx.json. Output: one line per step; buildah's in a log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

base=localhost/python:3.11-slim
rebuild_base=0
save=""
verify=1
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-}}
while (($#)); do
    case $1 in
        --base) base=$2; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        --ca-bundle) ca_bundle=$2; shift 2 ;;
        --save) save=$2; shift 2 ;;
        --no-verify) verify=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

storage_driver=${STORAGE_DRIVER:-vfs}
isolation=${BUILDAH_ISOLATION:-chroot}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/asklepios/__init__.py)
[[ -n $version ]] || { echo "build-image.sh: no __version__ in src/asklepios/__init__.py" >&2; exit 1; }
image=localhost/asklepios:$version

bah() { buildah --storage-driver "$storage_driver" "$@"; }
log() { printf '==> %s\n' "$*" >&2; }

command -v buildah >/dev/null || { echo "build-image.sh: buildah not found (apt-get install buildah)" >&2; exit 1; }

work=$(mktemp -d)
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- the base image -----------------------------------------------------------
if [[ $base == localhost/python:3.11-slim ]] && { ((rebuild_base)) || ! bah inspect --type image "$base" >/dev/null 2>&1; }; then
    [[ $(id -u) == 0 ]] || { echo "build-image.sh: debootstrap needs root" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "build-image.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
    log "debootstrap bookworm (python3, python3-venv) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/*.bin \
           "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/log/*.log
    log "importing the rootfs as $base"
    ctr=$(bah from scratch); containers+=("$ctr")
    mnt=$(bah mount "$ctr")
    tar -C "$work/rootfs" -cf - . | tar -C "$mnt" -xpf -
    bah umount "$ctr" >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 "$ctr"
    bah commit --quiet --rm "$ctr" "$base" >/dev/null
    containers=()
    rm -rf "$work/rootfs"
fi

# --- the image ----------------------------------------------------------------
secret=()
if [[ -n $ca_bundle ]]; then
    [[ -f $ca_bundle ]] || { echo "build-image.sh: no such CA bundle: $ca_bundle" >&2; exit 1; }
    secret=(--secret "id=pip-ca,src=$ca_bundle")
fi
build_log=${XDG_CACHE_HOME:-$HOME/.cache}/asklepios/logs/build-image.log
mkdir -p "$(dirname "$build_log")"
log "building $image from Containerfile (BASE=$base, storage $storage_driver, isolation $isolation; log: $build_log)"
start=$(date +%s)
# buildah 1.28 leaves the build stage's working container behind (a full vfs copy of the
# base plus the venv, about 250 MB): remove the ones this build adds, and the image that
# this tag named before (untagged by this build).
stage_containers() { bah containers --format '{{.ContainerID}} {{.ImageName}}' | awk -v b="$base" '$2 == b {print $1}' | sort; }
stages_before=$(stage_containers)
previous=$(bah images --noheading --format '{{.ID}}' "$image" 2>/dev/null || true)
# No --layers: every build installs from the lock anew (a stale cached step would cost
# more than the minute it saves); the base image above is what is kept between builds.
bah build --isolation "$isolation" "${secret[@]}" \
    --build-arg BASE="$base" --build-arg VERSION="$version" \
    -f Containerfile -t "$image" . >"$build_log" 2>&1 \
    || { echo "build-image.sh: buildah build failed; the end of $build_log:" >&2; tail -30 "$build_log" >&2; exit 1; }
for ctr in $(comm -13 <(printf '%s\n' "$stages_before") <(stage_containers)); do bah rm "$ctr" >/dev/null; done
if [[ -n $previous && $previous != "$(bah images --noheading --format '{{.ID}}' "$image")" ]]; then
    bah rmi "$previous" >/dev/null 2>&1 || true  # still used by a container: kept
fi
log "built $image in $(( $(date +%s) - start ))s, $(bah images --format '{{.Size}}' "$image")"
# --- check it -----------------------------------------------------------------
if ((verify)); then
    cfg=$(bah inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$image")
    log "image config: user entrypoint cmd = $cfg"
    [[ $cfg == "65532:65532 [asklepios] [run]" ]] || { echo "build-image.sh: unexpected image config: $cfg" >&2; exit 1; }
    ctr=$(bah from --pull=never "$image"); containers+=("$ctr")
    log "running: asklepios version (as the image's user, in a fresh container)"
    out=$(bah run --isolation "$isolation" --user 65532:65532 "$ctr" -- asklepios version)
    printf '%s\n' "$out"
    [[ $out == *"$version"* ]] || { echo "build-image.sh: 'asklepios version' did not print $version" >&2; exit 1; }
fi

if [[ -n $save ]]; then
    sbom=${save%.tar}.cdx.json
    log "saving $image to $save (docker-archive) and its SBOM to $sbom"
    rm -f "$save"
    bah push --quiet "$image" "docker-archive:$save:asklepios:$version" >/dev/null
    ctr=$(bah from --pull=never "$image"); containers+=("$ctr")
    mnt=$(bah mount "$ctr")
    cp "$mnt/opt/asklepios.cdx.json" "$sbom"
    bah umount "$ctr" >/dev/null
fi
log "done: $image"
