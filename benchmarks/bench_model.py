"""Benchmark the model code path: training tokens/s and embedding notes/s against bare HF loops.

The project's path is measured exactly as it runs: ``notellm.model.train_model`` (prompt building,
batching, pooling, projection, GCL + CSFT, clipping, optimizer and scheduler steps) and
``notellm.model.embed_notes`` (prompt building, sorting, batching, pooling). Each is compared, in the same
run, with a bare loop of the same HF model (the trainer's LoRA-wrapped backbone, the same trainable
parameters and AdamW) over the same batch tensors: the decoder's forward over every token (+ backward and
optimizer step when training), pooled at the token before [EMB], with a trivial loss. The project runs
with ``model.share_prefix`` off (a plain full forward: the same work as the bare loop, so the ratio is
the code path's overhead) and on (the default: the instruction prefix a batch shares runs once).

Time is CPU time of the process (``time.process_time``), so that other work on a shared machine does
not enter the ratios; wall-clock rates are shown beside it. ``train_model`` is timed as a whole, once
with ``--warmup`` steps and once with ``--warmup + --steps`` steps: the difference is the CPU time of the
extra steps (loading and saving cancel out).

    python benchmarks/bench_model.py                       # SmolLM2-135M, 1 thread, fp32 and bf16
    python benchmarks/bench_model.py --threads 2 --steps 5 --no-docs

Notes are MovieLens-100k movies; training pairs are random pairs of them (throughput does not depend on
which notes are related).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Model"
COMMAND = "python benchmarks/bench_model.py"


def random_pairs(notes: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    ids = notes["note_id"].to_numpy()
    chosen = np.random.default_rng(seed).choice(len(ids), size=(count, 2), replace=False)
    return pd.DataFrame({"note_id_a": ids[chosen[:, 0]], "note_id_b": ids[chosen[:, 1]], "score": 1.0,
                         "split": "train"})


def configs(args: argparse.Namespace, bf16: bool, share_prefix: bool, steps: int) -> tuple[Any, Any, Any]:
    from notellm.model_config import ModelConfig, PromptConfig, TrainingConfig

    model = ModelConfig(backbone=args.backbone, share_prefix=share_prefix, merge_lora=False)
    train = TrainingConfig(max_steps=steps, batch_pairs=args.batch_pairs, warmup_ratio=0.0,
                           bf16="on" if bf16 else "off", threads=args.threads, log_every=1)
    return model, PromptConfig(), train


def run_trainer(notes: pd.DataFrame, pairs: pd.DataFrame, args: argparse.Namespace, bf16: bool,
                share_prefix: bool, steps: int) -> tuple[float, list[dict[str, Any]]]:
    """CPU seconds of a whole ``train_model`` call of ``steps`` steps, and its loss curve."""
    from notellm.model import train_model

    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        started = time.process_time()
        train_model(notes, pairs, *configs(args, bf16, share_prefix, steps), Path(tmp) / "model",
                    progress=False)
        cpu = time.process_time() - started
        return cpu, json.loads((Path(tmp) / "model" / "loss_curve.json").read_text())


def project_training(notes: pd.DataFrame, pairs: pd.DataFrame, args: argparse.Namespace, bf16: bool,
                     share_prefix: bool) -> dict[str, Any]:
    """CPU and wall seconds per step of ``train_model``, and the real tokens of every step it ran."""
    short_cpu, _ = run_trainer(notes, pairs, args, bf16, share_prefix, args.warmup)
    long_cpu, curve = run_trainer(notes, pairs, args, bf16, share_prefix, args.warmup + args.steps)
    wall = np.diff([0.0, *(r["seconds"] for r in curve)])[args.warmup:]
    return {"cpu": (long_cpu - short_cpu) / args.steps, "wall": float(np.median(wall)),
            "token_counts": [r["tokens"] for r in curve]}


def trainer_batches(model: Any, notes: pd.DataFrame, pairs: pd.DataFrame,
                    args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """The batches train_model builds: its data order is a function of (seed, epoch), one epoch here."""
    from notellm.model.prompt import notes_from_frame
    from notellm.model.runtime import make_batch

    by_id = {n.note_id: n for n in notes_from_frame(notes)}
    table = pairs[["note_id_a", "note_id_b"]].to_numpy(dtype=object)
    order = np.random.default_rng([0, 0]).permutation(len(table))  # TrainingConfig.seed 0, epoch 0
    batches = []
    for step in range(args.warmup + args.steps):
        chosen = table[order[step * args.batch_pairs:(step + 1) * args.batch_pairs]]
        examples = [model.prompter.training_example(by_id[n], salt=0) for n in [*chosen[:, 0], *chosen[:, 1]]]
        batches.append(make_batch([e.input_ids for e in examples], model.tokenizer.pad_token_id))
    return batches


def bare_training(notes: pd.DataFrame, pairs: pd.DataFrame, args: argparse.Namespace,
                  bf16: bool) -> dict[str, Any]:
    """Forward + backward + AdamW step of the LoRA-wrapped decoder on the trainer's batches."""
    from notellm.model import build_model
    from notellm.model.encoder import pool_positions
    from notellm.model.training import apply_finetuning  # the trainer's own LoRA set-up: the same model

    model_cfg, prompt_cfg, train_cfg = configs(args, bf16, False, args.warmup + args.steps)
    model = build_model(model_cfg, prompt_cfg, seed=0)
    apply_finetuning(model, model_cfg)
    batches = trainer_batches(model, notes, pairs, args)
    decoder = model.encoder.backbone.get_decoder()
    model.encoder.train()
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr)
    cpu, wall = [], []
    for step, batch in enumerate(batches):
        started, started_wall = time.process_time(), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0])
        pooled = hidden[rows, pool_positions(batch["input_ids"], model.encoder.emb_token_id)]
        loss = pooled.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            cpu.append(time.process_time() - started)
            wall.append(time.perf_counter() - started_wall)
    return {"cpu": float(np.mean(cpu)), "wall": float(np.median(wall)),
            "token_counts": [int(b["attention_mask"].sum()) for b in batches]}


