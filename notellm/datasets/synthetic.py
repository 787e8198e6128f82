"""A deterministic synthetic note platform: topical notes, users with topic interests, click sessions.

The world is fixed by the configuration alone: the vocabulary (topic words, hashtags, categories)
depends only on the number of topics, and the topic mix is a fixed Zipf-like law, so two seeds
give different samples of the same distributions; ``cfg.seed`` drives every random draw.
``cfg.drift`` gives a drifted window: the topic mix is reversed and texts are about twice as long.

Notes and events are generated in chunks with vectorised numpy code and streamed to parquet, so
memory stays at one chunk (plus one small array per note and per user) whatever the event count.
The output depends on the configuration and on ``chunk_events`` (each chunk has its own random
stream), never on anything else.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from notellm.config import SyntheticConfig
from notellm.contracts import CONTRACTS, EVENTS, NOTES
from notellm.errors import ConfigError
from notellm.io import atomic_path

CATEGORIES = ("food", "travel", "fashion", "beauty", "fitness", "technology", "pets", "home",
              "music", "books", "gaming", "parenting", "photography", "finance", "education", "art")
COMMON_WORDS = ("the", "a", "my", "with", "and", "for", "today", "really", "new", "best", "love", "so",
                "this", "that", "just", "try", "how", "to", "in", "of", "on", "great", "little", "very",
                "week", "simple", "guide", "tips", "finally", "favourite")
WORDS_PER_TOPIC = 40
HASHTAGS_PER_TOPIC = 8  # a topic's hashtags are its most frequent words
VOCABULARY_SEED = 20240301  # the vocabulary is part of the world, not of the sample
START = np.datetime64("2024-01-01T00:00:00", "us")
DAY_US = 86_400 * 1_000_000
SPAN_US = 30 * DAY_US  # events cover about 30 days, whatever their number
NOTES_CHUNK = 100_000
EVENTS_CHUNK = 500_000

MEAN_SESSION_EVENTS = 8
MEAN_EVENT_GAP_US = 40 * 1_000_000
P_SESSION_TOPIC, P_INTEREST_TOPIC = 0.7, 0.2  # the rest (0.1) explores a random topic
P_CLICK_INTEREST, P_CLICK_EXPLORE = 0.45, 0.10
P_SECOND_TOPIC = 0.3
WORD_SOURCE = (0.6, 0.15, 0.25)  # main topic, second topic, common words
INTEREST_CONCENTRATION = 5.0  # Dirichlet alpha = concentration * topic mix: a few topics per user
ACTIVITY_SIGMA = 0.5  # user activity ~ lognormal(0, sigma): some users are far more active
NOTE_POPULARITY_EXPONENT = 2.5  # within a topic, note rank ~ u ** exponent: a few popular notes


def _pseudo_words(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct pronounceable words of consonant-vowel syllables."""
    syllables = np.array([c + v for c in "bdfgklmnprstvz" for v in "aeiou"], dtype=object)
    length = 3
    while len(syllables) ** length < 2 * n:
        length += 1
    codes = rng.choice(len(syllables) ** length, size=n, replace=False)
    words = np.full(n, "", dtype=object)
    for _ in range(length):
        codes, digit = np.divmod(codes, len(syllables))
        words = words + syllables[digit]
    return words


def vocabulary(topics: int) -> tuple[np.ndarray, np.ndarray]:
    """``(words, categories)``: a (topics, WORDS_PER_TOPIC) array of topic words; each topic's category."""
    rng = np.random.default_rng(VOCABULARY_SEED)
    words = _pseudo_words(topics * WORDS_PER_TOPIC, rng).reshape(topics, WORDS_PER_TOPIC)
    categories = np.array([CATEGORIES[t % len(CATEGORIES)] for t in range(topics)], dtype=object)
    return words, categories


def topic_mix(topics: int, drift: bool) -> np.ndarray:
    """The share of each topic among notes and in user interests (reversed under drift)."""
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8
    if drift:
        weights = weights[::-1]
    return weights / weights.sum()


