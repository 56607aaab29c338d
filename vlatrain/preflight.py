"""Before step 1: can the stores feed what the config (or a checkpoint) asks for?

``vlatrain run`` and ``vlatrain eval`` call these on the opened stores before building windows,
a policy or a loader, so a store lacking a camera, state dimensions, a split, statistics, the
token layout or windows enough for one batch gives ONE :class:`StoreMismatchError` listing every mismatch of every store, each
naming the store and the config key -- not a ``KeyError`` from deep inside the loader, then the
next mismatch on the next attempt.
"""

from __future__ import annotations

from vladata.errors import VladataError
from vladata.windows import Ranges
from vlatrain.data import held_out
from vlatrain.errors import StoreMismatchError

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


def check_run(stores: list[tuple], cfg, world_size: int = 1) -> None:
    """Raise if any store of ``[(Dataset, weight)]`` cannot feed training as ``cfg`` says."""
    errors = []
    for ds, _ in stores:
        errors += store_errors(ds, cfg, splits={"data.train_split": cfg.data.train_split},
                               cameras=cfg.data.cameras)
    val = cfg.data.val_split
    having = [ds.path for ds, _ in stores if val in _splits(ds)]
    if cfg.data.val_fraction is None and len(stores) == 1 and not having:
        errors += [e + "; or hold out episodes with data.val_fraction=0.1"
                   for e in _split_errors(stores[0][0], {"data.val_split": val})]
    elif cfg.data.val_fraction is None and not having:
        errors.append(f"data.val_split: no store of the mixture has a {val!r} split to validate "
                      f"on (splits: {', '.join(f'{ds.path}: {sorted(_splits(ds))}' for ds, _ in stores)})")
    errors += window_errors(stores, cfg, world_size)
    if errors:
        raise StoreMismatchError(errors)


def window_errors(stores: list[tuple], cfg, world_size: int = 1) -> list[str]:
    """Too few training windows for one batch per process, or no validation window (splits a
    store lacks are reported by :func:`check_run` and not counted here)."""
    d = cfg.data
    feeding = [ds for ds, _ in stores if d.train_split in _splits(ds)]
    if not feeding:
        return []
    train_eps = val_eps = None
    if d.val_fraction is not None:
        try:
            train_eps, val_eps = held_out(feeding[0], d)
        except VladataError as e:
            return [f"data.val_fraction: {e}"]
    n_train = sum(window_count(ds, d, d.train_split, train_eps) for ds in feeding)
    hint = ""
    if d.over == "segments" and any(ds.segments.height == 0 for ds, _ in stores):
        hint = " (a store has no language segments: set data.over=episodes)"
    errors = []
    if n_train // world_size < d.batch_size:
        errors.append(f"data.batch_size: split {d.train_split!r} has {n_train} training windows, "
                      f"{n_train // world_size} per process: fewer than one batch of "
                      f"{d.batch_size}; lower data.batch_size{hint}")
    if d.val_fraction is not None:
        where, n_val = "the held-out episodes", window_count(feeding[0], d, d.train_split, val_eps)
    else:
        having = [ds for ds, _ in stores if d.val_split in _splits(ds)]
        where = f"split {d.val_split!r}"
        n_val = window_count(having[0], d, d.val_split) if having else None
    if n_val == 0:
        errors.append(f"data.val_split: {where} give no validation window{hint}")
    return errors


def window_count(ds, d, split: str, episodes=None) -> int:
    """How many windows ``split`` (and ``episodes``) of ``ds`` gives as ``d`` (DataConfig) cuts them."""
    eps, seg = ds.episodes, ds.segments
    return len(Ranges(eps["start"].to_numpy(), eps["length"].to_numpy(), eps["split"].to_list(),
                      seg["episode_index"].to_numpy(), seg["start"].to_numpy(),
                      seg["end"].to_numpy(), split=split, over=d.over, min_history=1,
                      where=ds.path, episodes=episodes))


def check_eval(ds, cfg, trained) -> None:
    """Raise if the store ``ds`` cannot feed the policy built for the DataSpec ``trained``."""
    split = cfg.data.train_split if cfg.data.val_fraction else cfg.data.val_split
    errors = store_errors(ds, cfg, splits={"--split / data.val_split": split},
                          cameras=list(trained.cameras))
    feats = ds.info["features"]
    if trained.state_dim and STATE_KEY in feats:
        stored = int(feats[STATE_KEY]["shape"][0])
        need = (max(trained.state_index) + 1) if trained.state_index else trained.state_dim
        if (stored < need) if trained.state_index else (stored != need):
            errors.append(f"{ds.path}: {STATE_KEY!r} has {stored} dims, the policy was trained "
                          f"on {trained.state_dim}" + (f" (dims {list(trained.state_index)})"
                                                        if trained.state_index else ""))
    elif trained.state_dim and STATE_KEY not in feats:
        errors.append(f"{ds.path}: no {STATE_KEY!r}; the policy was trained on "
                      f"{trained.state_dim} state dims")
    if "action" in feats and int(feats["action"]["shape"][0]) != trained.action_dim:
        errors.append(f"{ds.path}: actions have {feats['action']['shape'][0]} dims, the policy "
                      f"predicts {trained.action_dim}")
    if errors:
        raise StoreMismatchError(errors)


