"""The trainer's one door to vladata: stores, window loaders, the data spec, action units.

Everything the trainer knows about stores comes through here: ``vladata.dataset.open`` for the
store, ``Dataset.windows(...).loader(...)`` for batches (the batch format is vladata's: see
``vladata.loading.windows.WindowDataset``), ``vladata.normalize`` to put actions back into the
dataset's units and ``vladata.tokenize.ActionTokenizer`` for the token layout of discrete heads.
Windows come with their low-dimensional observations normalised by vladata (``observation.state``
with the store's mean/std: :data:`OBSERVATION_MODE`); the :class:`DataSpec` records the
:class:`~vladata.normalization.ObservationNormalizer` used, and checkpoints save the spec.

Mixtures (``data.mixture``, ``vladata.loading.mixture.Mixture``): :func:`open_stores` opens every store,
:func:`train_windows` puts them under one index, :func:`spec_from_stores` checks that each can feed
the one policy (:func:`check_compatible` plus the image shapes) and returns the FIRST store's spec.
Actions come normalised with each store's own statistics (the Mixture reads each store's
``action.norm``), and so do observations (the Mixture normalises each store's rows with that
store's normaliser, in its workers): the trainer sees ``(s - mean_j) / std_j`` for store ``j``
and holds no remapping of its own. Every store's normaliser is kept in
``spec.extra["mixture"][j]["observation_norm"]``. Validation
(:func:`val_sets`) runs on each store's validation split, in that store's units: the first store
logs ``val/...`` (so ``eval.best_metric`` keeps its meaning), store ``j >= 1`` logs ``val<j>/...``;
a store without the split is skipped.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vladata.dataset import open as open_dataset
from vladata.errors import ConfigError, StatsError, StoreError
from vladata.normalization import OBSERVATION_MODE, Normalization, denormalize, normalize
from vladata.store.layout import ACTION, IMAGE_PREFIX, STATE
from vladata.tokenize import ActionTokenizer
from vlatrain.config import Config, DataConfig
from vlatrain.spec import DataSpec



@dataclass
class ActionUnits:
    """Normalised actions <-> the dataset's units, and the mean action (the trivial baseline)."""

    to_units: Callable[[torch.Tensor], torch.Tensor]  # (..., A) normalised -> dataset units
    mean: torch.Tensor       # (A,) mean action of the statistics split, dataset units
    mean_norm: torch.Tensor  # (A,) the same, normalised (gripper -1/+1)


def open_store(path: str | None):
    """``vladata.dataset.open(path)`` with the config key named in the errors."""
    if not path:
        raise StoreError("data.path is not set: pass data.path=STORE (a store written by "
                         "`vladata convert`)")
    return open_dataset(path)


def open_stores(cfg: DataConfig) -> list[tuple]:
    """``[(Dataset, weight)]``: the one store of ``data.path`` or the stores of ``data.mixture``."""
    if cfg.path is not None and cfg.mixture is not None:
        raise ConfigError(["data.path: set either data.path (one store) or data.mixture "
                           "(several), not both"])
    if cfg.path is None and cfg.mixture is None:
        raise ConfigError(["data.path is not set: pass data.path=STORE (a store written by "
                           "`vladata convert`) or data.mixture=[{path: A, weight: 1.0}, ...]"])
    if cfg.mixture is None:
        return [(open_store(cfg.path), 1.0)]
    return [(open_dataset(p), w) for p, w in cfg.stores()]


def train_windows(stores: list[tuple], cfg: DataConfig):
    """The training windows: the store's ``WindowDataset``, or a ``Mixture`` of all stores."""
    if len(stores) == 1 and cfg.mixture is None:
        return windows(stores[0][0], cfg, cfg.train_split)
    check_stores(stores, cfg)  # before the Mixture: its errors do not speak of the policy
    from vladata.loading.mixture import Mixture
    return Mixture([ds for ds, _ in stores], weights=[w for _, w in stores], balance=cfg.balance,
                   history=cfg.history, chunk=cfg.chunk, cameras=cfg.cameras,
                   split=cfg.train_split, over=cfg.over, normalize_observations=OBSERVATION_MODE)


