#!/usr/bin/env bash
# A PEP 503 index of the pinned torch wheel and its dependencies, taken by this machine's pip (where the
# PyTorch index is out of reach), for `--build-arg TORCH_INDEX=file:///wheelhouse/simple`.
set -euo pipefail
out="${1:?usage: wheelhouse.sh DIR}"
version="${TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" -m pip download --quiet --only-binary :all: --python-version 3.11 -d "$out" "torch==$version" >&2
"$python" - "$out" <<'PY'
import html, re, sys
from pathlib import Path

root = Path(sys.argv[1])
wheels = sorted(root.glob("*.whl"))
for name in {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in wheels}:
    folder = root / "simple" / name
    folder.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../{html.escape(w.name)}">{html.escape(w.name)}</a>\n' for w in wheels
                    if re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() == name)
    (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
PY
