#!/usr/bin/env bash
# `make image`: builds the image with plain BuildKit.
#   IMAGE  the tag (default ghcr.io/shardmesh/shardmesh:<version>, what the manifests use)
#   BASE   the base image; default: python:3.11-slim if it is present locally,
#          else a Debian bookworm + python3 base made here (tests/image/base.sh),
#          for machines that reach no image registry.
# With a registry, plain `docker build .` does the same with python:3.11-slim.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/image/docker.sh
source "$REPO/tests/image/docker.sh"
ensure_docker || { echo "image: $REASON" >&2; exit 3; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")
IMAGE=${IMAGE:-ghcr.io/shardmesh/shardmesh:$version}
if [[ -z ${BASE:-} ]]; then
  if "$DOCKER" image inspect python:3.11-slim >/dev/null 2>&1; then BASE=python:3.11-slim
  else BASE=$(DOCKER=$DOCKER PATH="$PATH" "$REPO/tests/image/base.sh"); fi
fi
# Where HTTPS to the package registries goes through an intercepting proxy, pip
# in the build needs the host's CA bundle (an optional build secret).
args=()
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[[ -s $cert ]] && args+=(--secret "id=pip-cert,src=$cert")
echo "image: building $IMAGE on $BASE" >&2
DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "${args[@]}" --build-arg "BASE=$BASE" \
  -t "$IMAGE" "$REPO" > "${BUILD_LOG:-/dev/stderr}" 2>&1 || {
  [[ -n ${BUILD_LOG:-} ]] && tail -40 "$BUILD_LOG" >&2; exit 1; }
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
echo "image: $IMAGE built, $((size / 1000000)) MB" >&2
echo "$IMAGE"