def spec_from_stores(stores: list[tuple], cfg: DataConfig, win=None) -> DataSpec:
    """The first store's :class:`DataSpec`, after checking that every store matches it.

    A mixture's spec also lists each store (path, weight, share, action normalisation,
    observation normalisation) in ``extra["mixture"]``; a policy deployed on store ``j``
    normalises its observations with ``observation_norm`` of row ``j``.
    """
    if cfg.mixture is None:
        return spec_from_store(stores[0][0], cfg, win)
    specs = check_stores(stores, cfg, win.parts)
    spec = specs[0]
    rows = [{"path": ds.path, "weight": w, "probability": q, "windows": n,
             "normalization": ds.info["normalization"], "observation_norm": s.observation_norm}
            for (ds, w), s, q, n in zip(stores, specs, win.probabilities, win.sizes)]
    return dataclasses.replace(spec, extra={**spec.extra, "mixture": rows, "balance": win.balance})


def check_stores(stores: list[tuple], cfg: DataConfig, parts=None) -> list[DataSpec]:
    """Each store's spec; raise naming the first store that cannot feed the first one's policy.

    Same cameras with the same image shapes, action dims, gripper dims, state dims (after
    ``data.state_dims``), language width and token layout.
    """
    parts = parts if parts is not None else [None] * len(stores)
    ds0 = stores[0][0]
    specs = [spec_from_store(ds0, cfg, parts[0])]
    for (ds, _), p in zip(stores[1:], parts[1:]):
        s = spec_from_store(ds, cfg, p)
        check_compatible(s, specs[0], ds.path, what=f"the first store's ({ds0.path})")
        if s.image_shapes != specs[0].image_shapes:
            raise StoreError(f"{ds.path}: this store does not match the first store's "
                             f"({ds0.path}) data: image_shapes: store {s.image_shapes!r}, first "
                             f"store {specs[0].image_shapes!r}")
        specs.append(s)
    return specs


def windows(ds, cfg: DataConfig, split: str, observation_norm=OBSERVATION_MODE):
    """The store's windows as ``cfg`` cuts them, observations normalised by ``observation_norm``
    (a mode: the store's own statistics; or the :class:`ObservationNormalizer` of a checkpoint).

    With ``data.val_fraction``, ``split`` = ``data.val_split`` means the held-out episodes of
    ``data.train_split`` and ``data.train_split`` the rest (:func:`held_out`)."""
    episodes = None
    if cfg.val_fraction is not None and split in (cfg.train_split, cfg.val_split):
        train, val = held_out(ds, cfg)
        episodes = val if split == cfg.val_split else train
        split = cfg.train_split
    return ds.windows(history=cfg.history, chunk=cfg.chunk, cameras=cfg.cameras, split=split,
                      over=cfg.over, normalize_observations=observation_norm,
                      fast_tokens=cfg.action_tokens == "fast", episodes=episodes,
                      extra_keys=[t["key"] for t in aux_targets(ds, cfg)])


def held_out(ds, cfg: DataConfig) -> tuple[list[int], list[int]]:
    """(training, validation) episode indices of ``data.train_split`` under ``data.val_fraction``.

    ``round(fraction * n)`` episodes (at least 1, leaving at least 1 to train on) are held out,
    picked by a hash of the episode index: the same episodes for the same store whatever the
    seed, the worker count or the order the store was written in.
    """
    eps = [i for i, s in enumerate(ds.episodes["split"].to_list()) if s == cfg.train_split]
    if len(eps) < 2:
        raise StoreError(f"{ds.path}: data.val_fraction needs at least 2 episodes in split "
                         f"{cfg.train_split!r} (one to train on, one to validate on); it has "
                         f"{len(eps)}")
    n_val = min(max(1, round(cfg.val_fraction * len(eps))), len(eps) - 1)
    order = sorted(eps, key=lambda i: (zlib.crc32(str(i).encode()), i))
    val = sorted(order[:n_val])
    return [i for i in eps if i not in set(val)], val


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
    state_dim, index = 0, ()
    if STATE in feats:
        stored = int(feats[STATE]["shape"][0])
        index = tuple(range(stored)) if cfg.state_dims is None else tuple(cfg.state_dims)
        if max(index) >= stored:
            raise StoreError(f"{ds.path}: data.state_dims {list(index)} asks for dims beyond the "
                             f"{stored} of {STATE!r} ({feats[STATE].get('names')})")
        if win.observation_norm is None or STATE not in win.observation_norm.keys:
            raise StoreError(f"{ds.path}: the windows do not normalise {STATE!r}")
        state_dim = len(index)
        index = () if cfg.state_dims is None else index
    elif cfg.state_dims is not None:
        raise StoreError(f"{ds.path}: data.state_dims is set but the store has no {STATE!r}")
    act = feats.get(ACTION)
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
    norm = win.observation_norm
    aux = aux_targets(ds, cfg)
    unnormalised = [t["key"] for t in aux if norm is None or t["key"] not in norm.keys]
    if unnormalised:
        raise StoreError(f"{ds.path}: the windows do not normalise {unnormalised}")
    fast = getattr(win, "fast", None)
    tokens = {"action_tokens": cfg.action_tokens, **({"fast": fast.to_json()} if fast else {})}
    extra = {"source": ds.info.get("source"), "tokenizer": tok,
             "normalization": ds.info["normalization"], **deployment_facts(ds, win), **tokens,
             **({"aux_targets": aux} if aux else {})}
    return DataSpec(cameras=cams, image_shapes=shapes, state_dim=state_dim, action_dim=a_dim,
                    action_names=names, gripper_dims=grip,
                    language_dim=int(win.embeddings.shape[1]), history=cfg.history,
                    chunk=cfg.chunk, token_ids=token_ids, bin_centers=centres, state_index=index,
                    extra=extra,
                    observation_norm={} if norm is None else norm.to_dict())


