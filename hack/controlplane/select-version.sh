# Sourced (not run) by build.sh and gen-kubernetes-gomod.sh, with $here set to
# hack/controlplane. Resolves the scripts' optional version selector to one release.
#
# Each release is a versions.env plus its own module dirs (kubernetes/, etcd/, with a
# go.mod/go.sum pinning it):
#   hack/controlplane/versions.env            the default release (modules beside it)
#   hack/controlplane/v1.28/versions.env      another release (modules in v1.28/)
# A module dir missing from a release's dir is taken from hack/controlplane/ (that is
# how every release shares the one kwok module); module_dir checks that the go.mod
# used really pins the version the release's versions.env names.
#
# select_version [selector]
#   no selector: the default release. Otherwise "1.28", "v1.28" or "v1.28.15" (the
#   major.minor or the full KUBERNETES_VERSION of one of the versions.env files).
# Sets version_dir and is_default, and sources that versions.env.

release_envs() {  # the versions.env files, the default first
  local f
  echo "$here/versions.env"
  for f in "$here"/v*/versions.env; do
    [[ -f $f ]] && echo "$f"
  done
  return 0
}

env_value() {  # env_value <file> <KEY>
  sed -n "s/^$2=[\"']\{0,1\}\([^\"']*\)[\"']\{0,1\}\s*$/\1/p" "$1"
}

select_version() {
  local sel=${1:-} want f v
  if [[ -z $sel ]]; then
    version_dir=$here
  else
    want=${sel#v} version_dir=
    while read -r f; do
      v=$(env_value "$f" KUBERNETES_VERSION); v=${v#v}
      if [[ $want == "$v" || $want == "$(cut -d. -f1,2 <<<"$v")" ]]; then
        version_dir=$(dirname "$f")
        break
      fi
    done < <(release_envs)
    if [[ -z $version_dir ]]; then
      echo "unknown Kubernetes version '$sel'; supported:" \
        "$(release_envs | while read -r f; do env_value "$f" KUBERNETES_VERSION; done | tr '\n' ' ')" >&2
      exit 2
    fi
  fi
  is_default=false
  [[ $version_dir == "$here" ]] && is_default=true
  . "$version_dir/versions.env"
}

module_dir() {  # module_dir <name> <module path> <version>: the module dir to build in
  local dir=$version_dir/$1
  [[ -d $dir ]] || dir=$here/$1
  if ! grep -Eq "^(require)?[[:space:]]*${2//./\\.} ${3//./\\.}([[:space:]]|$)" "$dir/go.mod"; then
    echo "$dir/go.mod does not require $2 $3 (as $version_dir/versions.env says)" >&2
    exit 1
  fi
  echo "$dir"
}