def _note_chunk(start: int, stop: int, cfg: SyntheticConfig, topics: int, words: np.ndarray,
                categories: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Notes ``start..stop-1`` as an arrow table, and their main topics."""
    rng = np.random.default_rng([cfg.seed, 0, start])
    m = stop - start
    index = np.arange(start, stop)
    main = rng.choice(topics, size=m, p=topic_mix(topics, cfg.drift))
    main[index < topics] = index[index < topics]  # every topic has at least one note
    if topics > 1:
        second = rng.integers(0, topics - 1, size=m)
        second += second >= main
        has_second = rng.random(m) < P_SECOND_TOPIC
    else:
        second, has_second = main.copy(), np.zeros(m, dtype=bool)

    scale = 2 if cfg.drift else 1
    title_len = scale * 3 + rng.poisson(scale * 2, size=m)
    content_len = scale * 20 + rng.poisson(scale * 30, size=m)
    lengths = title_len + content_len
    owner = np.repeat(np.arange(m), lengths)
    source = rng.choice(3, size=len(owner), p=WORD_SOURCE)
    topic = np.where((source == 1) & has_second[owner], second[owner], main[owner])
    rank = (WORDS_PER_TOPIC * rng.random(len(owner)) ** 2).astype(np.int64)
    common = np.array(COMMON_WORDS, dtype=object)[rng.integers(0, len(COMMON_WORDS), size=len(owner))]
    tokens = np.where(source == 2, common, words[topic, rank])
    titles, contents = [], []
    for note_words, n_title in zip(np.split(tokens, np.cumsum(lengths)[:-1]), title_len, strict=True):
        titles.append(" ".join(note_words[:n_title]).capitalize())
        contents.append(" ".join(note_words[n_title:]).capitalize() + ".")

    n_tags = 1 + rng.binomial(3, 0.5, size=m)
    picks = np.argsort(rng.random((m, HASHTAGS_PER_TOPIC)), axis=1)[:, :4]
    tag_words = np.concatenate([words[main[:, None], picks],
                                words[second, rng.integers(0, HASHTAGS_PER_TOPIC, size=m)][:, None]], axis=1)
    keep = np.concatenate([np.arange(4)[None, :] < n_tags[:, None],
                           (has_second & (rng.random(m) < 0.5))[:, None]], axis=1)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    hashtags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tag_words[keep], pa.string()))

    created = START - rng.integers(DAY_US, SPAN_US, size=m).astype("timedelta64[us]")
    columns = [pa.array([f"n{i}" for i in index], pa.string()), pa.array(titles, pa.string()),
               pa.array(contents, pa.string()), hashtags, pa.array(categories[main], pa.string()),
               pa.array(created)]
    return pa.Table.from_arrays(columns, schema=CONTRACTS[NOTES].schema), main


def _draw_rows(cumulative: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row index, a column drawn from that row's cumulative distribution."""
    r = rng.random(len(rows))[:, None] * cumulative[rows, -1:]
    return np.minimum((cumulative[rows] < r).sum(axis=1), cumulative.shape[1] - 1)


class _EventSampler:
    """Sessions of views and clicks: users pick a session topic from their interests, then notes."""

    def __init__(self, cfg: SyntheticConfig, topics: int, main_topic: np.ndarray) -> None:
        rng = np.random.default_rng([cfg.seed, 1])
        self.cfg, self.topics = cfg, topics
        self.activity = np.cumsum(rng.lognormal(0.0, ACTIVITY_SIGMA, size=cfg.users))
        alpha = INTEREST_CONCENTRATION * topic_mix(topics, cfg.drift)
        self.interest = np.cumsum(rng.dirichlet(alpha, size=cfg.users), axis=1).astype(np.float32)
        self.by_topic = np.argsort(main_topic, kind="stable")
        self.topic_count = np.bincount(main_topic, minlength=topics)
        self.topic_start = np.concatenate([[0], np.cumsum(self.topic_count)[:-1]])
        self.session_gap_us = SPAN_US / max(1.0, cfg.events / MEAN_SESSION_EVENTS)
        self.clock_us = 0.0
        self.last_ts = np.int64(0)
        self.user_ids = pa.array([f"u{i}" for i in range(cfg.users)], pa.string())
        self.note_ids = pa.array([f"n{i}" for i in range(len(main_topic))], pa.string())
        self.actions = pa.array(["view", "click"], pa.string())
        self.active = np.zeros(cfg.users, dtype=bool)

    def chunk(self, index: int, n: int) -> tuple[pa.Table, int]:
        """The ``index``-th chunk of ``n`` events, in time order; and its number of clicks."""
        rng = np.random.default_rng([self.cfg.seed, 2, index])
        lengths = rng.geometric(1 / MEAN_SESSION_EVENTS, size=n // MEAN_SESSION_EVENTS * 2 + 16)
        while lengths.sum() < n:
            lengths = np.concatenate([lengths, rng.geometric(1 / MEAN_SESSION_EVENTS, size=len(lengths))])
        sessions = int(np.searchsorted(np.cumsum(lengths), n)) + 1
        lengths = lengths[:sessions]
        lengths[-1] -= lengths.sum() - n

        session_user = np.searchsorted(self.activity, rng.random(sessions) * self.activity[-1], side="right")
        session_user = np.minimum(session_user, self.cfg.users - 1)
        session_topic = _draw_rows(self.interest, session_user, rng)
        starts = self.clock_us + np.cumsum(rng.exponential(self.session_gap_us, size=sessions))
        self.clock_us = float(starts[-1])

        session = np.repeat(np.arange(sessions), lengths)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        gaps = rng.exponential(MEAN_EVENT_GAP_US, size=n)
        gaps[first] = 0.0
        elapsed = np.cumsum(gaps)
        ts = (starts[session] + elapsed - elapsed[first][session]).astype(np.int64)

        user = session_user[session]
        mode = rng.random(n)
        topic = session_topic[session]
        redraw = (mode >= P_SESSION_TOPIC) & (mode < P_SESSION_TOPIC + P_INTEREST_TOPIC)
        topic[redraw] = _draw_rows(self.interest, user[redraw], rng)
        explore = mode >= P_SESSION_TOPIC + P_INTEREST_TOPIC
        topic[explore] = rng.integers(0, self.topics, size=int(explore.sum()))
        rank = (self.topic_count[topic] * rng.random(n) ** NOTE_POPULARITY_EXPONENT).astype(np.int64)
        note = self.by_topic[self.topic_start[topic] + rank]
        click = rng.random(n) < np.where(explore, P_CLICK_EXPLORE, P_CLICK_INTEREST)

        order = np.argsort(ts, kind="stable")
        ts = np.maximum(ts[order], self.last_ts)  # a session spilling over the previous chunk's end
        self.last_ts = ts[-1]
        user, note, click = user[order], note[order], click[order]
        self.active[user] = True
        columns = [self.user_ids.take(pa.array(user)), self.note_ids.take(pa.array(note)),
                   pa.array(START + ts.astype("timedelta64[us]")),
                   self.actions.take(pa.array(click.astype(np.int8)))]
        return pa.Table.from_arrays(columns, schema=CONTRACTS[EVENTS].schema), int(click.sum())


def write_synthetic(out_dir: Path, cfg: SyntheticConfig, *, chunk_events: int = EVENTS_CHUNK) -> dict:
    """Write ``out_dir/notes.parquet`` and ``out_dir/events.parquet``; return the counts.

    Both files appear together (renamed into place only after both are complete) or not at all.
    """
    if cfg.seed < 0:
        raise ConfigError(f"synthetic.seed must be 0 or more, got {cfg.seed}")
    out_dir = Path(out_dir)
    topics = min(cfg.topics, cfg.notes)
    words, categories = vocabulary(topics)
    notes_path, events_path = out_dir / "notes.parquet", out_dir / "events.parquet"
    with contextlib.ExitStack() as stack:
        notes_tmp = stack.enter_context(atomic_path(notes_path))
        events_tmp = stack.enter_context(atomic_path(events_path))
        main_topic = np.empty(cfg.notes, dtype=np.int64)
        with pq.ParquetWriter(notes_tmp, CONTRACTS[NOTES].schema) as writer:
            for start in range(0, cfg.notes, NOTES_CHUNK):
                stop = min(start + NOTES_CHUNK, cfg.notes)
                table, main_topic[start:stop] = _note_chunk(start, stop, cfg, topics, words, categories)
                writer.write_table(table)
        sampler = _EventSampler(cfg, topics, main_topic)
        clicks = 0
        with pq.ParquetWriter(events_tmp, CONTRACTS[EVENTS].schema) as writer:
            for index, start in enumerate(range(0, cfg.events, chunk_events)):
                table, chunk_clicks = sampler.chunk(index, min(chunk_events, cfg.events - start))
                writer.write_table(table)
                clicks += chunk_clicks
    return {"notes": cfg.notes, "events": cfg.events, "clicks": clicks, "views": cfg.events - clicks,
            "users": int(sampler.active.sum()), "topics": topics,
            "paths": {"notes": str(notes_path), "events": str(events_path)}}
