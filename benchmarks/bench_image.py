"""The project image: build time cold and warm, size by layer, and the container test suite's wall time.

    python benchmarks/bench_image.py [--cold] [--suite] [--write-docs]

``--cold`` rebuilds every layer (no layer cache; the base image and the torch wheelhouse are reused); without it
the build times are the warm ones: nothing changed, and one library file changed (the code layers only).
``--suite`` times ``pytest -m container`` on the warm image. The engine is the one ``make image`` picks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.docs_section import write_section  # noqa: E402
from components import BASE_IMAGE  # noqa: E402
from containers import engine  # noqa: E402

# What each layer of the Dockerfile holds, by a phrase of the instruction that made it.
LAYERS = [("base image (Python 3.11)", ("ADD file", "FROM")), ("Java runtime (spark extra)", ("openjdk",)),
          ("torch (CPU build)", ("--index-url",)), ("dependencies (pyspark about 0.45 GB of them)", ("requirements.txt",)),
          ("converted SmolLM2 weights", ("load_backbone",)), ("project code", ("COPY", "pip install --no-deps -e"))]


def _make_image(*extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={BASE_IMAGE}", *extra], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _layers() -> list[tuple[str, float]]:
    """MB per kind of layer, from the engine's history of the image."""
    name, env = engine()
    out = subprocess.run([name, "history", "--no-trunc", "--format", "json", BASE_IMAGE], capture_output=True,
                         text=True, check=True, env={**os.environ, **env}).stdout
    sizes = dict.fromkeys((label for label, _ in LAYERS), 0.0)
    for layer in json.loads(out):
        created = layer.get("CreatedBy") or layer.get("created_by") or ""
        size = float(layer.get("Size") or layer.get("size") or 0) / 1e6
        label = next((label for label, phrases in LAYERS if any(p in created for p in phrases)), "project code")
        sizes[label] += size
    return list(sizes.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also time a build with no layer cache")
    parser.add_argument("--suite", action="store_true", help="also time the container test suite")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()

    rows = []
    if args.cold:
        rows.append(("cold: every layer rebuilt (no cache; base image reused)", _make_image("NO_CACHE=1")))
    rows.append(("warm: nothing changed", _make_image()))
    probe = ROOT / "notellm" / "_bench_probe.py"
    probe.write_text(f'"""A changed library file ({time.time()}): rebuilds the code layers only."""\n')
    try:
        rows.append(("warm: one library file changed", _make_image()))
    finally:
        probe.unlink()
        _make_image()  # the image again as the tree is
    if args.suite:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "container", "-p", "no:cacheprovider"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        rows.append(("container test suite (`pytest -m container`, warm image)", time.perf_counter() - start))
    layers = _layers()
    lines = ["## Containers", "", f"`python benchmarks/bench_image.py{' --cold' if args.cold else ''}"
             f"{' --suite' if args.suite else ''} --write-docs` ({engine()[0]}, {os.cpu_count()} cores).", "",
             "| what | seconds |", "|---|---:|", *(f"| {what} | {seconds:.0f} |" for what, seconds in rows), "",
             "| layer | MB |", "|---|---:|", *(f"| {label} | {mb:.0f} |" for label, mb in layers),
             f"| **image** | **{sum(mb for _, mb in layers):.0f}** |", ""]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section("## Containers", text)


if __name__ == "__main__":
    main()
