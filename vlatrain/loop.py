"""The training loop. Everything it needs is built by the recipe (``vlatrain.recipes.train``)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from vlatrain import distributed
from vlatrain.augment import BatchPreparer
from vlatrain.config import Config
from vlatrain.errors import DivergedError
from vlatrain.optim import lr_at, set_lr
from vlatrain.prefetch import forever


@dataclass
class TrainState:
    cfg: Config
    model: nn.Module                 # what runs forward/backward (DDP-wrapped when distributed)
    policy: nn.Module                # the bare policy: its parameters, evaluation, checkpoints
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: object                   # training batches; state_dict()/load_state_dict()
    prep: BatchPreparer              # batch -> (Observation, Targets) on the device
    loss_fn: Callable                # (head output, Targets) -> {"loss": ..., parts}
    gen: torch.Generator             # augmentation randomness
    dist: distributed.DistInfo
    logger: object                   # RunLogger on rank 0, NullLogger elsewhere
    evaluate: Callable[[], dict] | None = None      # rank 0: validation metrics
    save: Callable[[int, dict | None], None] | None = None  # all ranks: write a checkpoint
    autocast: Callable = contextlib.nullcontext
    step: int = 0
    pending: dict = field(default_factory=dict)  # loss parts summed since the last log line
    pending_steps: int = 0
    finite: list = field(default_factory=list)   # per step since the last log line: parts finite?


def train_step(st: TrainState, batches) -> tuple[dict, torch.Tensor, float, int]:
    """One optimiser step over ``grad_accum`` micro-batches drawn from ``batches``.

    Returns (loss parts averaged over the micro-batches, gradient norm before clipping, seconds
    spent waiting for batches, samples). A batch views the loader's reused buffers, so each is
    used up before the next is drawn.
    """
    st.optimizer.zero_grad(set_to_none=True)
    n, parts, wait, samples = st.cfg.train.grad_accum, {}, 0.0, 0
    for i in range(n):
        st.prep.release()                                 # earlier host buffers may be reused
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        samples += len(batch["index"])
        obs, tgt = st.prep(batch, train=True, gen=st.gen)  # images (B, h, 3, S, S) on the device
        with distributed.no_sync(st.model, skip=i < n - 1):
            with st.autocast():
                out = st.loss_fn(st.model(obs), tgt)      # head output (B, h, c, A[, K])
            st.scaler.scale(out["loss"] / n).backward()
        for k, v in out.items():
            parts[k] = parts.get(k, 0) + v.detach().float() / n
    st.scaler.unscale_(st.optimizer)                      # clip the true gradients
    clip = st.cfg.optim.grad_clip or float("inf")
    grad_norm = nn.utils.clip_grad_norm_(st.policy.parameters(), clip)
    st.scaler.step(st.optimizer)
    st.scaler.update()
    return parts, grad_norm, wait, samples


def train(st: TrainState) -> dict | None:
    """Run optimiser steps ``st.step + 1 .. train.steps``; log, evaluate and checkpoint on the way."""
    cfg, total = st.cfg, st.cfg.train.steps
    batches = forever(st.loader)
    wait, samples, tick, metrics = 0.0, 0, time.perf_counter(), None
    while st.step < total:
        lr = lr_at(st.step, cfg.optim, total)
        set_lr(st.optimizer, lr)
        parts, grad_norm, waited, n = train_step(st, batches)
        st.step += 1
        wait, samples = wait + waited, samples + n * st.dist.world_size
        for k, v in {**parts, "grad_norm": grad_norm}.items():
            st.pending[k] = st.pending.get(k, 0) + v.detach().float()
        st.pending_steps += 1
        st.finite.append(torch.isfinite(torch.stack(list(parts.values()))).all())  # no sync
        saving = st.step % cfg.train.checkpoint_every == 0 or st.step == total
        evaluating = saving or bool(cfg.eval.every and st.step % cfg.eval.every == 0)
        log_now = evaluating or st.step % cfg.log.every == 0  # the same steps on every rank
        if log_now:  # before evaluating or saving: a diverged run keeps its last good checkpoint
            names = list(st.pending)
            means = distributed.mean(torch.stack([st.pending[k] for k in names])
                                     / st.pending_steps, st.dist)
            check_finite(st, dict(zip(names, means.tolist())), parts)
        if evaluating and st.evaluate is not None:  # rank 0; its time stays out of samples/s
            paused = time.perf_counter()
            metrics = st.evaluate()
            tick += time.perf_counter() - paused
        if log_now:
            elapsed = time.perf_counter() - tick
            st.logger.log(st.step, {**dict(zip(names, means.tolist())), "lr": lr,
                                    "samples_per_s": samples / elapsed, "data_wait": wait / elapsed,
                                    **(metrics if evaluating and metrics else {})})
            st.pending, st.pending_steps, st.finite = {}, 0, []
            wait, samples, tick = 0.0, 0, time.perf_counter()
        if saving and st.save is not None:
            st.save(st.step, metrics)
            tick = time.perf_counter()
    return metrics


def check_finite(st: TrainState, means: dict, parts: dict) -> None:
    """Stop with :class:`DivergedError` if a loss part was NaN/inf at a step since the last line.

    ``means`` (averaged over ranks, so every rank stops together) name the parts; this rank's
    per-step flags name the first step it saw, else the range of steps.
    """
    bad = sorted(k for k, v in means.items() if k in parts and not math.isfinite(v))
    if not bad:
        return
    first = next((st.step - len(st.finite) + 1 + i for i, ok in enumerate(st.finite)
                  if not bool(ok)), None)
    when = (f"step {first}" if first is not None else
            f"a step in {st.step - st.pending_steps + 1}..{st.step} (on another rank)")
    raise DivergedError(f"the loss is not finite at {when}: {', '.join(bad)} = "
                        f"{', '.join(str(means[k]) for k in bad)}; stopped before saving a "
                        "checkpoint (lower optim.lr, raise optim.warmup_steps or check the data)")
