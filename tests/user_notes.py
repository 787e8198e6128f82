"""A user's own catalogue, written by the tests: text-rich notes with long descriptions and related-note links.

Deterministic (seeded). Notes fall into topics; each note's description is a few hundred words drawn
mostly from its topic's vocabulary, so related notes share words. Links join notes of one topic, as a user's
"related notes" list would: undirected, no score, no split. Optional events (views then clicks) exist for
the route that gives both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TOPICS = {
    "hiking": "trail summit ridge boots backpack alpine valley hut map compass pass glacier",
    "baking": "dough flour oven sourdough crust butter yeast knead proof loaf crumb starter",
    "cycling": "bike saddle gear chain climb descent wheel tyre cadence route peloton helmet",
    "gardening": "soil seed compost tomato prune bloom mulch bed harvest root shade watering",
    "photography": "lens shutter aperture light frame portrait exposure tripod film grain focus",
    "coffee": "espresso roast bean grinder brew pour crema milk acidity origin filter kettle",
}
FILLER = "the a with and for this that very really then also just some our my".split()


def user_catalogue(notes: int = 120, links_per_note: int = 3, words: tuple[int, int] = (150, 400),
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(notes, links, events): ``notes`` with long contents, undirected ``links`` (note_id_a, note_id_b
    only) within topics, and ``events`` (views then clicks of linked notes by a few users)."""
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    topic = [names[i % len(names)] for i in range(notes)]
    rows = []
    for i, name in enumerate(topic):
        vocab = TOPICS[name].split()
        n = int(rng.integers(*words))
        text = [str(rng.choice(vocab)) if rng.random() < 0.6 else str(rng.choice(FILLER)) for _ in range(n)]
        tags = [name, *rng.choice(vocab, size=2, replace=False).tolist()]
        rows.append({"note_id": f"note-{i:04d}", "title": f"{name.title()} notes {i}: {' '.join(text[:4])}",
                     "content": " ".join(text) + ".", "hashtags": tags, "category": name,
                     "event_timestamp": pd.Timestamp("2024-01-01") + pd.Timedelta(hours=i)})
    notes_df = pd.DataFrame(rows)
    by_topic = {name: [i for i, t in enumerate(topic) if t == name] for name in names}
    links = set()
    for i, name in enumerate(topic):
        others = [j for j in by_topic[name] if j != i]
        for j in rng.choice(others, size=min(links_per_note, len(others)), replace=False):
            if (int(j), i) not in links:
                links.add((i, int(j)))
    ids = notes_df["note_id"].tolist()
    links_df = pd.DataFrame([(ids[a], ids[b]) for a, b in sorted(links)], columns=["note_id_a", "note_id_b"])
    events = []
    start = pd.Timestamp("2024-02-01")
    for n, (a, b) in enumerate(links_df.itertuples(index=False)):
        user, ts = f"u{n % 25}", start + pd.Timedelta(minutes=3 * n)
        events += [(user, a, ts, "view"), (user, b, ts + pd.Timedelta(seconds=30), "click")]
    events_df = pd.DataFrame(events, columns=["user_id", "note_id", "ts", "action"])
    return notes_df, links_df, events_df


def save(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` in the format of ``path``'s suffix (csv hashtags as ``a|b|c``)."""
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        if "hashtags" in df:
            df = df.assign(hashtags=df["hashtags"].map("|".join))
        df.to_csv(path, index=False)
    return path
