#!/usr/bin/env bash
# `make smoke-image` (part of `make test`): builds the image (tests/image/build.sh)
# and runs the smoke suite (tests/smoke) in it, as the manifests run it:
# --read-only --user 65532 --cap-drop ALL. Without a Docker engine that can run,
# this fails under CI=true and otherwise skips, saying why.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTEST=${PYTEST:-$REPO/.venv/bin/pytest}
# shellcheck source=tests/image/docker.sh
source "$REPO/tests/image/docker.sh"
if ! ensure_docker; then
  if [[ ${CI:-} == true ]]; then echo "image tier FAILED: $REASON" >&2; exit 1; fi
  echo "image tier SKIPPED: $REASON" >&2
  exit 0
fi
log=$(mktemp /tmp/shardmesh-image-build.XXXXXX.log)
start=$SECONDS
IMAGE=$(BUILD_LOG=$log "$REPO/tests/image/build.sh")
echo "image: build took $((SECONDS - start))s (log: $log)" >&2
work=$(mktemp -d /tmp/shardmesh-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
SHARDMESH_DOCKER=$DOCKER "$PYTEST" -p no:cacheprovider -q "$REPO/tests/smoke" --image "$IMAGE"