def aux_targets(ds, cfg: DataConfig) -> list[dict]:
    """``data.aux_targets`` checked against the store: ``[{key, dims, names, weight}]`` with the
    dims resolved (``DataSpec.extra["aux_targets"]``; the policy sizes its auxiliary head by it).

    A target must be a float vector feature of the store, and its dims must exist."""
    feats, out = ds.info["features"], []
    for t in cfg.aux_targets or []:
        f = feats.get(t.key)
        if f is None:
            raise StoreError(f"{ds.path}: data.aux_targets names {t.key!r}, which the store does "
                             f"not have (features: {sorted(feats)}); re-collect the store with "
                             f"it, or train without auxiliary targets (data.aux_targets=null)")
        if (f.get("kind", "lowdim") != "lowdim" or len(f["shape"]) != 1
                or not np.issubdtype(np.dtype(f["dtype"]), np.floating)):
            raise StoreError(f"{ds.path}: data.aux_targets {t.key!r} must be a float vector "
                             f"feature (D,); it is {f['dtype']} {list(f['shape'])}")
        width = int(f["shape"][0])
        dims = list(range(width)) if t.dims is None else list(t.dims)
        if max(dims) >= width:
            raise StoreError(f"{ds.path}: data.aux_targets {t.key!r} dims {dims} go beyond its "
                             f"{width} dims ({f.get('names')})")
        names = list(f.get("names") or (f"{t.key}[{i}]" for i in range(width)))
        out.append({"key": t.key, "dims": dims, "names": [names[i] for i in dims],
                    "weight": float(t.weight)})
    return out


def deployment_facts(ds, win) -> dict:
    """What a policy runtime needs of the store beyond the spec's shapes (``DataSpec.extra``):

    - ``action_stats``: the action statistics ``action.norm`` was made with (only those the
      normalisation uses), to put predictions back into the dataset's units;
    - ``features``: the action and state feature descriptions (names, units);
    - ``language``: ``{"instructions": [...], "embeddings": [[...]]}``, the stored sentence
      embedding of every distinct instruction (when the store has embeddings): a model conditioned
      on ``language.embedding`` looks a live instruction up here.
    """
    norm = Normalization.from_dict(ds.info["normalization"])
    stats = ds.stats.get(ACTION) or {}
    facts = {"action_stats": {k: np.asarray(stats[k], np.float64).ravel().tolist()
                              for k in norm.required_stats() if k in stats},
             "features": {k: ds.info["features"][k] for k in (ACTION, STATE)
                          if k in ds.info["features"]}}
    if win.embeddings.shape[1]:
        table: dict[str, list[float]] = {}
        for text, row in zip(win.instructions, win.embeddings):
            if text and text not in table and np.any(row):
                table[text] = row.astype(np.float32).tolist()
        facts["language"] = {"instructions": list(table), "embeddings": list(table.values())}
    return facts


