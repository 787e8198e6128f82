# Sourced by the image scripts: picks the container engine (a running docker, else podman) into $ENGINE.
# podman reads the project's containers.conf unless CONTAINERS_CONF names another one.
if [ -n "${ENGINE:-}" ]; then
  :
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
  ENGINE=podman
else
  echo "no container engine: install docker or podman (Debian: apt-get install podman runc)" >&2
  exit 1
fi
if [ "$ENGINE" = podman ]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf}"
fi
