#!/usr/bin/env bash
# Build the test control plane from the official k8s.io/kubernetes Go module,
# once per version: kube-apiserver, kube-controller-manager, kubectl, and an
# embedded etcd pinned by the same go.mod, cached under $SHARDMESH_CACHE/bin-<version>.
set -euo pipefail
source "$(dirname "$0")/build-lib.sh"
out="$cache/bin-$version"
bins=(kube-apiserver kube-controller-manager kubectl etcd)

have_all() {
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  [ -f "$out/.complete" ]
}
if have_all; then
  echo "control plane $version: cached in $out"
  exit 0
fi
require_go "cluster tests" cluster-bins
echo "control plane $version: building into $out (first time only; several minutes)"
start_build "$out"
cd "$here"
go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl \
  ./etcd
finish_build "$out" "control plane"
