"""Ready pairs (a user's related-note links): import with or without split and score, the split the
platform assigns or checks, directed and undirected links, every input format, and every consumer that reads
them (run_mining, ``notellm mine``, ``notellm results``), with events beside them or without."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner
from user_notes import save, user_catalogue

from notellm import contracts
from notellm.cli import app
from notellm.config import MiningConfig
from notellm.datasets import import_files
from notellm.errors import DataError
from notellm.mining import pair_stats, ready_pairs, run_mining, split_pairs


@pytest.fixture(scope="module")
def catalogue() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return user_catalogue(notes=60, links_per_note=3, words=(40, 80))


def _held_out_ok(pairs: pd.DataFrame) -> None:
    """Every val and test pair holds a note that no training pair touches."""
    train = pairs[pairs["split"] == "train"]
    seen = set(train["note_id_a"]) | set(train["note_id_b"])
    held = pairs[pairs["split"] != "train"]
    assert not (held["note_id_a"].isin(seen) & held["note_id_b"].isin(seen)).any()


def _mine(tmp_path: Path, notes: pd.DataFrame, links: pd.DataFrame,
          cfg: MiningConfig | None = None, events: pd.DataFrame | None = None,
          suffix: str = ".csv") -> tuple[pd.DataFrame, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    events_path = save(events, tmp_path / f"events{suffix}") if events is not None else None
    links_path = save(links, tmp_path / f"links{suffix}")
    import_files(save(notes, tmp_path / f"notes{suffix}"), events_path, links_path, out_dir=tmp_path / "data")
    stats = run_mining(tmp_path / "data", tmp_path / "mining", cfg or MiningConfig())
    return contracts.read_table(tmp_path / "mining" / "pairs.parquet", "pairs"), stats


def test_links_without_split_or_score_get_the_held_out_split(tmp_path, catalogue):
    notes, links, _ = catalogue
    pairs, stats = _mine(tmp_path, notes, links)
    # Undirected: each link in both directions, score 1.0, split by the same function as mined pairs.
    assert len(pairs) == 2 * len(links) and (pairs["score"] == 1.0).all()
    both = set(zip(pairs["note_id_a"], pairs["note_id_b"]))
    assert all((b, a) in both for a, b in both)
    expected = split_pairs(pairs[["note_id_a", "note_id_b", "score"]], MiningConfig())
    assert pairs["split"].tolist() == expected["split"].tolist()
    assert set(pairs["split"]) == {"train", "val", "test"}
    _held_out_ok(pairs)
    # The same artifacts and stats as mined pairs.
    assert pq.read_schema(tmp_path / "mining" / "pairs.parquet") == contracts.CONTRACTS["pairs"].schema
    assert json.loads((tmp_path / "mining" / "pair_stats.json").read_text()) == stats
    assert stats["source"] == "ready pairs"
    assert set(stats) == {"source", *pair_stats(pairs)}
    assert stats["pairs_per_split"]["test"] == (pairs["split"] == "test").sum() > 0


def test_directed_links_stay_as_given_and_a_link_given_twice_counts_once(tmp_path, catalogue):
    notes, links, _ = catalogue
    reversed_five = links.head(5).rename(columns={"note_id_a": "note_id_b", "note_id_b": "note_id_a"})
    doubled = pd.concat([links, reversed_five], ignore_index=True)
    directed, _ = _mine(tmp_path / "d", notes, doubled, MiningConfig(ready_pairs_directed=True))
    assert len(directed) == len(doubled)
    assert set(zip(directed["note_id_a"], directed["note_id_b"])) == set(zip(doubled["note_id_a"],
                                                                             doubled["note_id_b"]))
    undirected, _ = _mine(tmp_path / "u", notes, doubled)
    assert len(undirected) == 2 * len(links)  # the 5 links given both ways are not doubled again


def test_a_given_split_and_score_are_kept(tmp_path, catalogue):
    notes, links, _ = catalogue
    first, _ = _mine(tmp_path / "a", notes, links.assign(score=np.linspace(0.1, 2, len(links))),
                     MiningConfig(ready_pairs_directed=True, seed=3))
    # Another seed: the split is now the user's, not drawn again.
    again, stats = _mine(tmp_path / "b", notes, first.sample(frac=1, random_state=0),
                         MiningConfig(ready_pairs_directed=True, seed=99))
    pd.testing.assert_frame_equal(again, first)
    assert stats["score_max"] == pytest.approx(2.0)


def test_a_leaky_split_names_the_file_row_and_column(tmp_path, catalogue):
    notes, links, _ = catalogue
    leaky = links.assign(split=np.where(np.arange(len(links)) % 5 == 4, "test", "train"))
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"test pair .* leaks: both notes are in training pairs") as exc:
        import_files(save(notes, tmp_path / "notes.csv"), pairs_path=save(leaky, tmp_path / "links.csv"),
                     out_dir=out)
    assert (exc.value.file, exc.value.row, exc.value.column) == (str(tmp_path / "links.csv"), 4, "split")
    assert "leave out the split column" in str(exc.value)
    assert not out.exists() or not any(out.iterdir())  # nothing written


@pytest.mark.parametrize(("broken", "row", "column", "message"), [
    ("self_link", 2, "note_id_b", "paired with itself"),
    ("no_column", None, "note_id_b", "missing column"),
    ("bad_score", 1, "score", "not a finite number"),
    ("bad_split", 0, "split", "split must be one of"),
    ("unknown_note", 3, "note_id_a", "unknown note_id"),
])
def test_bad_ready_pairs_name_file_row_and_column(tmp_path, catalogue, broken, row, column, message):
    notes, links, _ = catalogue
    links = links.head(6).copy()
    if broken == "self_link":
        links.at[2, "note_id_b"] = links.at[2, "note_id_a"]
    elif broken == "no_column":
        links = links.drop(columns="note_id_b")
    elif broken == "bad_score":
        links["score"] = ["1", "high", "1", "1", "1", "1"]
    elif broken == "bad_split":
        links["split"] = ["later", "train", "train", "train", "train", "train"]
    else:
        links.at[3, "note_id_a"] = "nope"
    path = save(links, tmp_path / "links.jsonl")
    with pytest.raises(DataError, match=message) as exc:
        import_files(save(notes, tmp_path / "notes.jsonl"), pairs_path=path, out_dir=tmp_path / "data")
    assert (exc.value.file, exc.value.row, exc.value.column) == (str(path), row, column)


def test_the_same_link_with_two_splits_is_refused_at_mining(catalogue):
    _, links, _ = catalogue
    given = links.head(3).assign(score=1.0, split=["train", "val", "test"])
    given.loc[2, ["note_id_a", "note_id_b"]] = given.loc[1, ["note_id_b", "note_id_a"]].to_numpy()  # reversed
    with pytest.raises(DataError, match="earlier row with another split") as exc:
        ready_pairs(given, MiningConfig(), "links.csv")
    assert (exc.value.row, exc.value.column) == (2, "split")
    assert len(ready_pairs(given, MiningConfig(ready_pairs_directed=True), "links.csv")) == 3


def test_every_format_imports_identical_tables_and_reaches_the_same_pairs(tmp_path, catalogue):
    notes, links, events = catalogue
    results = {}
    for suffix in (".parquet", ".jsonl", ".csv"):
        pairs, _ = _mine(tmp_path / suffix[1:], notes, links, events=events, suffix=suffix)
        tables = {kind: pd.read_parquet(tmp_path / suffix[1:] / "data" / f"{kind}.parquet")
                  for kind in ("notes", "events", "pairs")}
        results[suffix] = (tables, pairs)
    (tables, pairs), *others = results.values()
    assert len(tables["events"]) == len(events) and len(tables["pairs"]) == len(links)
    for other_tables, other_pairs in others:
        for kind, table in tables.items():
            pd.testing.assert_frame_equal(other_tables[kind], table)
        pd.testing.assert_frame_equal(other_pairs, pairs)


def test_events_beside_ready_pairs_feed_features_and_drift_but_not_the_pairs(tmp_path, catalogue):
    from notellm import steps
    from notellm.contracts import read_table

    notes, links, events = catalogue
    with_events, _ = _mine(tmp_path / "e", notes, links, events=events)
    without, _ = _mine(tmp_path / "n", notes, links)
    pd.testing.assert_frame_equal(with_events, without)
    data = read_table(tmp_path / "e" / "data" / "notes.parquet", "notes")
    ev = read_table(tmp_path / "e" / "data" / "events.parquet", "events")
    reference, current = steps._windows(data, ev, 0.5)
    assert reference["clicks_total"].sum() + current["clicks_total"].sum() > 0  # behaviour features
    # Without events the windows cut the notes by creation time: both windows hold notes, no behaviour.
    reference, current = steps._windows(data, ev.head(0), 0.5)
    assert len(reference) == len(current) == len(data) // 2
    assert reference["note_id"].max() < current["note_id"].min()  # note ids follow creation time here
    assert reference["clicks_total"].sum() == current["clicks_total"].sum() == 0


def test_cli_import_then_mine_on_links(tmp_path, catalogue):
    notes, links, _ = catalogue
    runner = CliRunner()
    data, mining = tmp_path / "data", tmp_path / "mining"
    result = runner.invoke(app, ["data", "import", "--notes", str(save(notes, tmp_path / "notes.jsonl")),
                                 "--pairs", str(save(links, tmp_path / "links.csv")), "--out", str(data)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["mine", "--data", str(data), "--out", str(mining)])
    assert result.exit_code == 0, result.output
    assert "ready pairs" in result.output
    assert len(pd.read_parquet(mining / "pairs.parquet")) == 2 * len(links)
    a, b = links.iloc[0]
    leaky = save(pd.DataFrame({"note_id_a": [a, a], "note_id_b": [b, b], "split": ["train", "test"]}),
                 tmp_path / "leaky.csv")  # the same link in training and in test
    result = runner.invoke(app, ["data", "import", "--notes", str(tmp_path / "notes.jsonl"),
                                 "--pairs", str(leaky), "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "row 1" in result.output and "'split'" in result.output


@pytest.mark.slow
def test_cli_results_on_a_users_notes_and_links(tmp_path, catalogue):
    """`notellm results` on files: the ready pairs are split and ranked (it failed with "mining produced no
    test pairs" when the pairs were ignored)."""
    notes, links, _ = catalogue
    args = ["results", "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "results.md"),
            "-m", "zero-shot"]
    for setting in ("data.dataset=files", f"data.notes_path={save(notes, tmp_path / 'notes.parquet')}",
                    f"data.pairs_path={save(links, tmp_path / 'links.parquet')}",
                    "model.backbone=tiny-random", "model.dim=16", "prompt.content_max=32",
                    "evaluation.generation_notes=0"):
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "ws" / "mining" / "pair_stats.json").read_text())
    assert stats["source"] == "ready pairs" and stats["pairs"] == 2 * len(links)
    text = (tmp_path / "results.md").read_text()
    assert "zero-shot" in text.lower() and f"{stats['pairs_per_split']['test']:,}" in text
