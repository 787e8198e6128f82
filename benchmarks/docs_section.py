"""Rewrite one ``## `` section of docs/benchmarks.md in place, keeping every other section."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(heading: str, text: str, docs: Path = DOCS) -> None:
    """Replace the section that starts with ``heading`` by ``text`` (append it when absent), atomically."""
    from notellm.io import atomic_path

    current = docs.read_text() if docs.exists() else "# Benchmarks\n"
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        updated = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    with atomic_path(docs) as tmp:
        tmp.write_text(updated)
