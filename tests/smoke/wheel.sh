#!/usr/bin/env bash
# `make smoke-wheel` (part of `make test`): the product as `pip install` gives it.
# 1. sdist, then the wheel from the sdist (python -m build), in pip's isolated
#    build environment with the pinned build dependencies; the compiled data
#    plane is required. 2. The fallback: with no C compiler the same build gives
#    a plain-Python wheel. 3. A fresh venv with only the pinned runtime
#    dependencies and the wheel (not editable); pip check. 4. The smoke suite
#    (tests/smoke) against that venv's `shardmesh`, from outside the source tree.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
work=$(mktemp -d /tmp/shardmesh-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PIP_CONSTRAINT=$REPO/requirements/build.txt PIP_DISABLE_PIP_VERSION_CHECK=1
step() { echo "smoke-wheel: $* ($((SECONDS - start))s)" >&2; }
start=$SECONDS

SHARDMESH_REQUIRE_COMPILED=1 "$VENV/bin/python" -m build --outdir "$work/dist" "$REPO" \
  > "$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
sdist=$(ls "$work"/dist/shardmesh-*.tar.gz)
wheel=$(ls "$work"/dist/shardmesh-*.whl)
step "built $(basename "$sdist") and, from it, $(basename "$wheel")"
case $wheel in *-py3-none-any.whl) echo "the wheel is not compiled: $wheel" >&2; exit 1;; esac
listing=$(tar -tzf "$sdist")
for f in setup.py pyproject.toml README.md sidecar/proxy.py webhook/worker.py; do
  grep -qx "shardmesh-[^/]*/$f" <<< "$listing" || { echo "sdist lacks $f" >&2; exit 1; }
done

CC=false "$VENV/bin/python" -m pip wheel -q --no-deps -w "$work/plain" "$REPO" \
  > "$work/plain.log" 2>&1 || { tail -40 "$work/plain.log" >&2; exit 1; }
ls "$work"/plain/shardmesh-*-py3-none-any.whl >/dev/null \
  || { echo "no C compiler did not give a plain-Python wheel: $(ls "$work/plain")" >&2; exit 1; }
step "without a C compiler: $(basename "$work"/plain/*.whl)"

unset PIP_CONSTRAINT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --require-hashes -r "$REPO/requirements/runtime.txt"
"$work/venv/bin/pip" install -q --no-deps "$wheel"
"$work/venv/bin/pip" check
step "installed in a fresh venv with requirements/runtime.txt only"

mkdir "$work/run"
cd "$work/run"
"$VENV/bin/pytest" -p no:cacheprovider -q "$REPO/tests/smoke" --shardmesh "$work/venv/bin/shardmesh"
step "smoke suite passed"
