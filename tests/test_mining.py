"""Pair mining: exact scores on hand-computed logs, window and threshold edges, a formula-level
reference on random logs (hypothesis), the leakage-free split, and the run_mining step on disk."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notellm.config import MiningConfig
from notellm.contracts import read_table, write_table
from notellm.errors import DataError
from notellm.mining import SCORE_DECIMALS, mine_pairs, pair_stats, run_mining, split_pairs

T0 = pd.Timestamp("2024-01-01")
OPEN = {"l_min": 0.0, "u_max": 1000.0, "top_t": 1000}  # no threshold, no top-t cut


def log(*rows: tuple) -> pd.DataFrame:
    """Events from (user, note, seconds or Timedelta after T0, action) tuples, in file order."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "note_id": [r[1] for r in rows],
        "ts": [T0 + (r[2] if isinstance(r[2], pd.Timedelta) else pd.Timedelta(seconds=r[2])) for r in rows],
        "action": [r[3] for r in rows],
    })


def clicks(user: str, *notes: str) -> list[tuple]:
    """Rows for one user clicking ``notes`` one second apart, from T0."""
    return [(user, note, second, "click") for second, note in enumerate(notes)]


def as_dict(pairs: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(a, b): s for a, b, s in zip(pairs["note_id_a"], pairs["note_id_b"], pairs["score"], strict=True)}


def assert_scores(pairs: pd.DataFrame, expected: dict[tuple[str, str], Fraction]) -> None:
    got = as_dict(pairs)
    assert set(got) == set(expected)
    for pair, frac in expected.items():
        assert got[pair] == pytest.approx(float(frac), abs=0.5 * 10.0 ** -SCORE_DECIMALS + 1e-12), pair


# ---------------------------------------------------------------- hand-computed examples


def test_scores_sum_inverse_distinct_clicks_over_users() -> None:
    events = log(
        # u1 clicks B, C, D (N=3); A is only viewed. Positions: A0 B1 C2 D3.
        ("u1", "A", 0, "view"), ("u1", "B", 1, "click"), ("u1", "C", 2, "click"), ("u1", "D", 3, "click"),
        # u2 clicks A, B, C, E, F (N=5). Positions: B0 A1 B2 C3 E4 F5 (ts ties broken by file order).
        ("u2", "B", 0, "click"), ("u2", "A", 5, "click"), ("u2", "B", 5, "click"), ("u2", "C", 6, "click"),
        ("u2", "E", 7, "click"), ("u2", "F", 8, "click"),
    )
    pairs = mine_pairs(events, MiningConfig(window_positions=2, **OPEN))
    third, fifth = Fraction(1, 3), Fraction(1, 5)
    assert_scores(pairs, {
        ("A", "B"): third + fifth,            # u1 at distance 1, u2 at distance 1
        ("A", "C"): third + fifth,            # u1 at distance 2 (w exactly reached), u2 at distance 2
        ("B", "C"): third + fifth,            # u1 distance 1; u2 from B at position 2 (position 0 is 3 away)
        ("B", "D"): third, ("C", "D"): third,  # A->D (distance 3) exceeds w=2: absent
        ("B", "A"): fifth, ("C", "E"): fifth, ("C", "F"): fifth, ("E", "F"): fifth,
        ("B", "E"): fifth,                    # u2: B at position 2, E at 4
    })


def test_repeated_pairs_count_once_per_user() -> None:
    events = log(*clicks("u", "A", "B", "A", "B", "A", "B"))
    pairs = mine_pairs(events, MiningConfig(window_positions=10, **OPEN))
    assert_scores(pairs, {("A", "B"): Fraction(1, 2), ("B", "A"): Fraction(1, 2)})


def test_only_source_then_target_actions_and_n_counts_target_notes() -> None:
    events = log(("u", "A", 0, "view"), ("u", "B", 1, "view"), ("u", "C", 2, "click"), ("u", "D", 3, "like"),
                 ("u", "C", 4, "click"), ("u", "E", 5, "click"))
    # positions ignore the 'like' (not a source or target action): A0 B1 C2 C3 E4.
    pairs = mine_pairs(events, MiningConfig(window_positions=2, **OPEN))
    half = Fraction(1, 2)  # N = |{C, E}|
    assert_scores(pairs, {("A", "C"): half, ("B", "C"): half, ("C", "E"): half})
    liked = mine_pairs(events, MiningConfig(window_positions=1, source_actions=["like"], **OPEN))
    assert_scores(liked, {("D", "C"): half})


