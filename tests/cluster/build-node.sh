#!/usr/bin/env bash
# Build the test node (tests/cluster/node.py) once per version: kubelet and
# kube-scheduler from the same k8s.io/kubernetes module as the control plane
# (go.mod), the CNI bridge/host-local/loopback plugins, crictl, and a static
# pause program for the sandbox image, cached under $SHARDMESH_CACHE/node-<version>.
set -euo pipefail
source "$(dirname "$0")/build-lib.sh"
cni_version=v1.10.0
crictl_version=v1.37.0
out="$cache/node-$version"
# The host side: containerd (its CRI plugin), runc, iptables, ip. Installed when
# missing and root; without root the node tier says what is missing and skips.
need=()
for tool in containerd:containerd runc:runc iptables:iptables ip:iproute2; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if ((${#need[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "node: apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -f "$out/.complete" ]; then
  echo "node $version: cached in $out"
  exit 0
fi
require_go "node tests" node-bins
echo "node $version: building into $out (first time only; a few minutes)"
start_build "$out"
mkdir -p "$out.tmp/cni"
cd "$here"
go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out.tmp/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp/pause" ./pause
# Separate modules: built with their own go.mod, outside this one.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$out.tmp/cni" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
  "github.com/containernetworking/plugins/plugins/main/bridge@$cni_version" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$cni_version" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$cni_version")
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$out.tmp" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
  "sigs.k8s.io/cri-tools/cmd/crictl@$crictl_version")
finish_build "$out" node
