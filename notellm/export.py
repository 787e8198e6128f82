"""Export a NoteLLM model directory as a standard sentence-transformers model (no notellm needed to load it).

Layout (the classic sentence-transformers format, read by sentence-transformers 2.x to 6.x)::

    modules.json, sentence_bert_config.json, config_sentence_transformers.json
    config.json, model.safetensors      the backbone's decoder (no LM head), float32
    tokenizer.json, tokenizer_config.json, ...   the tokenizer, with the note prompt built in
    1_Pooling/   pooling_mode_lasttoken
    2_Dense/     the projection (d x hidden), no activation; bias = -W c when the model centres by c
    3_Normalize/

A plain string is embedded as the platform embeds a v1 text instance: the note ``{"title": "", "topic": "",
"content": <text>}`` in the category prompt, pooled at the token just before ``[EMB]``. That prompt wraps the
text (JSON-escaped inside the note JSON, then the compression sentence), which a sentence-transformers prompt
(a prefix only) cannot express. So the tokenizer carries it: its normalizer strips the text, JSON-escapes it
and puts the prompt text before and after it, and its post-processor adds BOS. The last token is then the
token before ``[EMB]`` (``[EMB]`` itself is never fed: in a causal model nothing after the pooled token changes
its state), and the standard ``lasttoken`` pooling takes it. Every host that tokenizes with ``tokenizer.json``
applies the same prompt, with no ``trust_remote_code``. :func:`export_sentence_transformers` checks that the
exported tokenizer gives the platform's token ids on probe texts before it returns.

What differs: the platform clips the content to ``prompt.content_max`` tokens (128 by default); the export
embeds the whole text (up to ``max_seq_length``), so a longer text gets a different vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from notellm.errors import ConfigError
from notellm.io import atomic_dir, write_json

SENTINEL = "NOTELLMSENTINEL"
#: json.dumps escapes (ensure_ascii=False): backslash first, then the quote and control characters
JSON_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"),
                ("\f", "\\f")] + [(chr(c), f"\\u{c:04x}") for c in range(0x20) if chr(c) not in "\n\r\t\b\f"]
PROBES = ["Toy Story (1995)", "  padded text  ", 'quotes " and \\ backslashes', "new\nlines\tand tabs",
          "ünïcödé 日本語 ✓", "a literal [EMB] token", "ends with a quote\"", "x"]


def prompt_parts(model: Any) -> tuple[str, str, bool]:
    """The prompt text before and after a plain text (the note's content) and whether BOS leads, read off
    the platform's own prompt for a sentinel text (so any template and layout is exported as it embeds)."""
    from notellm.model.prompt import Note

    if model.prompter.cfg.kind != "notellm":
        raise ConfigError(f"export supports prompt kind 'notellm', not {model.prompter.cfg.kind!r}")
    tok = model.tokenizer
    ids = model.prompter.embedding_ids(Note("", "", SENTINEL))[:-1]  # up to the token before [EMB]
    bos = tok.bos_token_id is not None and ids[0] == tok.bos_token_id
    text = tok.decode(ids[1:] if bos else ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if text.count(SENTINEL) != 1:
        raise ConfigError(f"cannot locate the note's content in the platform's prompt: {text!r}")
    before, after = text.split(SENTINEL)
    return before, after, bos


def centre_vector(model: Any) -> torch.Tensor | None:
    """The pooled-state centre the model subtracts before its projection (``encoder.center``), or None when
    the model has none or it is all zeros (a model directory from before centring)."""
    centre = getattr(model.encoder, "center", None)
    if centre is None or not bool(centre.any()):
        return None
    return centre.detach().float().cpu().reshape(-1)


def _prompt_tokenizer(tokenizer_json: Path, before: str, after: str, bos: tuple[str, int] | None) -> None:
    """Build the note prompt into a saved ``tokenizer.json`` (normalizer and post-processor)."""
    from tokenizers import Regex, Tokenizer, normalizers, processors

    tok = Tokenizer.from_file(str(tokenizer_json))
    steps = [normalizers.Strip(), *(normalizers.Replace(a, b) for a, b in JSON_ESCAPES),
             normalizers.Prepend(before), normalizers.Replace(Regex(r"\z"), after)]
    if tok.normalizer is not None:
        steps.append(tok.normalizer)
    tok.normalizer = normalizers.Sequence(steps)
    single = f"{bos[0]} $A" if bos else "$A"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} $B",
                                                       special_tokens=[bos] if bos else [])
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(tokenizer_json))


