# Sourced (not run) by hack/controlplane/build.sh and hack/helm/build.sh: one quiet
# `go build` per binary. The terminal gets one line per binary, started when the build
# starts and finished with its elapsed time; the full output of `go build` (hundreds of
# `go: downloading` lines on a cold module cache) goes to a log file that the line names.
#
# go_build_quiet <module dir> <package> <output file> <ldflags> <name>
# Logs: ${XDG_CACHE_HOME:-~/.cache}/asklepios/logs/build-<name>.log (overwritten per build).

gobuild_log_dir=${XDG_CACHE_HOME:-$HOME/.cache}/asklepios/logs

go_build_quiet() {
  local dir=$1 pkg=$2 out=$3 ldflags=$4 name=$5 start log
  mkdir -p "$gobuild_log_dir"
  log=$gobuild_log_dir/build-$name.log
  start=$(date +%s)
  printf '[build %s] %s: building %s (log: %s) ... ' "$(date -u +%H:%M:%S)" "$name" "$pkg" "$log" >&2
  if ! (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg") >"$log" 2>&1; then
    printf 'FAILED after %ss; the end of %s:\n' "$(( $(date +%s) - start ))" "$log" >&2
    tail -n 20 "$log" >&2
    rm -f "$out.tmp"
    return 1
  fi
  mv "$out.tmp" "$out"
  printf 'built in %ss\n' "$(( $(date +%s) - start ))" >&2
}
