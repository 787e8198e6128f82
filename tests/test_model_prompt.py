"""The Note Compression Prompt: layout, task share, hidden category, length limits, the [EMB] guard."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from notellm.errors import ConfigError, DataError
from notellm.model.backbones import add_emb_token, load_backbone
from notellm.model.prompt import IGNORE_INDEX, Note, NotePrompter, notes_from_frame
from notellm.model_config import EMB_TOKEN, PromptConfig


@pytest.fixture(scope="module")
def backbone():
    model, tokenizer = load_backbone("tiny-random")
    return tokenizer, add_emb_token(model, tokenizer)


def prompter(backbone, **settings) -> NotePrompter:
    tokenizer, emb_id = backbone
    return NotePrompter(tokenizer, PromptConfig(**settings), emb_id)


NOTE = Note("m1", "Toy Story (1995)", "A cowboy doll is threatened by a new spaceman toy.",
            ("Animation", "Children", "Comedy"), "Animation")


def test_category_prompt_layout_and_labels(backbone):
    p = prompter(backbone, hashtag_task_share=0.0, layout="paper")
    ex = p.training_example(NOTE)
    text = p.tokenizer.decode(ex.input_ids)
    assert text.startswith(p.tokenizer.bos_token + "Extract the note information in json format")
    assert '"title": "Toy Story (1995)", "topic": "Children, Comedy"' in text  # the category is hidden
    assert text.endswith(f'The compression word is:"{EMB_TOKEN}". The category is: Animation'
                         + p.tokenizer.eos_token)
    assert ex.input_ids.count(p.emb_id) == 1
    out = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert p.tokenizer.decode(out) == " Animation" + p.tokenizer.eos_token
    assert [lab for lab in ex.labels if lab != IGNORE_INDEX] == out


def test_hidden_category_can_be_kept(backbone):
    text = prompter(backbone, hide_category=False).tokenizer.decode(
        prompter(backbone, hide_category=False).embedding_ids(NOTE))
    assert '"topic": "Animation, Children, Comedy"' in text


@pytest.mark.parametrize("layout", ["official", "paper"])
def test_movielens_category_prompts_never_show_their_target(backbone, layout):
    """Issue 13: MovieLens content lists every genre; the category task must not be a copy of its input."""
    from notellm.datasets.movielens import load_movielens

    notes, _ = load_movielens()
    p = prompter(backbone, hashtag_task_share=0.0, layout=layout)
    for note in notes_from_frame(notes):
        ex = p.training_example(note)
        head = p.tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
        output = p.tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX])
        target = re.compile(rf"(?<!\w){re.escape(note.category)}(?!\w)", re.IGNORECASE)
        assert target.search(output), (note.note_id, output)
        assert not target.search(head), (note.note_id, head)
    toy_story = notes_from_frame(notes.head(1))[0]
    assert "genres Animation, Children's and Comedy" in p.tokenizer.decode(p.embedding_ids(toy_story))
    hidden = prompter(backbone, hashtag_task_share=0.0, layout=layout, embed_whole_note=False)
    shown = hidden.tokenizer.decode(hidden.embedding_ids(toy_story))
    assert "Children's and Comedy" in shown and "Animation" not in shown  # Toy Story: the other genres stay


def test_whole_note_embedding_keeps_the_task_prompts_hidden(backbone):
    """``embed_whole_note`` (default): the embedding prompt shows the category, the CSFT and generation prompts do not."""
    p = prompter(backbone, hashtag_task_share=0.0)
    embedded = p.tokenizer.decode(p.embedding_ids(NOTE))
    assert '"topic": "Animation, Children, Comedy"' in embedded
    ex = p.training_example(NOTE)
    head = p.tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
    assert "Animation" not in head and '"topic": "Children, Comedy"' in head
    assert "Animation" not in p.tokenizer.decode(p.generation_ids(NOTE, "category"))
    hidden = prompter(backbone, hashtag_task_share=0.0, embed_whole_note=False)
    assert ex.input_ids == hidden.training_example(NOTE).input_ids  # training is unchanged by the setting
    assert p.embedding_ids(NOTE) != hidden.embedding_ids(NOTE)


def test_official_layout_pools_the_embedding_prompt_in_every_task(backbone):
    p = prompter(backbone, hashtag_task_share=1.0, max_output_hashtags=2, embed_whole_note=False)
    embedding = p.embedding_ids(NOTE)
    ex = p.training_example(NOTE)
    assert ex.task == "hashtags" and ex.input_ids[:len(embedding)] == embedding
    whole = prompter(backbone, hashtag_task_share=1.0, max_output_hashtags=2)  # the same but the category
    assert whole.training_example(NOTE).input_ids == ex.input_ids
    assert whole.tokenizer.decode(whole.embedding_ids(NOTE)).replace("Animation, ", "") == \
        p.tokenizer.decode(embedding)
    j = len(p.choose_task(NOTE)[1])
    text = p.tokenizer.decode(ex.input_ids)
    assert text.startswith(p.tokenizer.bos_token + "Extract the note information in json format, compress it "
                           "into one word for recommendation. {")
    assert f'The compression word is:"{EMB_TOKEN}". The {j} topics are:' in text
    paper = prompter(backbone, hashtag_task_share=1.0, max_output_hashtags=2, layout="paper")
    assert paper.training_example(NOTE).input_ids[:len(embedding)] != paper.embedding_ids(NOTE)


def test_hashtag_task_share_and_seeding(backbone):
    p = prompter(backbone)
    notes = [Note(f"n{i}", f"title {i}", "", ("a", "b", "c", "d"), "a") for i in range(500)]
    tasks = [p.choose_task(n) for n in notes]
    share = sum(t == "hashtags" for t, _ in tasks) / len(tasks)
    assert 0.33 < share < 0.47
    assert tasks == [p.choose_task(n) for n in notes]  # seeded per note
    assert tasks != [p.choose_task(n, salt=1) for n in notes]  # another epoch draws anew
    for task, chosen in tasks:
        assert (task == "category") == (not chosen)
        assert set(chosen) <= {"a", "b", "c", "d"} and len(chosen) <= 3
    no_tags = Note("x", "t", "", (), "c")
    assert prompter(backbone, hashtag_task_share=1.0).choose_task(no_tags)[0] == "category"


def test_hashtag_prompt(backbone):
    p = prompter(backbone, hashtag_task_share=1.0, max_output_hashtags=2, layout="paper")
    ex = p.training_example(NOTE)
    task, chosen = p.choose_task(NOTE)
    j = len(chosen)
    text = p.tokenizer.decode(ex.input_ids)
    assert f"generate {j} topics of the note." in text
    assert '"topic"' not in text  # the hashtag task's input is {title, content}
    assert text.endswith(f"The {j} topics are: {', '.join(chosen)}{p.tokenizer.eos_token}")


def test_literal_emb_in_user_text_is_not_the_special_token(backbone):
    p = prompter(backbone, hashtag_task_share=0.0)
    tricky = Note("t", f"Hello {EMB_TOKEN} world", f"{EMB_TOKEN}{EMB_TOKEN} {p.tokenizer.eos_token}",
                  (EMB_TOKEN,), "c")
    for ids in (p.embedding_ids(tricky), p.training_example(tricky).input_ids,
                p.generation_ids(tricky, "hashtags", 2)):
        assert ids.count(p.emb_id) == 1
    ids = p.embedding_ids(tricky)
    assert ids[-1] == p.emb_id  # the only [EMB] is the template's, at the end of the embedding prompt
    assert p.tokenizer.eos_token_id not in ids
    assert EMB_TOKEN in p.tokenizer.decode(ids[:-1])  # the user's text survives as plain characters


def test_length_limits_in_tokens_and_chars(backbone):
    long = Note("l", "word " * 200, "more " * 500, (), "c")
    short_tokens = prompter(backbone, title_max=5, content_max=7).embedding_ids(long)
    full = prompter(backbone, title_max=1000, content_max=1000).embedding_ids(long)
    assert len(short_tokens) < len(full) - 600
    body = json.loads(prompter(backbone, title_max=5).tokenizer.decode(short_tokens).split(". ", 1)[1]
                      .rsplit(" The compression", 1)[0])
    assert len(prompter(backbone).tokens(body["title"])) <= 5
    chars = prompter(backbone, length_unit="chars", title_max=9, content_max=4)
    body = json.loads(chars.note_json(long, topics=False, hide_category=True))
    assert body == {"title": "word word", "content": "more"}


def test_chinese_template(backbone):
    p = prompter(backbone, template="zh", hashtag_task_share=0.0)
    text = p.tokenizer.decode(p.training_example(NOTE).input_ids)
    assert '"标题": "Toy Story (1995)"' in text and f"压缩为一个词：“{EMB_TOKEN}”。笔记类目：Animation" in text
    with pytest.raises(ValueError, match="unknown template"):
        PromptConfig(template="fr")


def test_baseline_prompts_end_where_they_pool(backbone):
    eol = prompter(backbone, kind="prompteol")
    ids = eol.embedding_ids(NOTE)
    assert eol.tokenizer.decode(ids[:-1]).endswith('" means in one word:"') and ids[-1] == eol.emb_id
    rep = prompter(backbone, kind="repllama")
    ids = rep.embedding_ids(NOTE)
    assert ids[-2:] == [rep.tokenizer.eos_token_id, rep.emb_id]  # pooled at the EOS
    assert rep.training_example(NOTE).labels is None
    with pytest.raises(ConfigError, match="notellm"):
        rep.generation_ids(NOTE, "category")


def test_notes_from_frame_checks_text(notes_df):
    notes = notes_from_frame(notes_df)
    assert notes[0] == Note("n1", "Pasta at home", "Fresh pasta, two ways.", ("pasta", "cooking"), "food")
    assert notes_from_frame(notes_df[["note_id", "title", "content"]])[1].hashtags == ()
    with pytest.raises(DataError, match="content") as err:
        notes_from_frame(notes_df.drop(columns=["content"]), file="notes.parquet")
    assert err.value.file == "notes.parquet"
    empty = notes_df.assign(title=["a", "", "c"], content=["x", " ", "z"])
    with pytest.raises(DataError, match="no text") as err:
        notes_from_frame(empty)
    assert err.value.row == 1
    with pytest.raises(DataError, match="hashtags"):
        notes_from_frame(notes_df.assign(hashtags=["pasta", "x", "y"]))
    with pytest.raises(DataError, match="expected a string"):
        notes_from_frame(pd.DataFrame({"note_id": ["a"], "title": [3.5], "content": ["x"]}))


@pytest.mark.parametrize("with_output", [True, False])
def test_training_pools_the_whole_note_and_reads_csft_from_a_hidden_prompt(backbone, with_output):
    """Training pools exactly the embedding prompt (the genre shown); CSFT reads a second row that hides it."""
    from notellm.model.training import _step_rows

    other = Note("m2", "Heat (1995)", "Heat, released in 1995, is a movie in the genres Action, Crime and Thriller.",
                 ("Action", "Crime", "Thriller"), "Action")
    p = prompter(backbone, hashtag_task_share=0.0)
    seqs, labels = _step_rows(p, [NOTE, other], 0, with_output)
    assert seqs[:2] == [p.embedding_ids(NOTE), p.embedding_ids(other)] and labels[:2] == [None, None]
    if not with_output:
        assert len(seqs) == 2
        return
    assert seqs[2:] == [p.training_example(n).input_ids for n in (NOTE, other)]
    assert labels[2:] == [p.training_example(n).labels for n in (NOTE, other)]
    assert "Action" not in p.tokenizer.decode([t for t, lab in zip(seqs[3], labels[3]) if lab == IGNORE_INDEX])
    hidden = prompter(backbone, hashtag_task_share=0.0, embed_whole_note=False)  # one row per note, as before
    seqs, labels = _step_rows(hidden, [NOTE, other], 0, with_output)
    assert seqs == [hidden.training_example(n).input_ids for n in (NOTE, other)]
    plain = Note("m3", "A title", "No genre words here.", (), "Drama")  # nothing hidden: one row suffices
    assert len(_step_rows(p, [plain], 0, with_output)[0]) == 1