def _check_tokens(out: Path, model: Any) -> None:
    """The exported tokenizer must give the platform's ids (all but [EMB]) on every probe text."""
    from transformers import AutoTokenizer

    from notellm.model.prompt import Note

    exported = AutoTokenizer.from_pretrained(out)
    for text in PROBES:
        want = model.prompter.embedding_ids(Note("", "", text))[:-1]
        got = exported(text).input_ids
        if got != want:
            raise ConfigError(f"the exported tokenizer does not reproduce the platform's prompt for {text!r} "
                              f"(this tokenizer merges tokens across the prompt's parts): {got} != {want}")


def export_sentence_transformers(model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir`` (atomically) and return a summary: path, dim, hidden, centred, max_seq_length."""
    from notellm.model import load_model

    model = load_model(model_dir)
    before, after, with_bos = prompt_parts(model)
    decoder = model.encoder.backbone.get_decoder()
    hidden = decoder.config.hidden_size
    projection = model.encoder.projection
    weight = projection.weight.detach().float().cpu() if isinstance(projection, torch.nn.Linear) \
        else torch.eye(hidden)
    centre = centre_vector(model)
    max_len = int(getattr(decoder.config, "max_position_embeddings", 2048))
    tok = model.tokenizer
    bos = (tok.bos_token, tok.bos_token_id) if with_bos else None
    with atomic_dir(out_dir) as tmp:
        decoder.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _prompt_tokenizer(tmp / "tokenizer.json", before, after, bos)
        config = json.loads((tmp / "tokenizer_config.json").read_text())
        config.update(padding_side="right", truncation_side="right", split_special_tokens=True,
                      model_max_length=max_len)
        write_json(config, tmp / "tokenizer_config.json")
        modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
        write_json([{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
                    for i, (path, kind) in enumerate(modules)], tmp / "modules.json")
        write_json({"max_seq_length": max_len, "do_lower_case": False}, tmp / "sentence_bert_config.json")
        write_json({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine",
                    "notellm": {"model_version": model.model_version, "prompt_before": before,
                                "prompt_after": after, "centred": centre is not None}},
                   tmp / "config_sentence_transformers.json")
        pooling = {f"pooling_mode_{m}": m == "lasttoken" for m in
                   ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                    "lasttoken")}
        (tmp / "1_Pooling").mkdir()
        write_json({"word_embedding_dimension": hidden, **pooling, "include_prompt": True},
                   tmp / "1_Pooling" / "config.json")
        (tmp / "2_Dense").mkdir()
        write_json({"in_features": hidden, "out_features": weight.shape[0], "bias": centre is not None,
                    "activation_function": "torch.nn.modules.linear.Identity"}, tmp / "2_Dense" / "config.json")
        tensors = {"linear.weight": weight.contiguous()}
        if centre is not None:  # W (h - c) = W h - W c
            tensors["linear.bias"] = -(weight @ centre).contiguous()
        save_file(tensors, str(tmp / "2_Dense" / "model.safetensors"))
        (tmp / "3_Normalize").mkdir()
        _check_tokens(tmp, model)
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
    return {"path": str(out_dir), "dim": int(weight.shape[0]), "hidden": hidden, "centred": centre is not None,
            "max_seq_length": max_len, "model_version": model.model_version}
