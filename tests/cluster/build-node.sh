#!/usr/bin/env bash
# Build the test node (tests/cluster/node.py) once per version: kubelet and
# kube-scheduler from the same k8s.io/kubernetes module as the control plane
# (go.mod), the CNI bridge/host-local/loopback plugins, crictl, and a static
# pause program for the sandbox image. Cached outside the work tree under
# $SHARDMESH_CACHE/node-<version>; the stamp is written last.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod" | head -n1)"
cni_version=v1.10.0
crictl_version=v1.37.0
cache="${SHARDMESH_CACHE:-$HOME/.cache/shardmesh}"
out="$cache/node-$version"
stamp="$out/.complete"
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
if [ -f "$stamp" ]; then
  echo "node $version: cached in $out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  msg="node tests need Go >= 1.26 to build kubelet (install golang, then run 'make node-bins')"
  if [ "${CI:-}" = "true" ]; then echo "ERROR: $msg" >&2; exit 1; fi
  echo "SKIP: $msg"
  exit 0
fi
echo "node $version: building into $out (first time only; a few minutes)"
rm -rf "$out.tmp" && mkdir -p "$out.tmp/cni"
start=$(date +%s)
minor="$(echo "$version" | cut -d. -f2)"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags="$ldflags -X $vpkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"
cd "$here"
go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
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
echo "$version" >"$out.tmp/.complete"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "node $version: built in $(( $(date +%s) - start ))s"
