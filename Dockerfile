# One image for both halves: `shardmesh webhook` (the injector) and
# `shardmesh sidecar` (the injected shard-router). Plain BuildKit, no image
# registry besides the one the base comes from (README, "The image"):
#
#   docker build -t ghcr.io/shardmesh/shardmesh:0.1.0 .
#   docker build --build-arg BASE=shardmesh-base:bookworm-... .   # a local base (make image)
#
# BASE is any Debian-like image with python3 (3.11) and its venv module:
# python:3.11-slim (python in /usr/local) or a debootstrapped bookworm with
# Debian's python3 and python3-venv. Both stages use it, so the venv that is
# built in one and copied to the other finds the same interpreter.
ARG BASE=python:3.11-slim

# --- builder: a venv at /opt/shardmesh with the pinned dependencies and the wheel
FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
# A C compiler for mypyc, which compiles the sidecar's data plane (setup.py),
# and Python's headers where the base has none (Debian's python3).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
         apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/shardmesh
WORKDIR /src
# The runtime dependencies, exactly as pinned and hash-checked (make lock).
# The optional secret `pip-cert` is a CA bundle for pip where HTTPS goes
# through an intercepting proxy (make image passes the host's).
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN --mount=type=secret,id=pip-cert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && /opt/shardmesh/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml setup.py README.md ./
COPY shardmesh ./shardmesh
COPY webhook ./webhook
COPY sidecar ./sidecar
COPY directory ./directory
# The wheel, built in pip's isolated environment with the pinned build
# dependencies; the image must get the compiled data plane, not the fallback.
# Then what the image never runs: pip, setuptools, kubernetes' asyncio client
# (kubernetes.aio, 68 MB; shardmesh uses the synchronous one), type stubs, and
# the shared libraries' symbol tables. Third-party packages ship as bytecode
# alone (legacy .pyc next to where the .py was; a traceback inside them names
# the file and line, without the text); the kubernetes client's also without
# docstrings (-OO), as its generated models are mostly docstrings: 59 MB of
# sources and bytecode become 19 MB. shardmesh's own packages keep their sources.
RUN --mount=type=secret,id=pip-cert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && SHARDMESH_REQUIRE_COMPILED=1 PIP_CONSTRAINT=/src/requirements/build.txt \
       /opt/shardmesh/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/shardmesh/bin/pip install --no-deps /wheels/shardmesh-*.whl \
    && cd / && /opt/shardmesh/bin/python -c 'import sidecar; assert sidecar.compiled(), "plain Python"' \
    && /opt/shardmesh/bin/pip uninstall -y -q pip setuptools \
    && site=$(/opt/shardmesh/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && rm -rf "$site/kubernetes/aio" \
    && cd "$site" && ours='^(shardmesh|sidecar|webhook)$' \
    && /opt/shardmesh/bin/python -m compileall -q -b -o 2 kubernetes \
    && /opt/shardmesh/bin/python -m compileall -q -b $(ls | grep -Ev "$ours|^kubernetes$|-info$") \
    && find $(ls | grep -Ev "$ours|-info$") -name '*.py' -delete \
    && find $(ls | grep -Ev "$ours|-info$") -name __pycache__ -prune -exec rm -rf {} + \
    && find /opt/shardmesh -name '*.pyi' -delete \
    && find /opt/shardmesh -name '*.so' -exec strip --strip-unneeded {} +

# --- runtime: the base and the venv; no compiler, no pip ---------------------
FROM ${BASE} AS runtime
COPY --from=builder /opt/shardmesh /opt/shardmesh
ENV PATH=/opt/shardmesh/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
# 8443: webhook HTTPS. 15001: sidecar data (loopback only). 15020: sidecar admin.
EXPOSE 8443 15020
# The manifests' user (runAsUser/runAsGroup 65532); no passwd entry is needed.
USER 65532:65532
ENTRYPOINT ["shardmesh"]
CMD ["--help"]