def test_time_window_edges_and_ties_in_file_order() -> None:
    just_over = pd.Timedelta(seconds=10, microseconds=1)
    events = log(("u", "A", 0, "click"), ("u", "B", 10, "click"), ("u", "C", just_over, "click"),
                 ("u", "D", 100, "click"), ("u", "E", 100, "click"))
    pairs = mine_pairs(events, MiningConfig(window_positions=None, window_seconds=10, **OPEN))
    fifth = Fraction(1, 5)
    # A->B exactly 10 s apart (kept), A->C 1 microsecond over (dropped); D and E share a time: D->E only.
    assert_scores(pairs, {("A", "B"): fifth, ("B", "C"): fifth, ("D", "E"): fifth})


def test_both_windows_must_hold() -> None:
    events = log(("u", "A", 0, "click"), ("u", "B", 5, "click"), ("u", "C", 6, "click"),
                 ("u", "D", 30, "click"))
    pairs = mine_pairs(events, MiningConfig(window_positions=1, window_seconds=10, **OPEN))
    # A->C is within 10 s but two positions away; C->D is one position away but 24 s later.
    assert_scores(pairs, {("A", "B"): Fraction(1, 4), ("B", "C"): Fraction(1, 4)})


def _threshold_log() -> pd.DataFrame:
    # X->Y: one user with N=4 (0.25). X->Z: users with N=10 and N=5 (1/10 + 1/5 = 0.3, not exact in floats).
    return log(*clicks("p", "X", "Y", "P1", "P2"), *clicks("q", "X", "Z", *(f"Q{i}" for i in range(8))),
               *clicks("r", "X", "Z", "R0", "R1", "R2"))


@pytest.mark.parametrize(("l_min", "u_max", "kept"), [
    (0.25, 0.3, {"Y", "Z"}),                                # both edges exactly: kept
    (math.nextafter(0.25, 1), 0.3, {"Z"}),                  # just above 0.25: X->Y dropped
    (0.25, math.nextafter(0.3, 0), {"Y"}),                  # just below 0.3: X->Z dropped
    (0.3, 0.3, {"Z"}),
])
def test_threshold_edges(l_min: float, u_max: float, kept: set[str]) -> None:
    cfg = MiningConfig(window_positions=1, l_min=l_min, u_max=u_max, top_t=100)
    pairs = mine_pairs(_threshold_log(), cfg)
    assert set(pairs.loc[pairs["note_id_a"] == "X", "note_id_b"]) == kept


@pytest.mark.parametrize(("top_t", "expected"), [(1, ["n10"]), (2, ["n10", "n9"]), (3, ["n10", "n9", "n2"])])
def test_top_t_breaks_ties_by_note_id(top_t: int, expected: list[str]) -> None:
    # From A: n9 and n10 tie at 1/3 + 1/3 (users u and v, N=3), n2 has 1/4; "n10" < "n9" as strings.
    events = log(*clicks("u", "A", "n9", "A", "n10"), *clicks("v", "A", "n10", "A", "n9"),
                 *clicks("w", "A", "n2", "x", "y"))
    pairs = mine_pairs(events, MiningConfig(window_positions=1, l_min=0.0, top_t=top_t))
    from_a = pairs[pairs["note_id_a"] == "A"]
    assert list(from_a["note_id_b"]) == expected
    assert list(from_a["score"]) == sorted(from_a["score"], reverse=True)


def test_over_popular_notes_are_dropped_from_both_sides() -> None:
    rows = [(f"u{i}", "HOT", 0, "click") for i in range(5)] + [(f"u{i}", "B", 1, "click") for i in range(5)]
    rows += [("v", "C", 0, "click"), ("v", "HOT", 1, "click"), ("v", "B", 2, "click")]
    events = log(*rows)

    def mined(quantile: float | None) -> set[tuple[str, str]]:
        cfg = MiningConfig(window_positions=1, max_note_clicks_quantile=quantile, **OPEN)
        return set(as_dict(mine_pairs(events, cfg)))

    every = mined(None)
    assert ("HOT", "B") in every and ("C", "HOT") in every
    # clicks: HOT 6, B 6, C 1 -> the 0.5 quantile is 6: nothing above it; at 0.1 (2.0) HOT and B go.
    assert mined(0.5) == every
    assert mined(0.1) == set()


