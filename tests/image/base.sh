#!/usr/bin/env bash
# A Debian bookworm base image with Debian's python3, made locally (debootstrap,
# then `docker import`) for machines that reach the package registries but no
# image registry. Cached outside the work tree, keyed by this recipe's hash:
#   ${SHARDMESH_CACHE:-~/.cache/shardmesh}/base/<tag>.tar
# Prints the image tag on stdout (everything else goes to stderr).
#
#   docker build --build-arg BASE="$(tests/image/base.sh)" .
set -euo pipefail

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-venv: the Dockerfile builds a venv; ca-certificates: pip over HTTPS.
PACKAGES=python3,python3-venv,ca-certificates

say() { echo "base image: $*" >&2; }

recipe=$(cat "$0" | sha256sum | cut -c1-12)
tag="shardmesh-base:${SUITE}-${recipe}"
cache=${SHARDMESH_CACHE:-$HOME/.cache/shardmesh}/base
tarball="$cache/${SUITE}-${recipe}.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag (present)"
  echo "$tag"
  exit 0
fi

if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || {
    say "debootstrap missing: apt-get install debootstrap"; exit 1; }
  [[ $(id -u) == 0 ]] || { say "debootstrap needs root"; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  say "debootstrap $SUITE ($PACKAGES) from $MIRROR (once; about 2-4 minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
  # What an image never needs: package lists, caches, docs, man pages, locales.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/var/log/* "$root"/tmp/*
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
       -exec rm -rf {} + 2>/dev/null || true
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

say "docker import $tarball as $tag"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  "$tarball" "$tag" >&2
echo "$tag"
