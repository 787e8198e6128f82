#!/usr/bin/env bash
# Build the project image: `make image [IMAGE=registry/name:tag] [CUDA=1] [BASE=debian]`.
#   IMAGE  the name to tag (default: the pipeline's default image, components.BASE_IMAGE).
#   CUDA=1 the CUDA build of torch, tagged IMAGE-cuda (needs the PyTorch CUDA index).
#   BASE=debian  for machines that reach package registries but no image registry: the base image is built
#          from Debian packages (image/debian-base.sh) and torch comes from a local wheelhouse that pip fills.
#          Unset: python:3.11-slim when the engine can pull it, else the Debian base.
#   NO_CACHE=1  rebuild every layer (benchmarks/bench_image.py --cold).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
source "$here/engine.sh"

IMAGE="${IMAGE:?set IMAGE=registry/name:tag}"
args=()
[ "${NO_CACHE:-0}" = 1 ] && args+=(--no-cache)
if [ "${CUDA:-0}" = 1 ]; then
  IMAGE="$IMAGE-cuda"
  args+=(--build-arg "TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}")
elif [ -n "${TORCH_INDEX:-}" ]; then
  args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
fi

if [ -z "${BASE:-}" ]; then
  if "$ENGINE" pull -q python:3.11-slim >/dev/null 2>&1; then BASE=registry; else
    echo "python:3.11-slim cannot be pulled here: building on a base image from Debian packages" >&2
    BASE=debian
  fi
fi
if [ "$BASE" = debian ]; then
  [ "$ENGINE" = podman ] || { echo "BASE=debian needs podman (its build-time volumes)" >&2; exit 1; }
  base="$("$here/debian-base.sh")"
  args+=(--build-arg "PYTHON_IMAGE=$base")
  if [ "${CUDA:-0}" != 1 ]; then
    "$here/wheelhouse.sh" build/wheelhouse
    args+=(--build-arg "TORCH_INDEX=file:///wheelhouse/simple" -v "$PWD/build/wheelhouse:/wheelhouse:ro")
  fi
  # pip in the build reaches PyPI through this machine's certificate authorities: mounted, never copied in.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  fi
  args+=(--network=host)
fi

echo "building $IMAGE with $ENGINE" >&2
"$ENGINE" build "${args[@]}" -t "$IMAGE" .
