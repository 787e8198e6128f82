"""Where and how tensors run: device choice, bf16 autocast, CPU threads, batches of token ids."""

from __future__ import annotations

import contextlib
import logging

import torch

from notellm.model.prompt import IGNORE_INDEX

log = logging.getLogger(__name__)
# Measured (docs/benchmarks.md): on an AVX2-only CPU one 16-pair training step of ~170-token prompts had not
# finished after 7.5 min in bf16 (emulated, a naive GEMM) against 49 s in float32.
EMULATED_BF16 = ("bf16 is set to 'on' but this CPU has no AVX512-BF16 or AMX, so bf16 matrix products are "
                 "emulated: measured here, one 16-pair training step (~170-token prompts) took over 7.5 min "
                 "in bf16 against 49 s in float32. Use 'auto' (float32 on this CPU) or 'off'.")
_warned = False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_bf16(setting: str, device: torch.device, *, training: bool = False) -> bool:
    """'on', 'off', or 'auto': on for a CUDA device that supports bf16; on the CPU, on for training where
    the CPU computes bf16 in hardware (AVX512-BF16 or AMX), off for embedding, so that a note's vector does
    not depend on the batch it was embedded in (bf16 rounding does). Weights stay float32 either way.
    'on' on a CPU without native bf16 is honoured, with one warning (once per process) of what it costs."""
    global _warned
    if setting == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return training and device.type == "cpu" and cpu_has_native_bf16()
    if setting == "on" and device.type == "cpu" and not _warned and not cpu_has_native_bf16():
        log.warning(EMULATED_BF16)
        _warned = True
    return setting == "on"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def make_batch(sequences: list[list[int]], pad_id: int, *, labels: list[list[int] | None] | None = None,
               padding_side: str = "right", device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Pad id lists into input_ids / attention_mask (and labels, -100 on padding and where None)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    lab = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
        if lab is not None and labels[row] is not None:
            lab[row, span] = torch.tensor(labels[row], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if lab is not None:
        batch["labels"] = lab
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch
