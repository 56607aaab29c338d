"""The training recipe: wire data, policy, optimiser, logging and checkpoints, then run the loop.

A run directory (``out``) receives::

    <out>/vlatrain-run.json    the marker that makes it a run directory (vlatrain.rundir)
    <out>/config.yaml          the resolved config, paths absolute (rewritten on resume)
    <out>/metrics.jsonl        one JSON object per log line (vlatrain.logging)
    <out>/tensorboard/         TensorBoard events
    <out>/checkpoints/         step_NNNNNNN.pt (last train.keep_last) and best.pt (vlatrain.checkpoint)

``run(cfg)`` starts a run; ``run(cfg, resume=True)`` continues the one in ``cfg.out`` from its
latest checkpoint (see :func:`resume_config`), exactly: the resumed run logs the losses the
uninterrupted one would have. ``data.mixture`` trains from several stores at once
(``vlatrain.data``, docs/mixtures.md); the loop does not know the difference.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from vlatrain import checkpoint, data, distributed, preflight, rundir, sim_eval
from vlatrain.augment import BatchPreparer
from vlatrain.config import Config, ConfigError, dump_config, load_config
from vlatrain.evaluate import evaluate, format_report
from vlatrain.language import LanguageAugmenter
from vlatrain.logging import NullLogger, RunLogger, run_header
from vlatrain.loop import TrainState, train
from vlatrain.losses import make_loss
from vlatrain.model import build_policy
from vlatrain.optim import build_optimizer
from vlatrain.precision import autocast_for
from vlatrain.prefetch import Prefetcher
from vlatrain.seeding import seed_everything

FROZEN_ON_RESUME = ("model", "data.history", "data.chunk", "data.cameras", "data.batch_size",
                    "data.train_split", "data.val_fraction", "data.over", "data.balance",
                    "train.seed", "train.grad_accum")


def resume_config(run_dir: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """The config of the run in ``run_dir`` with ``overrides`` (e.g. a larger ``train.steps``).

    Settings that shape the model or the sample order cannot change on resume; neither can
    ``out`` (the run directory is where the run continues).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError([f"{run_dir}: not a run directory (no config.yaml)"])
    if checkpoint.latest(run_dir / "checkpoints") is None:
        raise ConfigError([f"{run_dir}: has no checkpoint to resume from (checkpoints/step_*.pt)"])
    overrides = dict(overrides or {})
    base = load_config(run_dir / "config.yaml")
    cfg = load_config(run_dir / "config.yaml", overrides)
    errors = []
    if "out" in overrides:
        errors.append("out: cannot change on resume (the run continues in its own directory)")
    old, new = base.to_dict(), cfg.to_dict()
    for key in FROZEN_ON_RESUME:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            errors.append(f"{key}: cannot change on resume (was {a!r}, now {b!r})")
    if (base.data.mixture is None) != (cfg.data.mixture is None):
        errors.append("data.mixture: cannot switch between data.path and data.mixture on resume")
    elif cfg.data.mixture is not None:
        was, now = [w for _, w in base.data.stores()], [w for _, w in cfg.data.stores()]
        if was != now:  # the stores may move; their number and weights shape the sample order
            errors.append(f"data.mixture: the weights cannot change on resume (were {was}, "
                          f"now {now})")
    if errors:
        raise ConfigError(errors)
    cfg.out = os.path.abspath(run_dir)
    return cfg


def _val_name(cfg: Config) -> str:
    if cfg.data.val_fraction is not None:
        return f"({cfg.data.val_fraction:g} of {cfg.data.train_split!r} held out)"
    return repr(cfg.data.val_split)


@contextlib.contextmanager
def preserved_rng(gen: torch.Generator | None):
    """Run a block (evaluation, loader start-up) without disturbing any RNG of the training."""
    state = checkpoint.rng_state(gen)
    try:
        yield
    finally:
        checkpoint.set_rng_state(state, gen)


def run(cfg: Config, *, resume: bool = False) -> Path:
    """Train as ``cfg`` says; return the run directory."""
    info = distributed.init(cfg.train.device)
    try:
        return _run(cfg, info, resume)
    finally:
        distributed.shutdown(info)


