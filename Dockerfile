# syntax=docker/dockerfile:1
# One image for both halves: `shardmesh webhook` (the injector) and
# `shardmesh sidecar` (the injected shard-router).
#
#   docker build -t ghcr.io/shardmesh/shardmesh:0.1.0 .

# --- builder: wheels for the project and all its dependencies ----------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for mypyc, which compiles the sidecar's data plane (setup.py).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shardmesh ./shardmesh
COPY webhook ./webhook
COPY sidecar ./sidecar
RUN pip wheel --wheel-dir /wheels .

# --- runtime: only the installed wheels, no compilers, no pip cache -----------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels shardmesh \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nonroot
# 8443: webhook HTTPS. 15001: sidecar data (loopback only). 15020: sidecar admin.
EXPOSE 8443 15020
USER 65532:65532
ENTRYPOINT ["shardmesh"]
CMD ["--help"]
