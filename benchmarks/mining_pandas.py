"""The vectorised pandas reference for pair mining: the same result as :func:`notellm.mining.mine_pairs`.

Events are sorted by user, time and file row; for every window offset k the arrays are shifted by k
positions and a same-user mask keeps the (user, A, B) candidates; duplicates are dropped, ``1 / N_u``
joined and summed per pair. No Python loop over users: one vectorised step per offset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from notellm.config import MiningConfig
from notellm.mining import PAIR_COLUMNS, round_scores


def mine_pairs_pandas(events: pd.DataFrame | str | Path, cfg: MiningConfig) -> pd.DataFrame:
    """Score pairs as ``mine_pairs`` does, with pandas and numpy only."""
    if not isinstance(events, pd.DataFrame):
        events = pd.read_parquet(events, columns=["user_id", "note_id", "ts", "action"])
    keep = events["action"].isin(set(cfg.source_actions) | set(cfg.target_actions)).to_numpy()
    ev = events.loc[keep, ["user_id", "note_id", "ts", "action"]]
    users, _ = pd.factorize(ev["user_id"])
    notes, note_ids = pd.factorize(ev["note_id"], sort=True)
    t = ev["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
    order = np.lexsort((np.flatnonzero(keep), t, users))  # user, then time, then file row
    u, n, t = users[order], notes[order], t[order]
    is_src = ev["action"].isin(cfg.source_actions).to_numpy()[order]
    is_tgt = ev["action"].isin(cfg.target_actions).to_numpy()[order]

    targets = pd.DataFrame({"u": u[is_tgt], "n": n[is_tgt]})
    inv_n = 1.0 / targets.drop_duplicates().groupby("u").size()

    window_us = None if cfg.window_seconds is None else round(cfg.window_seconds * 1_000_000, 6)
    parts = []
    k = 1
    while k < len(u) and (cfg.window_positions is None or k <= cfg.window_positions):
        same = u[:-k] == u[k:]
        if window_us is not None:
            same &= (t[k:] - t[:-k]) <= window_us
        if not same.any():  # time-only window: no user has events this close any more
            break
        mask = same & is_src[:-k] & is_tgt[k:] & (n[:-k] != n[k:])
        parts.append(pd.DataFrame({"u": u[:-k][mask], "a": n[:-k][mask], "b": n[k:][mask]}))
        k += 1
    cand = pd.concat(parts, ignore_index=True).drop_duplicates() if parts else pd.DataFrame()
    if cand.empty:
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in
                             zip(PAIR_COLUMNS, [object, object, "float64"], strict=True)})
    cand["w"] = cand["u"].map(inv_n).to_numpy()
    scored = cand.groupby(["a", "b"], sort=False)["w"].sum().reset_index(name="score")
    scored["score"] = round_scores(scored["score"].to_numpy())

    kept = scored[(scored["score"] >= cfg.l_min) & (scored["score"] <= cfg.u_max)]
    if cfg.max_note_clicks_quantile is not None:
        clicks = pd.Series(n[is_tgt]).value_counts()
        popular = clicks.index[clicks > np.quantile(clicks.to_numpy(), cfg.max_note_clicks_quantile)]
        kept = kept[~kept["a"].isin(popular) & ~kept["b"].isin(popular)]
    kept = kept.sort_values(["a", "score", "b"], ascending=[True, False, True], kind="stable")
    kept = kept[kept.groupby("a").cumcount() < cfg.top_t]
    return pd.DataFrame({"note_id_a": note_ids[kept["a"].to_numpy()].astype(object),
                         "note_id_b": note_ids[kept["b"].to_numpy()].astype(object),
                         "score": kept["score"].to_numpy(dtype=np.float64)})
