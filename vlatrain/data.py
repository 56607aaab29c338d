"""The trainer's one door to vladata: stores, window loaders, the data spec, action units.

Everything the trainer knows about stores comes through here: ``vladata.open`` for the store,
``Dataset.windows(...).loader(...)`` for batches (the batch format is vladata's: see
``vladata.windows.WindowDataset``), ``vladata.normalize`` to put actions back into the
dataset's units and ``vladata.tokenize.ActionTokenizer`` for the token layout of discrete heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import vladata
from vladata.errors import StatsError, StoreError
from vladata.normalize import Normalization, denormalize, normalize
from vladata.tokenize import ActionTokenizer
from vlatrain.config import Config, DataConfig
from vlatrain.spec import DataSpec

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


@dataclass
class ActionUnits:
    """Normalised actions <-> the dataset's units, and the mean action (the trivial baseline)."""

    to_units: Callable[[torch.Tensor], torch.Tensor]  # (..., A) normalised -> dataset units
    mean: torch.Tensor       # (A,) mean action of the statistics split, dataset units
    mean_norm: torch.Tensor  # (A,) the same, normalised (gripper -1/+1)


def open_store(path: str | None):
    """``vladata.open(path)`` with the config key named in the errors."""
    if not path:
        raise StoreError("data.path is not set: pass data.path=STORE (a store written by "
                         "`vladata convert`)")
    return vladata.open(path)


def windows(ds, cfg: DataConfig, split: str):
    return ds.windows(history=cfg.history, chunk=cfg.chunk, cameras=cfg.cameras, split=split,
                      over=cfg.over)


def spec_from_store(ds, cfg: DataConfig, win=None) -> DataSpec:
    """The :class:`DataSpec` of a store for windows cut as ``cfg`` says."""
    feats = ds.info["features"]
    win = win if win is not None else windows(ds, cfg, cfg.train_split)
    cams = tuple(k[len(IMAGE_PREFIX):] for k in win.cameras)
    shapes = {c: tuple(feats[IMAGE_PREFIX + c]["shape"]) for c in cams}
    bad = {c: s for c, s in shapes.items() if len(s) != 3 or s[2] != 3}
    if bad:
        raise StoreError(f"{ds.path}: cameras must be RGB (H, W, 3); got {bad} -- pick RGB "
                         f"cameras with data.cameras=[...]")
    state_dim, mean, std, index = 0, (), (), ()
    if STATE_KEY in feats:
        stored = int(feats[STATE_KEY]["shape"][0])
        index = tuple(range(stored)) if cfg.state_dims is None else tuple(cfg.state_dims)
        if max(index) >= stored:
            raise StoreError(f"{ds.path}: data.state_dims {list(index)} asks for dims beyond the "
                             f"{stored} of {STATE_KEY!r} ({feats[STATE_KEY].get('names')})")
        st = ds.stats.get(STATE_KEY)
        if st is None or "mean" not in st or "std" not in st:
            raise StatsError(f"{ds.path}: no mean/std statistics of {STATE_KEY!r}; run "
                             f"`vladata stats {ds.path}`")
        state_dim = len(index)
        mean = tuple(float(st["mean"][i]) for i in index)
        std = tuple(float(st["std"][i]) for i in index)
        index = () if cfg.state_dims is None else index
    elif cfg.state_dims is not None:
        raise StoreError(f"{ds.path}: data.state_dims is set but the store has no {STATE_KEY!r}")
    act = feats.get("action")
    if act is None or "normalization" not in ds.info:
        raise StatsError(f"{ds.path}: no normalised actions (info['normalization']); run "
                         f"`vladata stats {ds.path}`")
    a_dim = int(act["shape"][0])
    names = tuple(act.get("names") or (f"a{i}" for i in range(a_dim)))
    norm = Normalization.from_dict(ds.info["normalization"])
    grip = () if norm.gripper is None else (norm.gripper.dim % a_dim,)
    token_ids, centres, tok = (), (), ds.info.get("tokenizer")
    if tok is not None:
        t = ActionTokenizer.from_dataset(ds)
        token_ids = tuple(int(i) for i in t.id_of_bin(np.arange(t.bins)))
        centres = tuple(float(c) for c in t.centres())
    return DataSpec(cameras=cams, image_shapes=shapes, state_dim=state_dim, state_mean=mean,
                    state_std=std, action_dim=a_dim, action_names=names, gripper_dims=grip,
                    language_dim=int(win.embeddings.shape[1]), history=cfg.history,
                    chunk=cfg.chunk, token_ids=token_ids, bin_centers=centres, state_index=index,
                    extra={"source": ds.info.get("source"), "tokenizer": tok,
                           "normalization": ds.info["normalization"]})


def check_compatible(spec: DataSpec, trained: DataSpec, path: str) -> None:
    """Raise if a store cannot feed a policy built for ``trained``."""
    diffs = [f"{k}: store {getattr(spec, k)!r}, policy {getattr(trained, k)!r}"
             for k in ("cameras", "state_dim", "state_index", "action_dim", "gripper_dims", "language_dim")
             if getattr(spec, k) != getattr(trained, k)]
    if trained.token_ids and spec.token_ids != trained.token_ids:
        diffs.append("token layout: the store's tokenizer differs from the policy's")
    if diffs:
        raise StoreError(f"{path}: this store does not match the policy's data: " + "; ".join(diffs))


def action_units(ds, device: torch.device) -> ActionUnits:
    """Denormalisation with the store's statistics and the mean-action baseline."""
    stats, norm = ds.stats["action"], Normalization.from_dict(ds.info["normalization"])
    if "mean" not in stats:
        raise StatsError(f"{ds.path}: action statistics lack 'mean' (the baseline); run "
                         f"`vladata stats {ds.path}`")
    mean = np.asarray(stats["mean"], np.float32)

    def to_units(x: torch.Tensor) -> torch.Tensor:
        return denormalize(x, stats, norm)

    mean_norm = normalize(mean, stats, norm)
    return ActionUnits(to_units=to_units, mean=torch.as_tensor(mean, device=device),
                       mean_norm=torch.as_tensor(mean_norm, device=device))


def train_loader(ds, cfg: Config, *, rank: int, world_size: int, pin_memory: bool, win=None):
    """Shuffled, rank-aware, resumable training batches (``state_dict``/``load_state_dict``)."""
    win = win if win is not None else windows(ds, cfg.data, cfg.data.train_split)
    per_rank = len(win) // world_size
    if per_rank < cfg.data.batch_size:
        raise StoreError(f"{ds.path}: split {cfg.data.train_split!r} has {len(win)} windows, "
                         f"{per_rank} per process: fewer than one batch of {cfg.data.batch_size}; "
                         f"lower data.batch_size")
    return win.loader(batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.train.seed,
                      num_workers=cfg.data.num_workers, rank=rank, world_size=world_size,
                      drop_last=True, pin_memory=pin_memory)


def val_loader(ds, cfg: Config, *, pin_memory: bool = False):
    """Validation batches in store order (one process, no workers), restartable with ``restart``."""
    win = windows(ds, cfg.data, cfg.data.val_split)
    loader = win.loader(batch_size=cfg.eval.batch_size, shuffle=False, seed=0, num_workers=0,
                        drop_last=False, pin_memory=pin_memory)
    start = loader.state_dict()
    return loader, lambda: loader.load_state_dict(start)
