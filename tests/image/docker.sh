# Sourced by tests/image/*.sh: a Docker engine that runs, or a clear reason why not.
# ensure_docker sets DOCKER (a client that builds with BuildKit) or returns 1 with
# REASON set. It installs docker.io (and debootstrap, for base.sh) when missing
# and starts dockerd when it is not running, as CI on a fresh machine needs.

REASON=""

_apt_install() {
  [[ $(id -u) == 0 ]] || { REASON="$* missing and not root: apt-get install $*"; return 1; }
  echo "image: apt-get install $*" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >&2 \
    || { REASON="apt-get install $* failed"; return 1; }
}

ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then _apt_install "${missing[@]}" || return 1; fi
  # The client that builds with BuildKit: docker's newer CLIs need the buildx
  # plugin for that; Debian's docker.io client (/usr/bin/docker) has it built in.
  if docker buildx version >/dev/null 2>&1; then DOCKER=docker
  elif [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker
  else DOCKER=docker; fi
  export DOCKER
  if ! "$DOCKER" info >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] || { REASON="no running Docker engine, and not root to start one"; return 1; }
    local log=${SHARDMESH_CACHE:-$HOME/.cache/shardmesh}/dockerd.log
    mkdir -p "$(dirname "$log")"
    echo "image: starting dockerd (log: $log)" >&2
    # setsid: the engine outlives this script (and make), like a service would.
    setsid dockerd >"$log" 2>&1 < /dev/null &
    local i
    for i in $(seq 1 60); do
      "$DOCKER" info >/dev/null 2>&1 && break
      sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || {
      REASON="dockerd did not come up in 60s: $(tail -3 "$log" | tr '\n' ' ')"; return 1; }
  fi
}
