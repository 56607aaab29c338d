"""Mixed precision: the autocast context of a run's ``train.precision`` on its device."""

from __future__ import annotations

import contextlib

import torch


def autocast_for(precision: str, device: torch.device):
    """A context factory: bf16/fp16 autocast on ``device``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


__all__ = ["autocast_for"]