def check_compatible(spec: DataSpec, trained: DataSpec, path: str, what: str = "the policy's"
                     ) -> None:
    """Raise if a store cannot feed a policy built for ``trained`` (``what`` names ``trained``)."""
    who = "policy" if what == "the policy's" else "first store"
    diffs = [f"{k}: store {getattr(spec, k)!r}, {who} {getattr(trained, k)!r}"
             for k in ("cameras", "state_dim", "state_index", "action_dim", "gripper_dims", "language_dim")
             if getattr(spec, k) != getattr(trained, k)]
    if trained.token_ids and spec.token_ids != trained.token_ids:
        diffs.append(f"token layout: the store's tokenizer differs from {what}")
    if trained.extra.get("fast") and spec.extra.get("fast") != trained.extra["fast"]:
        diffs.append(f"FAST tokens: the store's FAST tokenizer differs from {what}")
    if diffs:
        raise StoreError(f"{path}: this store does not match {what} data: " + "; ".join(diffs))


def action_units(ds, device: torch.device) -> ActionUnits:
    """Denormalisation with the store's statistics and the mean-action baseline."""
    stats, norm = ds.stats[ACTION], Normalization.from_dict(ds.info["normalization"])
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
    """Shuffled, rank-aware, resumable training batches (``state_dict``/``load_state_dict``).

    ``win`` may be a ``Mixture`` (:func:`train_windows`; ``ds`` is then unused): its batches
    follow the weighted draw and carry ``dataset_index``; the two loaders take the same arguments.
    """
    win = win if win is not None else windows(ds, cfg.data, cfg.data.train_split)
    per_rank = len(win) // world_size
    if per_rank < cfg.data.batch_size:
        where = ds.path if cfg.data.mixture is None else "the mixture"
        raise StoreError(f"{where}: split {cfg.data.train_split!r} has {len(win)} windows, "
                         f"{per_rank} per process: fewer than one batch of {cfg.data.batch_size}; "
                         f"lower data.batch_size")
    return win.loader(batch_size=cfg.data.batch_size, seed=cfg.train.seed,
                      num_workers=cfg.data.num_workers, rank=rank, world_size=world_size,
                      drop_last=True, pin_memory=pin_memory)


def val_loader(ds, cfg: Config, *, pin_memory: bool = False, observation_norm=OBSERVATION_MODE):
    """Validation batches in store order (one process, no workers), restartable with ``restart``;
    ``observation_norm`` as :func:`windows` takes it."""
    win = windows(ds, cfg.data, cfg.data.val_split, observation_norm)
    loader = win.loader(batch_size=cfg.eval.batch_size, shuffle=False, seed=0, num_workers=0,
                        drop_last=False, pin_memory=pin_memory)
    start = loader.state_dict()
    return loader, lambda: loader.load_state_dict(start)


@dataclass
class ValSet:
    """One store's validation: metric prefix, loader, its restart and the store's units."""

    prefix: str          # "val" for the first store, "val<j>" for store j
    path: str
    loader: object
    restart: Callable[[], None]
    units: ActionUnits
    windows: int = 0     # validation windows


def val_sets(stores: list[tuple], cfg: Config, device: torch.device, *, pin_memory: bool = False
             ) -> tuple[list[ValSet], list[str]]:
    """Validation of each store (see the module) and messages naming the stores skipped."""
    sets, skipped = [], []
    for j, (ds, _) in enumerate(stores):
        if len(stores) > 1 and cfg.data.val_split not in set(ds.episodes["split"].to_list()):
            skipped.append(f"{ds.path}: no {cfg.data.val_split!r} split, not validated")
            continue
        loader, restart = val_loader(ds, cfg, pin_memory=pin_memory)
        sets.append(ValSet("val" if j == 0 else f"val{j}", ds.path, loader, restart,
                           action_units(ds, device),
                           len(windows(ds, cfg.data, cfg.data.val_split))))
    if not sets:
        raise StoreError(f"no store of the mixture has a {cfg.data.val_split!r} split to "
                         f"validate on; set data.val_split")
    return sets, skipped


def prefixed(metrics: dict, prefix: str) -> dict:
    """``val/...`` metrics renamed to ``<prefix>/...``."""
    if prefix == "val":
        return metrics
    return {prefix + k[3:] if k.startswith("val/") else k: v for k, v in metrics.items()}
