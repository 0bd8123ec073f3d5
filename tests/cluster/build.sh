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

have_all() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
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
go build -trimpath -ldflags "-s -w" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl \
  ./etcd
rm -rf "$out" && mv "$out.tmp" "$out"
echo "control plane $version: built in $(( $(date +%s) - start ))s"
