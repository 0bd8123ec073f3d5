#!/usr/bin/env bash
# Installs the benchmark's peers (wrk, nginx, haproxy by default; or the tools named
# as arguments, e.g. valgrind) with apt when any is missing. Only the binaries are
# used: bench/sidecar.py runs them with its own configs in a temp dir.
set -euo pipefail
tools=("$@")
(( ${#tools[@]} )) || tools=(wrk nginx haproxy)
missing=()
for tool in "${tools[@]}"; do
    # h2load comes in Debian's nghttp2-client.
    package=$tool
    [[ $tool == h2load ]] && package=nghttp2-client
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$package")
done
if (( ${#missing[@]} == 0 )); then
    exit 0
fi
echo "bench: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start system services; the benchmark does not want them running.
for service in nginx haproxy; do
    $SUDO service "$service" stop >/dev/null 2>&1 || true
done
