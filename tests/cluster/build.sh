#!/usr/bin/env bash
# Build the test control plane from the official k8s.io/kubernetes Go module,
# once per version: kube-apiserver, kube-controller-manager, kubectl, and an
# embedded etcd pinned by the same go.mod. Binaries are cached outside the
# work tree (a fresh clone finds them) under $SHARDMESH_CACHE, keyed by version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod" | head -n1)"
cache="${SHARDMESH_CACHE:-$HOME/.cache/shardmesh}"
out="$cache/bin-$version"
bins=(kube-apiserver kube-controller-manager kubectl etcd)

# The stamp is written last, so a build that was cut short is redone.
stamp="$out/.complete"
have_all() {
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  [ -f "$stamp" ]
}
if have_all; then
  echo "control plane $version: cached in $out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  msg="cluster tests need Go >= 1.26 to build the control plane (install golang, then run 'make cluster-bins')"
  if [ "${CI:-}" = "true" ]; then echo "ERROR: $msg" >&2; exit 1; fi
  echo "SKIP: $msg"
  exit 0
fi
echo "control plane $version: building into $out (first time only; several minutes)"
mkdir -p "$out.tmp"
cd "$here"
start=$(date +%s)
# Stamp the real version in (a module build otherwise reports v0.0.0-master).
minor="$(echo "$version" | cut -d. -f2)"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags="$ldflags -X $vpkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"
go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl \
  ./etcd
echo "$version" >"$out.tmp/.complete"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "control plane $version: built in $(( $(date +%s) - start ))s"
