"""Datasets in contract form: MovieLens-100k, the synthetic generator, or the user's own files.

:func:`build_dataset` writes ``notes.parquet`` and ``events.parquet`` (and ``pairs.parquet`` when
the user supplies ready pairs) into one directory, atomically; running it again replaces them.
"""

from __future__ import annotations

from pathlib import Path

from notellm.config import DataConfig
from notellm.contracts import EVENTS, NOTES, PAIRS
from notellm.datasets.files import TABLE_FILES, import_files, write_tables
from notellm.datasets.movielens import load_movielens
from notellm.datasets.synthetic import write_synthetic
from notellm.errors import ConfigError

__all__ = ["build_dataset", "import_files", "load_movielens", "write_synthetic", "write_tables"]


def build_dataset(cfg: DataConfig, out_dir: Path) -> dict:
    """Write the dataset ``cfg.dataset`` into ``out_dir``; return its counts and file paths."""
    out_dir = Path(out_dir)
    if cfg.dataset == "synthetic":
        summary = write_synthetic(out_dir, cfg.synthetic)
        (out_dir / TABLE_FILES[PAIRS]).unlink(missing_ok=True)
        return {"dataset": cfg.dataset, **summary}
    if cfg.dataset == "files":
        if cfg.notes_path is None:
            raise ConfigError("dataset 'files' needs data.notes_path")
        return import_files(cfg.notes_path, cfg.events_path, cfg.pairs_path, out_dir=out_dir)
    notes, events = load_movielens(cfg.min_rating)
    paths = write_tables(out_dir, {NOTES: notes, EVENTS: events})
    return {"dataset": cfg.dataset, "notes": len(notes), "events": len(events),
            "users": int(events["user_id"].nunique()), "paths": {k: str(p) for k, p in paths.items()}}
