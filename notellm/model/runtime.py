"""Where and how tensors run: device choice, bf16 autocast, CPU threads, batches of token ids."""

from __future__ import annotations

import contextlib

import torch

from notellm.model.prompt import IGNORE_INDEX


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_bf16(setting: str, device: torch.device, *, training: bool = False) -> bool:
    """'on', 'off', or 'auto': on for a CUDA device that supports bf16; on the CPU, on for training where
    the CPU computes bf16 in hardware (AVX512-BF16 or AMX), off for embedding, so that a note's vector does
    not depend on the batch it was embedded in (bf16 rounding does). Weights stay float32 either way."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return training and device.type == "cpu" and cpu_has_native_bf16()
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