def test_parquet_path_gives_the_same_pairs(tmp_path: Path) -> None:
    events = _threshold_log()
    cfg = MiningConfig(window_positions=3, l_min=0.0)
    expected = mine_pairs(events, cfg)
    streamed = write_table(events, tmp_path / "events.parquet", "events")
    pd.testing.assert_frame_equal(mine_pairs(streamed, cfg), expected)
    # other column types (zoned times, ids as integers) are validated and converted first
    converted = events.assign(ts=events["ts"].dt.tz_localize("Europe/Paris").dt.tz_convert("UTC"),
                              user_id=events["user_id"].map({"p": 1, "q": 2, "r": 3}))
    converted.to_parquet(tmp_path / "converted.parquet")
    pd.testing.assert_frame_equal(mine_pairs(tmp_path / "converted.parquet", cfg), expected)


def test_missing_value_in_a_mined_event_names_its_row(tmp_path: Path) -> None:
    events = _threshold_log()
    path = tmp_path / "events.parquet"
    table = pa.Table.from_pandas(events, preserve_index=False)
    notes = table.column("note_id").to_pylist()
    notes[3] = None
    pq.write_table(table.set_column(1, "note_id", pa.array(notes, pa.string())), path)
    with pytest.raises(DataError) as err:
        mine_pairs(path, MiningConfig(window_positions=3))
    assert (err.value.row, err.value.column, err.value.file) == (3, "note_id", str(path))
    # an event whose action is neither a source nor a target is not read
    pq.write_table(table.set_column(3, "action", pa.array(["like" if i == 3 else a for i, a in enumerate(
        events["action"])])).set_column(1, "note_id", pa.array(notes, pa.string())), path)
    assert len(mine_pairs(path, MiningConfig(window_positions=3, l_min=0.0))) > 0


# ---------------------------------------------------------------- random logs against the formula


def reference_pairs(events: pd.DataFrame, cfg: MiningConfig) -> dict[tuple[str, str], Fraction]:
    """The formula of the paper, directly: loops over users and events, exact fractions."""
    src, tgt = set(cfg.source_actions), set(cfg.target_actions)
    per_user: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for row, (user, note, ts, action) in enumerate(events[["user_id", "note_id", "ts", "action"]].itertuples(
            index=False)):
        if action in src or action in tgt:
            per_user[user].append((ts.value // 1000, row, note, action))
    window_us = None if cfg.window_seconds is None else Fraction(str(cfg.window_seconds)) * 1_000_000
    users_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    n_of: dict[str, int] = {}
    for user, evs in per_user.items():
        evs.sort()
        n_of[user] = len({note for _, _, note, action in evs if action in tgt})
        for i, (ts_a, _, a, act_a) in enumerate(evs):
            if act_a not in src:
                continue
            for j in range(i + 1, len(evs)):
                ts_b, _, b, act_b = evs[j]
                if cfg.window_positions is not None and j - i > cfg.window_positions:
                    break
                if window_us is not None and ts_b - ts_a > window_us:
                    break
                if act_b in tgt and a != b:
                    users_of[(a, b)].add(user)
    scores = {pair: sum((Fraction(1, n_of[u]) for u in users), Fraction(0))
              for pair, users in users_of.items()}
    if cfg.max_note_clicks_quantile is not None and scores:
        clicks = events.loc[events["action"].isin(tgt), "note_id"].value_counts()
        cut = np.quantile(clicks.to_numpy(), cfg.max_note_clicks_quantile)
        popular = set(clicks.index[clicks > cut])
        scores = {p: s for p, s in scores.items() if p[0] not in popular and p[1] not in popular}
    low, high = Fraction(str(cfg.l_min)), Fraction(str(cfg.u_max))
    by_a: dict[str, list[tuple[Fraction, str]]] = defaultdict(list)
    for (a, b), s in scores.items():
        if low <= s <= high:
            by_a[a].append((s, b))
    return {(a, b): s for a, cands in by_a.items()
            for s, b in sorted(cands, key=lambda c: (-c[0], c[1]))[:cfg.top_t]}


_NOTES = [f"n{i}" for i in range(7)]
events_strategy = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(_NOTES),
              st.integers(0, 20), st.sampled_from(["view", "click", "click", "like"])),
    min_size=0, max_size=40,
).map(lambda rows: log(*rows))


@st.composite
def configs(draw: st.DrawFn) -> MiningConfig:
    positions = draw(st.sampled_from([None, 1, 2, 3, 5]))
    seconds = draw(st.sampled_from([None, 1.0, 2.5, 5.0] if positions is not None else [1.0, 2.5, 5.0]))
    l_min = draw(st.sampled_from([0.0, 0.01, 0.2, 0.25]))
    return MiningConfig(
        window_positions=positions, window_seconds=seconds, l_min=l_min,
        u_max=draw(st.sampled_from([x for x in (0.5, 1.0, 30.0) if x >= l_min])),
        top_t=draw(st.sampled_from([1, 2, 10])),
        source_actions=draw(st.sampled_from([["view", "click"], ["view"], ["like", "click"]])),
        max_note_clicks_quantile=draw(st.sampled_from([None, None, 0.5, 0.9])),
        test_note_fraction=draw(st.sampled_from([0.0, 0.1, 0.3])),
        val_note_fraction=draw(st.sampled_from([0.0, 0.05, 0.2])),
        seed=draw(st.integers(0, 3)),
    )


def _load_pandas_reference():  # benchmarks/ is not a package: load the module from its file
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mining_pandas.py"
    spec = importlib.util.spec_from_file_location("mining_pandas", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mine_pairs_pandas


mine_pairs_pandas = _load_pandas_reference()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, cfg=configs())
def test_scores_match_the_formula_on_random_logs(events: pd.DataFrame, cfg: MiningConfig) -> None:
    expected = reference_pairs(events, cfg)
    pairs = mine_pairs(events, cfg)
    assert_scores(pairs, expected)
    assert not pairs.duplicated(["note_id_a", "note_id_b"]).any()
    pd.testing.assert_frame_equal(mine_pairs_pandas(events, cfg), pairs)

    split = split_pairs(pairs, cfg)
    assert_no_leakage(split)
    assert split.equals(split_pairs(pairs, cfg))  # reproducible


def assert_no_leakage(split: pd.DataFrame) -> None:
    """Each test pair holds a note seen only in test pairs, each val pair one seen in no train pair,
    and a pair and its reverse share a split."""
    assert split["split"].isin(["train", "val", "test"]).all()
    pool = {s: set(split.loc[split["split"] == s, ["note_id_a", "note_id_b"]].to_numpy().ravel())
            for s in ("train", "val", "test")}
    test_only = pool["test"] - pool["train"] - pool["val"]
    not_trained = (pool["test"] | pool["val"]) - pool["train"]
    for s, held in (("test", test_only), ("val", not_trained)):
        part = split[split["split"] == s]
        assert (part["note_id_a"].isin(held) | part["note_id_b"].isin(held)).all(), s
    both_ways = split.merge(split, left_on=["note_id_a", "note_id_b"], right_on=["note_id_b", "note_id_a"])
    assert (both_ways["split_x"] == both_ways["split_y"]).all()


@pytest.mark.parametrize("window", [
    {"window_positions": 40},
    {"window_positions": 40, "window_seconds": 30.0},
    {"window_positions": 8, "window_seconds": 30.0},
    {"window_positions": None, "window_seconds": 400.0},
])
def test_long_windows_match_the_formula(window: dict) -> None:
    rng = np.random.default_rng(5)
    rows = [(f"u{rng.integers(3)}", f"n{rng.integers(25)}", int(rng.integers(0, 2000)),
             str(rng.choice(["view", "click"]))) for _ in range(300)]
    events = log(*rows)
    cfg = MiningConfig(l_min=0.0, top_t=5, **window)
    pairs = mine_pairs(events, cfg)
    assert len(pairs) > 20
    assert_scores(pairs, reference_pairs(events, cfg))


# ---------------------------------------------------------------- split and stats


def _many_pairs(n_notes: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, n_notes, 3000), rng.integers(0, n_notes, 3000)
    frame = pd.DataFrame({"note_id_a": [f"n{i}" for i in a], "note_id_b": [f"n{i}" for i in b],
                          "score": rng.uniform(0.01, 3, 3000)})
    return frame[frame["note_id_a"] != frame["note_id_b"]].drop_duplicates(["note_id_a", "note_id_b"])


