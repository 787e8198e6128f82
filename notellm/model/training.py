"""Fine-tune a NoteLLM on related pairs: GCL + alpha * CSFT, LoRA or full, checkpoints, resume, DDP.

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes its own slice of every global batch and the
contrastive loss sees the embeddings of all ranks. Rank 0 writes checkpoints and the model directory.
Batches hold distinct notes (:mod:`notellm.model.batches`); their order is a function of (seed, epoch), so
a checkpoint only needs the step to resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm
from transformers import get_scheduler

from notellm.contracts import PAIRS, check_references, validate
from notellm.errors import ConfigError, DataError
from notellm.io import atomic_dir, write_json
from notellm.model.batches import epoch_batches
from notellm.model.bundle import NoteLLM, build_model
from notellm.model.centering import fit_center_on_pairs, mean_pairwise_cosine
from notellm.model.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from notellm.model.curve import plot_curve, summarize
from notellm.model.embed import embed_notes
from notellm.model.losses import combined_loss, gather_with_grad, gcl_loss
from notellm.model.modeldir import new_model_version, write_model_files
from notellm.model.prompt import Example, Note, NotePrompter, notes_from_frame
from notellm.model.runtime import autocast, default_device, make_batch, set_threads, use_bf16
from notellm.model_config import ModelConfig, PromptConfig, TrainingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device
    started: bool  # this run created the process group (and destroys it)


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return _Dist(rank, world, torch.device("cuda", local), started)
    return _Dist(rank, world, default_device(), started)


def _pairs(pairs: pd.DataFrame, split: str, notes: dict[str, Note]) -> np.ndarray:
    table = validate(pairs, PAIRS)
    keep = (table["split"] == split) & (table["note_id_a"] != table["note_id_b"])
    table = table[keep].reset_index(drop=True)
    check_references(table, ["note_id_a", "note_id_b"], notes.keys(), what=f"{split} pair")
    return table[["note_id_a", "note_id_b"]].to_numpy(dtype=object)


def apply_finetuning(model: NoteLLM, cfg: ModelConfig) -> None:
    """Make the model trainable as ``cfg`` says: LoRA adapters (and the [EMB] row), or the full backbone."""
    backbone = model.encoder.backbone
    if cfg.finetune == "lora":
        tokens = {"embed_tokens": [model.encoder.emb_token_id]} if cfg.train_emb_token else None
        backbone = get_peft_model(backbone, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules, trainable_token_indices=tokens))
    else:
        backbone.requires_grad_(True)
    if cfg.gradient_checkpointing:
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.encoder.backbone = backbone


def _optimizer(model: NoteLLM, cfg: TrainingConfig, total: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with separate learning rates for the backbone, the projection and tau; warmup schedule."""
    enc = model.encoder
    groups = [{"params": [p for p in enc.backbone.parameters() if p.requires_grad], "lr": cfg.lr,
               "weight_decay": cfg.weight_decay},
              {"params": list(enc.projection.parameters()), "lr": cfg.projection_lr,
               "weight_decay": cfg.weight_decay},
              {"params": [enc.tau], "lr": cfg.tau_lr, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler


def _fingerprint(model_cfg: ModelConfig, prompt_cfg: PromptConfig, train_cfg: TrainingConfig,
                 pairs: np.ndarray, world: int) -> str:
    """What a checkpoint must share with the run that resumes it."""
    same = train_cfg.model_dump(mode="json", include={"batch_pairs", "seed", "alpha", "epochs", "lr",
                                                      "scheduler", "projection_lr", "tau_lr", "warmup_ratio"})
    data = hashlib.sha256("\n".join(f"{a}\t{b}" for a, b in pairs).encode()).hexdigest()
    blob = json.dumps([model_cfg.model_dump(mode="json"), prompt_cfg.model_dump(mode="json"), same, world,
                       data], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _schedule(pairs: np.ndarray, cfg: TrainingConfig, batch_pairs: int,
              world: int) -> list[tuple[int, np.ndarray]]:
    """(epoch, pair indices of the global batch) for every step; stops once ``max_steps`` are planned."""
    schedule: list[tuple[int, np.ndarray]] = []
    for epoch in range(cfg.epochs):
        schedule += [(epoch, batch) for batch in epoch_batches(pairs, batch_pairs, world, cfg.seed, epoch)]
        if cfg.max_steps and len(schedule) >= cfg.max_steps:
            break
    return schedule


def epoch_steps(schedule: list[tuple[int, np.ndarray]]) -> int:
    """Steps in the first epoch of a schedule (a full epoch when the schedule reaches the second)."""
    return sum(1 for epoch, _ in schedule if epoch == 0)


def _recall_at_k(model: NoteLLM, pairs: np.ndarray, notes: dict[str, Note], k: int, batch_size: int) -> float:
    """Recall@k of the val pairs: query a, target b, ranked among all notes of those pairs but a."""
    pool = list(dict.fromkeys([*pairs[:, 0], *pairs[:, 1]]))
    index = {nid: i for i, nid in enumerate(pool)}
    vectors = embed_notes(model, [notes[n] for n in pool], batch_size)
    q = np.array([index[a] for a in pairs[:, 0]])
    t = np.array([index[b] for b in pairs[:, 1]])
    scores = vectors[q] @ vectors.T
    scores[np.arange(len(q)), q] = -np.inf
    rank = (scores > scores[np.arange(len(q)), t][:, None]).sum(axis=1)
    return float((rank < k).mean())


def _step_rows(prompter: NotePrompter, notes: list[Note], epoch: int,
               with_output: bool) -> tuple[list[list[int]], list[list[int] | None]]:
    """The rows of one step: first the prompt each note is pooled from (in ``notes`` order, carrying the CSFT
    labels when it is the task prompt), then, for notes pooled from the whole-note embedding prompt, their
    task prompt with its labels (read for CSFT only: one forward pass, one batch, DDP-safe)."""
    pooled: list[list[int]] = []
    labels: list[list[int] | None] = []
    extra: list[Example] = []
    for note in notes:
        example = prompter.training_example(note, salt=epoch, with_output=with_output)
        whole = prompter.training_pool_ids(note, example)
        pooled.append(example.input_ids if whole is None else whole)
        labels.append(example.labels if whole is None else None)
        if whole is not None and with_output:
            extra.append(example)
    return pooled + [e.input_ids for e in extra], labels + [e.labels for e in extra]


def train(notes: pd.DataFrame, pairs: pd.DataFrame, model_cfg: ModelConfig, prompt_cfg: PromptConfig,
          train_cfg: TrainingConfig, out_dir: str | Path, *, resume_from: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train on the ``train`` pairs, write the model directory ``out_dir`` atomically, return the metrics.

    ``resume_from`` names a checkpoint directory; ``train_cfg.resume`` picks the newest one instead.
    """
    return train_model(notes, pairs, model_cfg, prompt_cfg, train_cfg, out_dir, resume_from=resume_from,
                       progress=progress)[1]


def train_model(notes: pd.DataFrame, pairs: pd.DataFrame, model_cfg: ModelConfig, prompt_cfg: PromptConfig,
                train_cfg: TrainingConfig, out_dir: str | Path, *, resume_from: str | Path | None = None,
                progress: bool = True) -> tuple[NoteLLM, dict[str, Any]]:
    """:func:`train`, also returning the trained model (rank 0: on the CPU, LoRA merged if so saved)."""
    out_dir = Path(out_dir)
    note_list = notes_from_frame(notes)
    by_id = {n.note_id: n for n in note_list}
    train_pairs = _pairs(pairs, "train", by_id)
    if len(train_pairs) == 0:
        raise DataError("no training pairs: the pairs table has no rows with split == 'train'",
                        column="split")
    val_pairs = np.empty((0, 2), dtype=object)
    if train_cfg.val_every:
        val_pairs = _pairs(pairs, "val", by_id)[:train_cfg.val_max_pairs]

    ctx = _init_distributed()
    set_threads(train_cfg.threads)
    batch_pairs = train_cfg.batch_pairs
    if len(train_pairs) < batch_pairs * ctx.world and ctx.world > 1:
        raise DataError(f"{len(train_pairs)} training pairs are fewer than one global batch "
                        f"({batch_pairs * ctx.world})")
    per_step = batch_pairs * ctx.world
    schedule = _schedule(train_pairs, train_cfg, batch_pairs, ctx.world)
    if not schedule:
        raise DataError(f"no batch of {'%d' % per_step if ctx.world > 1 else 'two or more'} training pairs "
                        "with distinct notes can be formed")
    total = min(len(schedule), train_cfg.max_steps) if train_cfg.max_steps else len(schedule)

    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, prompt_cfg, seed=train_cfg.seed)
    model.encoder.to(ctx.device)
    if model_cfg.center_notes:
        fit_center_on_pairs(model, note_list, train_pairs, model_cfg.center_notes, seed=train_cfg.seed)
    apply_finetuning(model, model_cfg)
    encoder = model.encoder.to(ctx.device).train()
    torch.manual_seed(train_cfg.seed + 1 + ctx.rank)  # dropout streams differ per rank
    optimizer, scheduler = _optimizer(model, train_cfg, total)

    ckpt_dir = train_cfg.checkpoint_dir or out_dir.with_name(out_dir.name + ".checkpoints")
    fingerprint = _fingerprint(model_cfg, prompt_cfg, train_cfg, train_pairs, ctx.world)
    start, curve = 0, []
    if resume_from is None and train_cfg.resume and list_checkpoints(ckpt_dir):
        resume_from = list_checkpoints(ckpt_dir)[-1]
    if resume_from is not None:
        state = load_checkpoint(Path(resume_from), module=encoder, optimizer=optimizer, scheduler=scheduler,
                                fingerprint=fingerprint)
        start, curve = state.step, state.curve
        log.info("resumed from %s at step %d", resume_from, start)
    if start >= total:
        raise ConfigError(f"the checkpoint is at step {start}, training has {total} steps: nothing to do")

    net: torch.nn.Module = encoder
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            encoder, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    bf16 = use_bf16(train_cfg.bf16, ctx.device, training=True)
    with_output = train_cfg.alpha > 0 and prompt_cfg.kind == "notellm"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    began = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not progress or ctx.rank != 0)
    for step in range(start, total):
        epoch, batch_index = schedule[step]
        lo = ctx.rank * batch_pairs
        chosen = train_pairs[batch_index[lo:lo + batch_pairs]]
        seqs, labels = _step_rows(model.prompter, [by_id[nid] for nid in [*chosen[:, 0], *chosen[:, 1]]],
                                  epoch, with_output)
        batch = make_batch(seqs, model.tokenizer.pad_token_id, device=ctx.device,
                           labels=labels if with_output else None)
        with autocast(ctx.device, bf16):
            out = net(**batch)
        half = len(chosen)
        gcl = gcl_loss(gather_with_grad(out.embeddings[:half]), gather_with_grad(out.embeddings[half:2 * half]),
                       encoder.logit_scale)
        # Each rank holds the gradient of its own notes only and DDP averages ranks: scale GCL back up.
        loss = combined_loss(gcl * ctx.world, out.csft_loss, train_cfg.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step + 1
        row: dict[str, Any] = {
            "step": done, "epoch": epoch, "loss": combined_loss(gcl, out.csft_loss, train_cfg.alpha).item(),
            "gcl": gcl.item(), "lr": scheduler.get_last_lr()[0], "tau": encoder.tau.item(),
            "tokens": int(batch["attention_mask"].sum()), "seconds": round(time.perf_counter() - began, 3)}
        if out.csft_loss is not None:
            row["csft"] = out.csft_loss.item()
        if ctx.rank == 0 and len(val_pairs) and (done % train_cfg.val_every == 0 or done == total):
            row["val_recall"] = _recall_at_k(model, val_pairs, by_id, train_cfg.val_k,
                                             2 * batch_pairs)
        if done % train_cfg.log_every == 0 or done == total or "val_recall" in row:
            curve.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tau=f"{row['tau']:.2f}")
        if ctx.rank == 0 and train_cfg.checkpoint_every and done % train_cfg.checkpoint_every == 0 \
                and done < total:
            save_checkpoint(ckpt_dir, step=done, module=encoder, optimizer=optimizer, scheduler=scheduler,
                            curve=curve, fingerprint=fingerprint, keep=train_cfg.keep_checkpoints)
    bar.close()
    seconds = time.perf_counter() - began
    metrics = {"steps": total, "steps_this_run": total - start, "train_pairs": len(train_pairs),
               "pairs_seen": int(sum(len(b) for _, b in schedule[:total])), "epoch_steps": epoch_steps(schedule),
               "val_pairs": len(val_pairs), "world_size": ctx.world, **summarize(curve),
               "train_seconds": round(seconds, 2), "seconds_per_step": round(seconds / (total - start), 3),
               "notes_per_s": round(2 * per_step * (total - start) / seconds, 2)}
    if ctx.rank == 0:
        sample = [by_id[n] for n in list(dict.fromkeys(train_pairs[:, 0]))[:64]]
        metrics["mean_pairwise_cosine"] = mean_pairwise_cosine(embed_notes(model, sample, 2 * batch_pairs))
        _write_output(model, out_dir, model_cfg, train_cfg, curve, metrics, note_list)
        metrics.update(model_dir=str(out_dir), model_version=model.model_version)
    if ctx.world > 1:
        dist.barrier()
        if ctx.started:
            dist.destroy_process_group()
    return model, metrics


def _write_output(model: NoteLLM, out_dir: Path, model_cfg: ModelConfig, train_cfg: TrainingConfig,
                  curve: list[dict[str, Any]], metrics: dict[str, Any], notes: list[Note]) -> None:
    encoder = model.encoder
    encoder.eval()
    if model_cfg.gradient_checkpointing:
        encoder.backbone.activation_checkpointing_disable()
    encoder.to("cpu")
    model.model_version = train_cfg.model_version or new_model_version(encoder)
    model.meta["categories"] = sorted({n.category for n in notes if n.category})
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp, merge=model_cfg.merge_lora,
                          extra={"training": train_cfg.model_dump(mode="json"), "metrics": metrics})
        write_json(curve, tmp / "loss_curve.json")
        plot_curve(curve, tmp / "loss_curve.png")
