# Sourced by build.sh and build-node.sh: what both builds share. Each caches its
# binaries outside the work tree (a fresh clone finds them) under
# $SHARDMESH_CACHE/<what>-<version>, built into <dir>.tmp and moved into place
# with a stamp written last, so a build that was cut short is redone.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod" | head -n1)"
cache="${SHARDMESH_CACHE:-$HOME/.cache/shardmesh}"

# Exits the script (0 when skipping, 1 under CI) if Go is missing: a fresh
# machine without Go gets told what to install rather than a go: not found.
require_go() { # <what needs it> <make target>
  command -v go >/dev/null 2>&1 && return 0
  local msg="$1 need Go >= 1.26 (install golang, then run 'make $2')"
  if [ "${CI:-}" = "true" ]; then echo "ERROR: $msg" >&2; exit 1; fi
  echo "SKIP: $msg"
  exit 0
}

# Stamps the real version in: a module build otherwise reports v0.0.0-master,
# and the kubelet's and apiserver's version skew checks would refuse it.
k8s_ldflags() {
  local minor vpkg=k8s.io/component-base/version
  minor="$(echo "$version" | cut -d. -f2)"
  echo "-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor" \
    "-X $vpkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$version"
}

# <out>.tmp holds a build until finish_build stamps it and moves it into place.
start_build() { rm -rf "$1.tmp" && mkdir -p "$1.tmp"; build_start=$(date +%s); }
finish_build() { # <out> <label>
  echo "$version" >"$1.tmp/.complete"
  rm -rf "$1" && mv "$1.tmp" "$1"
  echo "$2 $version: built in $(( $(date +%s) - build_start ))s"
}