def test_split_holds_out_notes_without_leakage() -> None:
    pairs = _many_pairs()
    cfg = MiningConfig(test_note_fraction=0.1, val_note_fraction=0.05, seed=7)
    split = split_pairs(pairs, cfg)
    assert_no_leakage(split)
    notes = {s: set(split.loc[split["split"] == s, ["note_id_a", "note_id_b"]].to_numpy().ravel())
             for s in ("train", "val", "test")}
    # every note has ~30 pairs here, so exactly the 20 test and 10 val notes of 200 stay out of training
    assert len(notes["test"] - notes["train"] - notes["val"]) == 20
    assert len((notes["test"] | notes["val"]) - notes["train"]) == 30
    assert split_pairs(pairs, MiningConfig(seed=8))["split"].tolist() != split["split"].tolist()
    # the input's row order does not matter
    assert split_pairs(pairs.iloc[::-1], cfg).sort_index().equals(split.sort_index())


def test_pair_stats_counts() -> None:
    pairs = pd.DataFrame({"note_id_a": ["a", "a", "b", "c"], "note_id_b": ["b", "c", "a", "d"],
                          "score": [0.5, 1.0, 2.0, 4.0], "split": ["train", "train", "val", "test"]})
    stats = pair_stats(pairs)
    assert stats["pairs"] == 4 and stats["notes_covered"] == 4 and stats["query_notes"] == 3
    assert stats["pairs_per_split"] == {"train": 2, "val": 1, "test": 1}
    assert stats["notes_per_split"] == {"train": 3, "val": 2, "test": 2}
    assert stats["mean_pairs_per_note"] == pytest.approx(4 / 3)
    hist = stats["score_histogram"]
    assert sum(hist["counts"]) == 4 and len(hist["bins"]) == len(hist["counts"]) + 1
    assert hist["bins"][0] == 0.5 and hist["bins"][-1] == 4.0
    assert pair_stats(pairs.iloc[:0])["pairs"] == 0


# ---------------------------------------------------------------- the step on disk


def _notes(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"note_id": ids, "title": ids, "content": ids, "hashtags": [["t"]] * len(ids),
                         "category": "c", "event_timestamp": T0})


def test_run_mining_writes_pairs_and_stats(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    rng = np.random.default_rng(0)
    ids = [f"n{i}" for i in range(30)]
    rows = [(f"u{rng.integers(8)}", ids[rng.integers(30)], float(s), "click") for s in range(400)]
    write_table(_notes(ids), data / "notes.parquet", "notes")
    write_table(log(*rows), data / "events.parquet", "events")
    cfg = MiningConfig(test_note_fraction=0.2, val_note_fraction=0.1)
    stats = run_mining(data, out, cfg)
    pairs = read_table(out / "pairs.parquet", "pairs")
    assert stats == json.loads((out / "pair_stats.json").read_text())
    assert stats["pairs"] == len(pairs) > 0
    assert sum(stats["pairs_per_split"].values()) == len(pairs)
    assert set(stats["pairs_per_split"]) == {"train", "val", "test"} and stats["pairs_per_split"]["test"] > 0
    first = (out / "pairs.parquet").read_bytes()
    assert run_mining(data, out, cfg) == stats and (out / "pairs.parquet").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["pair_stats.json", "pairs.parquet"]  # no temp files left


def test_run_mining_names_the_event_with_an_unknown_note(tmp_path: Path) -> None:
    write_table(_notes(["a", "b"]), tmp_path / "notes.parquet", "notes")
    write_table(log(("u", "a", 0, "click"), ("u", "b", 1, "click"), ("u", "zzz", 2, "click")),
                tmp_path / "events.parquet", "events")
    with pytest.raises(DataError) as err:
        run_mining(tmp_path, tmp_path / "out", MiningConfig())
    assert err.value.row == 2 and err.value.column == "note_id"
    assert err.value.file == str(tmp_path / "events.parquet") and "zzz" in str(err.value)
    assert not (tmp_path / "out" / "pairs.parquet").exists()


def test_movielens_test_split_keeps_enough_pairs() -> None:
    """DESIGN.md: with the default settings the MovieLens-100k test split keeps about 1,000 pairs or more."""
    from notellm.datasets.movielens import load_movielens

    _, events = load_movielens()
    cfg = MiningConfig()
    stats = pair_stats(split_pairs(mine_pairs(events, cfg), cfg))
    assert stats["pairs_per_split"]["test"] >= 1_000
    assert stats["pairs_per_split"]["train"] > stats["pairs_per_split"]["test"]
