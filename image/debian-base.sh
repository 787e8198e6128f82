#!/usr/bin/env bash
# A python:3.11-slim stand-in built from Debian bookworm packages (for machines without an image registry):
# Python 3.11 with a virtual environment at /opt/venv on PATH. Prints the image name; built once.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/engine.sh"
name="localhost/notellm-base:python3.11-bookworm"
if "$ENGINE" image exists "$name" 2>/dev/null; then echo "$name"; exit 0; fi
command -v mmdebstrap >/dev/null || { echo "BASE=debian needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The venv is made inside the chroot under a clean environment, so the host's PIP_* settings stay out.
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
  --customize-hook='chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -m venv /opt/venv' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$work/base.tar" >&2
"$ENGINE" import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' "$work/base.tar" "$name" >&2
echo "$name"