def store_errors(ds, cfg, *, splits: dict[str, str], cameras) -> list[str]:
    """Every way one store falls short of ``cfg`` (``splits``: config key -> split it needs)."""
    feats, path = ds.info["features"], ds.path
    errors = _split_errors(ds, splits)
    images = [k for k, v in feats.items() if v.get("kind") == "image"]
    names = [k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k for k in images]
    picked = images if cameras is None else []
    for cam in cameras or ():
        key = cam if cam in feats else IMAGE_PREFIX + cam
        if key in images:
            picked.append(key)
        else:
            errors.append(f"data.cameras: {path} has no camera {cam!r} (cameras: {names})")
    for key in picked:
        shape = tuple(feats[key]["shape"])
        if len(shape) != 3 or shape[2] != 3:
            errors.append(f"data.cameras: {path} camera {key[len(IMAGE_PREFIX):]!r} is {shape}, "
                          "not RGB (H, W, 3): pick RGB cameras with data.cameras=[...]")
    dims = cfg.data.state_dims
    if STATE_KEY in feats:
        stored = int(feats[STATE_KEY]["shape"][0])
        beyond = [i for i in dims or () if i >= stored]
        if beyond:
            errors.append(f"data.state_dims: {path} {STATE_KEY!r} has {stored} dims "
                          f"({feats[STATE_KEY].get('names')}); no dims {beyond}")
        st = ds.stats.get(STATE_KEY) or {}
        if cfg.model.use_state and not {"mean", "std"} <= set(st):
            errors.append(f"{path}: no mean/std statistics of {STATE_KEY!r}; run "
                          f"`vladata stats {path}`")
    elif dims is not None:
        errors.append(f"data.state_dims: {path} has no {STATE_KEY!r}")
    if "action" not in feats or "normalization" not in ds.info:
        errors.append(f"{path}: no normalised actions (info['normalization']); run "
                      f"`vladata stats {path}`")
    if cfg.model.head in ("discrete", "lm") and not ds.info.get("tokenizer"):
        errors.append(f"model.head: {cfg.model.head} needs the store's action tokenizer "
                      f"(info['tokenizer']); {path} records none")
    if (cfg.model.head == "autoregressive" and cfg.data.action_tokens == "bins"
            and not ds.info.get("tokenizer")):
        errors.append(f"data.action_tokens: bins need the store's action tokenizer "
                      f"(info['tokenizer']); {path} records none")
    if cfg.data.action_tokens == "fast":
        from vladata.fast import load_settings
        fast = load_settings(path)
        if fast is None:
            errors.append(f"data.action_tokens: {path} has no FAST tokenizer; fit one with "
                          f"`vladata stats {path} --fast --fast-chunk {cfg.data.chunk}`")
        elif fast.chunk != cfg.data.chunk:
            errors.append(f"data.chunk: {cfg.data.chunk}, but the FAST tokenizer of {path} encodes "
                          f"{fast.chunk}-step chunks (refit with `vladata stats {path} --fast "
                          f"--fast-chunk {cfg.data.chunk}`)")
    if cfg.model.backbone == "tiny":  # what the embedded backbone needs (vlatrain.model.backbone)
        if cfg.model.language == "embedding" and not _has_embeddings(ds):
            errors.append(f"model.language: 'embedding' but {path} has no language embeddings; "
                          "use model.language=text or none")
        if not picked and not (cfg.model.use_state and STATE_KEY in feats):
            errors.append(f"data.cameras: {path}: no camera and no state to feed the policy")
    return errors


def _splits(ds) -> set:
    return set(ds.episodes["split"].to_list())


def _split_errors(ds, splits: dict[str, str]) -> list[str]:
    have = sorted(_splits(ds))
    return [f"{key}: {ds.path}: no split {[split]}; the data has {have}"
            for key, split in splits.items() if split is not None and split not in have]


def _has_embeddings(ds) -> bool:
    seg = ds.segments
    return "embedding" in seg.columns and any(e is not None for e in seg["embedding"].to_list())
