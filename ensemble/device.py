"""Pick the compute device and the autocast dtype it supports."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("ensemble")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' = the current accelerator if there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    accel = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accel or torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for fp32.

    fp16 is only used on accelerators; on the CPU it falls back to fp32 with a warning.
    """
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        log.warning("precision fp16 is not used on the CPU; running fp32")
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; running fp16")
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def limit_worker_threads(worker_id: int) -> None:
    """DataLoader workers decode and resize; one torch thread each avoids oversubscribing the cores."""
    torch.set_num_threads(1)