def _run(cfg: Config, info: distributed.DistInfo, resume: bool) -> Path:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rundir.absolute_paths(cfg)  # the saved config resumes from any working directory
    dev, out = info.device, Path(cfg.out)
    if cfg.train.precision == "fp16" and dev.type != "cuda":
        raise ConfigError(["train.precision: fp16 needs a CUDA device; use bf16 on the CPU"])
    rundir.check_out(cfg, resume=resume)  # never writes into what is not a vlatrain run
    if resume and rundir.already_done(cfg):
        return out  # at or past train.steps: nothing is trained or written
    seed_everything(cfg.train.seed)
    stores = data.open_stores(cfg.data)  # [(store, weight)]: one, or a mixture's
    preflight.check_run(stores, cfg, info.world_size)  # every mismatch of config and stores at once, before step 1
    ds = stores[0][0]
    win = data.train_windows(stores, cfg.data)
    spec = data.spec_from_stores(stores, cfg.data, win)  # records the observation normalisation
    policy = build_policy(cfg.model, spec).to(dev)  # the same initial weights on every rank
    model = distributed.wrap(policy, info)
    torch.manual_seed(cfg.train.seed + 1_000_003 * info.rank)  # dropout differs across ranks
    gen = torch.Generator(dev)
    gen.manual_seed(cfg.train.seed * 7919 + info.rank + 1)
    optimizer = build_optimizer(policy, cfg.optim)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.train.precision == "fp16")
    pin = dev.type == "cuda"
    loader = Prefetcher(data.train_loader(ds, cfg, rank=info.rank, world_size=info.world_size,
                                          pin_memory=pin, win=win))
    image_specs = {c: policy.backbone.image_spec(c) for c in spec.cameras}
    prep = BatchPreparer(spec, image_specs, cfg.data.augment, dev, discrete=policy.discrete,
                         use_state=cfg.model.use_state,
                         sequence_head=policy.head if policy.autoregressive else None,
                         teacher_bins=getattr(policy.backbone, "autoregressive", False),
                         language=(LanguageAugmenter.from_stores(stores, cfg.data.language_augmentation)
                                   if cfg.data.language_augmentation > 0 else None))
    loss_fn = make_loss(cfg, policy, dev)
    st = TrainState(cfg=cfg, model=model, policy=policy, optimizer=optimizer, scaler=scaler,
                    loader=loader, prep=prep, loss_fn=loss_fn, gen=gen, dist=info,
                    logger=NullLogger(), autocast=autocast_for(cfg.train.precision, dev))
    best = checkpoint.restore(st, checkpoint.latest(out / "checkpoints")) if resume else {}
    ckpts = None
    if info.is_main:
        rundir.create(out)
        rundir.write_atomic(out / "config.yaml", dump_config(cfg))
        st.logger = RunLogger(out, total_steps=cfg.train.steps, start_step=st.step,
                              tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
        ckpts = checkpoint.CheckpointManager(out / "checkpoints", cfg.train.keep_last,
                                             cfg.eval.best_metric, best.get("value"),
                                             best.get("step"), mode=cfg.eval.mode())
        vals, skipped = data.val_sets(stores, cfg, dev, pin_memory=dev.type == "cuda")
        for text in skipped:
            st.logger.message(text)
        sizes = {f"train {cfg.data.train_split!r}": len(win)}
        sizes.update({f"{v.prefix} {v.path}" if len(vals) > 1 else
                      f"validation {_val_name(cfg)}": v.windows for v in vals})
        st.logger.message(run_header(
            device=dev, precision=cfg.train.precision,
            params=(sum(p.numel() for p in policy.parameters() if p.requires_grad),
                    sum(p.numel() for p in policy.parameters())),
            windows=sizes, batch_size=cfg.data.batch_size * info.world_size,
            batches_per_epoch=len(win) // (cfg.data.batch_size * info.world_size),
            steps=cfg.train.steps, run_dir=out, tensorboard=cfg.log.tensorboard))

        def evaluate_fn():  # each store's validation split, in its units (val/, val1/, ...)
            metrics = {}
            for v in vals:
                v.restart()
                with preserved_rng(gen):
                    metrics.update(data.prefixed(evaluate(
                        policy, v.loader, prep, loss_fn, to_units=v.units.to_units,
                        mean_action=v.units.mean, mean_action_norm=v.units.mean_norm,
                        max_batches=cfg.eval.batches, autocast=st.autocast), v.prefix))
            if cfg.eval.rollout.env is not None and sim_eval.due(cfg, st.step):
                with preserved_rng(gen):  # closed loop in a simulator (eval.rollout)
                    metrics.update(sim_eval.rollout_metrics(policy, spec, cfg, st.step, out,
                                                            st.logger))
            return metrics

        st.evaluate = evaluate_fn

    def save(step: int, metrics: dict | None) -> None:
        rng = distributed.gather(checkpoint.rng_state(gen), info)  # every rank takes part
        if ckpts is not None:
            ckpts.save(step, checkpoint.payload(st, spec, rng), metrics)

    st.save = save
    try:
        final = train(st)
        if final:
            st.logger.message("final validation: " + ", ".join(
                f"{k}={v:.4g}" for k, v in final.items() if k.count("/") == 1))
            st.logger.message(format_report(final, spec.action_names))
    finally:
        st.logger.close()
        loader.close()
    return out
