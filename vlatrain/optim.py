"""AdamW and the learning-rate schedule, as a pure function of the step.

``lr_at(step, cfg, total_steps)`` gives the rate of optimiser step ``step`` (0-based): a linear
warmup from 0 over ``warmup_steps``, then

- ``constant``: ``lr``;
- ``cosine``: from ``lr`` down to ``lr * min_lr_ratio`` over ``decay_steps`` (default: the rest
  of the run), flat afterwards;
- ``step``: ``lr * gamma ** ((step - warmup) // step_size)``.

Weight decay applies to matrices and convolution kernels only (not to biases, norms or
positional/embedding vectors). A backbone may return its own parameter groups from
``param_groups()`` (a list of dicts with ``params`` and an ``lr_scale`` and/or ``weight_decay``),
e.g. a pretrained tower at a tenth of the rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlatrain.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (t // cfg.step_size)
    span = cfg.decay_steps or max(1, total_steps - cfg.warmup_steps)
    frac = min(1.0, t / span)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * frac))


def _split_decay(named) -> tuple[list, list]:
    """Matrices and kernels decay; biases, norm scales and positional embeddings do not."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            pos = name.rsplit(".", 1)[-1] in ("pos", "pos_embed", "position_embedding")
            (decay if p.ndim >= 2 and not pos else no_decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; each group carries an ``lr_scale``."""
    groups, seen = [], set()
    backbone = getattr(model, "backbone", None)
    custom = backbone.param_groups() if hasattr(backbone, "param_groups") else []
    for g in custom:
        ps = [p for p in g["params"] if p.requires_grad]
        seen.update(id(p) for p in ps)
        groups.append({"params": ps, "lr_scale": g.get("lr_scale", 1.0),
                       "weight_decay": g.get("weight_decay", cfg.weight_decay)})
    decay, no_decay = _split_decay((n, p) for n, p in model.named_parameters() if id(p) not in seen)
    groups += [{"params": decay, "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
               {"params": no_decay, "lr_scale": 1.0, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