def embedding(notes: pd.DataFrame, args: argparse.Namespace, bf16: bool) -> dict[str, dict[str, float]]:
    """CPU and wall seconds per note of ``embed_notes`` (share_prefix off / on) and of the bare decoder.

    One model serves all three (``share_prefix`` is a switch of the encoder); the variants take turns,
    ``--embed-repeats`` times, after one untimed batch each.
    """
    from notellm.model import build_model, embed_notes
    from notellm.model.encoder import pool_positions
    from notellm.model.prompt import notes_from_frame
    from notellm.model.runtime import make_batch

    model_cfg, prompt_cfg, _ = configs(args, bf16, True, 1)
    model = build_model(model_cfg, prompt_cfg, seed=0)
    sample = notes.sample(n=args.embed_notes + args.embed_batch, random_state=0)
    warm, timed = sample.iloc[:args.embed_batch], sample.iloc[args.embed_batch:]
    decoder = model.encoder.backbone.get_decoder()

    def bare(frame: pd.DataFrame) -> Callable[[], None]:
        """The decoder loop alone; its batches are built before the clock starts."""
        ids = [model.prompter.embedding_ids(n) for n in notes_from_frame(frame)]
        order = np.argsort([-len(s) for s in ids], kind="stable")  # embed_notes' batching: longest first
        batches = [make_batch([ids[i] for i in order[lo:lo + args.embed_batch]], model.tokenizer.pad_token_id)
                   for lo in range(0, len(ids), args.embed_batch)]

        def run() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for batch in batches:
                    hidden = decoder(**batch, use_cache=False).last_hidden_state
                    hidden[torch.arange(hidden.shape[0]), pool_positions(batch["input_ids"],
                                                                          model.encoder.emb_token_id)]
        return run

    def project(share: bool) -> Callable[[pd.DataFrame], Callable[[], None]]:
        def prepare(frame: pd.DataFrame) -> Callable[[], None]:
            def run() -> None:
                model.encoder.share_prefix = share
                embed_notes(model, frame, args.embed_batch, bf16="on" if bf16 else "off")
            return run
        return prepare

    variants = {"bare": bare, "off": project(False), "on": project(True)}
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in variants}
    for prepare in variants.values():
        prepare(warm)()
    for _ in range(args.embed_repeats):
        for name, prepare in variants.items():
            run = prepare(timed)
            started, started_wall = time.process_time(), time.perf_counter()
            run()
            times[name]["cpu"].append((time.process_time() - started) / len(timed))
            times[name]["wall"].append((time.perf_counter() - started_wall) / len(timed))
    return {name: {k: float(np.median(v)) for k, v in t.items()} for name, t in times.items()}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from notellm.datasets import load_movielens

    notes = load_movielens()[0]
    pairs = random_pairs(notes, (args.warmup + args.steps) * args.batch_pairs)
    run_trainer(notes, pairs, args, False, True, 1)  # untimed: the first call in a process pays for imports
    rows = []
    for precision in args.precisions:
        bf16 = precision == "bf16"
        bare = bare_training(notes, pairs, args, bf16)
        tokens = float(np.mean(bare["token_counts"][args.warmup:]))
        print(f"{precision} train bare: {bare}", file=sys.stderr)
        for share in (False, True):
            project = project_training(notes, pairs, args, bf16, share)
            if project["token_counts"] != bare["token_counts"]:
                raise RuntimeError("the bare loop's batches differ from the trainer's: "
                                   f"{project['token_counts']} vs {bare['token_counts']}")
            print(f"{precision} train project share_prefix={share}: {project}", file=sys.stderr)
            rows.append({"what": "train", "precision": precision, "share_prefix": "on" if share else "off",
                         "unit": "tokens/s", "per": tokens, "project": project, "bare": bare})
        per_note = embedding(notes, args, bf16)
        print(f"{precision} embed seconds per note: {per_note}", file=sys.stderr)
        for mode in ("off", "on"):
            rows.append({"what": "embed", "precision": precision, "share_prefix": mode, "unit": "notes/s",
                         "per": 1.0, "project": per_note[mode], "bare": per_note["bare"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| phase | precision | share_prefix | project (CPU time) | bare HF loop (CPU time) | "
             "project / bare (CPU) | project (wall) | bare (wall) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, b, per, unit = r["project"], r["bare"], r["per"], r["unit"]
        lines.append(f"| {r['what']} | {r['precision']} | {r['share_prefix']} | {per / p['cpu']:,.1f} {unit} "
                     f"| {per / b['cpu']:,.1f} {unit} | {p['cpu'] / b['cpu']:.2f}x "
                     f"| {per / p['wall']:,.1f} {unit} | {per / b['wall']:,.1f} {unit} |")
    return "\n".join(lines) + "\n"


def section(table: str, rows: list[dict[str, Any]], args: argparse.Namespace,
            load: tuple[float, float]) -> str:
    import transformers

    train = [r for r in rows if r["what"] == "train"]
    steps = ", ".join(f"{r['precision']} share_prefix {r['share_prefix']} {r['project']['cpu']:.1f} s "
                      f"(bare {r['bare']['cpu']:.1f} s)" for r in train)
    tokens = train[0]["per"] if train else 0
    return f"""{SECTION}

Training and embedding throughput of {args.backbone} through the project's code path
(`notellm.model.train_model`, `notellm.model.embed_notes`), each against a bare loop of the same HF model
(the trainer's LoRA-wrapped backbone, the same trainable parameters and AdamW) on the same batch tensors
in the same run: the decoder's forward over every token, pooled at the token before `[EMB]`, a trivial
loss, backward and optimizer step (training) or inference mode (embedding). "project / bare" is the
overhead ratio (target: at most 1.15x). With `share_prefix` off the project does the same work as the
bare loop, so that row is the code path's overhead; with it on (the default) the instruction prefix that
every row of a batch shares runs once per batch. Times are CPU time of the process, so other work on a
shared machine stays out of the ratios; wall-clock rates are beside them. CPU time still slows down when
the other hyperthread of a core is busy, so on a shared machine the ratios of one run move by about
±10%: repeat the run (or raise `--steps`) before reading more into a difference of that size.

Training: batches of {args.batch_pairs} MovieLens-100k pairs ({2 * args.batch_pairs} notes, the default
compression prompt with CSFT labels, about {tokens:.0f} real tokens a step, LoRA r 16); `train_model` ran
{args.warmup} and {args.warmup + args.steps} steps, the difference gives {args.steps} steps' CPU time (the
bare loop: {args.steps} steps after {args.warmup} untimed). CPU seconds a step: {steps}. Embedding:
{args.embed_notes} notes in batches of {args.embed_batch}, the three variants in turn
{args.embed_repeats} times after one untimed batch each (medians).

Measured on {os.cpu_count()} CPU cores ({platform.machine()}), {args.threads} torch thread(s), Python
{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}. The machine
was shared (1-minute load average {load[0]:.1f} before, {load[1]:.1f} after): wall rates are well below
what an idle machine gives. Peak RSS of the run:
{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB.

{table}
Reproduce: `{COMMAND} --threads {args.threads} --steps {args.steps} --batch-pairs {args.batch_pairs}`
(rewrites this section; `--no-docs` prints the table only).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first (at least 1)")
    parser.add_argument("--batch-pairs", type=int, default=16, help="pairs per training step")
    parser.add_argument("--embed-notes", type=int, default=32, help="timed notes to embed")
    parser.add_argument("--embed-batch", type=int, default=32)
    parser.add_argument("--embed-repeats", type=int, default=6, help="turns of each embedding variant")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    sys.path.insert(0, str(ROOT))
    from benchmarks.docs_section import write_section
    torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    rows = measure(args)
    table = markdown(rows)
    print(table)
    if not args.no_docs:
        write_section(SECTION, section(table, rows, args, (before, os.getloadavg()[0])))
        print(f"wrote {DOCS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
