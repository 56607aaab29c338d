"""The evaluation recipe: a checkpoint and a store -> validation metrics vs the mean-action baseline.

The windows' observations are normalised as the checkpoint records: with the normaliser the
policy was trained with (``spec.observation_norm``); a checkpoint trained on a mixture
(``data.mixture``) is evaluated on one store at a time, with that store's own action and
observation statistics, as it was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlatrain import checkpoint, data, distributed, preflight
from vlatrain.augment import BatchPreparer
from vlatrain.config import Config, ConfigError
from vlatrain.errors import CheckpointError
from vladata.normalize import OBSERVATION_MODE
from vlatrain.evaluate import evaluate
from vlatrain.losses import make_loss
from vlatrain.model import build_policy
from vlatrain.precision import autocast_for
from vlatrain.spec import DataSpec


def evaluate_checkpoint(path: str | Path, data_path: str, *, split: str | None = None,
                        batches: int | None = None, batch_size: int | None = None,
                        device: str = "auto") -> tuple[dict, DataSpec]:
    """Evaluate the policy in checkpoint ``path`` on ``split`` (default: the run's
    ``data.val_split``) of the store ``data_path``, over ``batches`` batches (default: all)."""
    ckpt = checkpoint.load(path)
    overrides = {"data.path": str(data_path), "data.mixture": "null", "data.balance": "false",
                 "train.device": device}
    if split is not None:
        overrides["data.val_split"] = split
        overrides["data.val_fraction"] = "null"  # a named split, not the run's held-out episodes
    if batch_size is not None:
        overrides["eval.batch_size"] = str(batch_size)
    try:
        cfg = Config.from_dict(ckpt["config"], overrides)
    except ConfigError as e:
        raise CheckpointError(f"{path}: key 'config' (with this command's options) is not a "
                              "valid config:\n" + "\n".join(f"  - {m}" for m in e.errors)) from None
    cfg.eval.batches = batches
    dev = distributed.pick_device(device)
    trained = checkpoint.read_spec(ckpt, path)
    ds = data.open_store(cfg.data.path)
    preflight.check_eval(ds, cfg, trained)  # every mismatch at once, before any window is cut
    # a mixture-trained policy saw each store normalised with that store's own statistics
    obs_norm = OBSERVATION_MODE if "mixture" in trained.extra else trained.observation_normalizer()
    win = data.windows(ds, cfg.data, cfg.data.val_split, obs_norm)
    here = data.spec_from_store(ds, cfg.data, win)
    data.check_compatible(here, trained, ds.path)
    policy = build_policy(cfg.model, trained).to(dev)
    checkpoint.load_weights(policy, ckpt["model"], path)
    prep = BatchPreparer(trained, {c: policy.backbone.image_spec(c) for c in trained.cameras},
                         cfg.data.augment, dev, discrete=policy.discrete,
                         use_state=cfg.model.use_state,
                         sequence_head=policy.head if policy.autoregressive else None,
                         teacher_bins=getattr(policy.backbone, "autoregressive", False))
    loader, _ = data.val_loader(ds, cfg, pin_memory=dev.type == "cuda", observation_norm=obs_norm)
    units = data.action_units(ds, dev)
    with torch.no_grad():
        metrics = evaluate(policy, loader, prep, make_loss(cfg, policy, dev),
                           to_units=units.to_units, mean_action=units.mean,
                           mean_action_norm=units.mean_norm, max_batches=batches,
                           autocast=autocast_for(cfg.train.precision, dev))
    metrics["step"] = int(ckpt["step"])
    return metrics, trained
