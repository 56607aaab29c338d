"""Statistics and the derived action arrays of a store (the last stage of conversion).

Conversion workers run the first statistics pass (:func:`new_accumulators`,
:func:`update_accumulators`) on the rows they write and save its state with each part.
:func:`finish` merges those states, runs the second, exact-quantile pass over the low-dim arrays
read back from the store (small next to the images), writes ``meta/stats.json``, then
``data/action.norm`` and ``data/action.tokens`` and records how they were made in the store
attributes. :func:`recompute` does both passes from a finished store (``vladata stats``).

Statistics cover the rows of the ``stats_split`` episodes (``train``, or ``all`` when the store
has no train split); NaN/inf anywhere in a low-dim float feature is an error that names the
feature, episode and frame. Whatever quantiles are asked for, q01 and q99
(:data:`REQUIRED_QUANTILES`) are always computed too: the action normalisation needs them.

Rewriting is transactional: everything is computed and validated in memory, the new derived
arrays are written aside (``meta/staging/``), and only then is the store changed, in a short
commit guarded by ``meta/restats.json`` (:data:`COMMIT_MARKER`): arrays renamed into ``data/``,
attributes, then ``meta/stats.json`` (atomically), then the marker removed. A run that fails or is
interrupted before the commit leaves the store as it was; one interrupted inside it leaves the
marker, and ``vladata.open`` refuses the store until ``vladata stats`` is rerun.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import zarr

import vladata.atomic as atomic
from vladata.episode import FeatureSpec
from vladata.errors import NonFiniteError, StatsError, StoreError
from vladata.normalization import GripperConvention, Normalization, normalize
from vladata.stats import (ImageStatsAccumulator, StatsAccumulator, locate_nonfinite,
                           stats_from_json, stats_to_json)
from vladata.stats.exact import parse_quantiles
from vladata.store import fs, layout, manifest
from vladata.tokenize import ActionTokenizer

NORM_KEY, TOKENS_KEY = layout.ACTION_NORM, layout.ACTION_TOKENS
REQUIRED_QUANTILES = (0.01, 0.99)  # q01/q99: the quantile normalisation of actions uses them
STAGING, COMMIT_MARKER = layout.STAGING, layout.RESTATS


# -- pass 1, in the workers --------------------------------------------------------------------

def new_accumulators(features: dict[str, FeatureSpec], stat_feats: list[str], *,
                     image_stats: bool = False) -> dict:
    accs = {n: StatsAccumulator(int(np.prod(features[n].shape)), name=n) for n in stat_feats}
    if image_stats:
        accs.update({n: ImageStatsAccumulator(channels=s.shape[-1])
                     for n, s in features.items() if s.kind == "image"})
    return accs


def check_finite(frames: dict[str, np.ndarray], stat_feats: list[str], job, row0: int) -> None:
    """Raise NonFiniteError naming feature, episode and frame of the first NaN/inf."""
    for name in stat_feats:
        x = frames[name]
        if np.isfinite(x).all():
            continue
        r = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
        _raise_located(name, row0 + r, job.starts, x[r])


def _raise_located(name: str, row: int, starts: np.ndarray, value) -> None:
    ep = int(np.searchsorted(starts, row, side="right")) - 1
    flat = np.asarray(value, np.float64).ravel()
    dim = int(np.argwhere(~np.isfinite(flat))[0][0])
    err = NonFiniteError(f"non-finite value {flat[dim]!r}", row=0, dim=dim)
    raise locate_nonfinite(err, feature=name, episode=ep, first_frame=row - int(starts[ep]))


def update_accumulators(accs: dict, frames: dict[str, np.ndarray], in_stats: np.ndarray) -> None:
    if not in_stats.any():
        return
    for name, acc in accs.items():
        x = frames[name][in_stats]
        acc.update(x if isinstance(acc, ImageStatsAccumulator) else x.reshape(len(x), -1))


def save_accumulators(path: Path, accs: dict) -> None:
    """Save the parts' pass-1 states; 2-d histograms (mostly empty buckets) are kept sparse."""
    arrays = {}
    for name, acc in accs.items():
        for k, v in acc.state_dict().items():
            if v.ndim == 2:
                flat = v.reshape(-1)
                nz = np.flatnonzero(flat)
                arrays[f"{name}/{k}@shape"] = np.asarray(v.shape, np.int64)
                arrays[f"{name}/{k}@index"] = nz
                arrays[f"{name}/{k}@value"] = flat[nz]
            else:
                arrays[f"{name}/{k}"] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())


def load_accumulators(path: Path) -> dict:
    src = io.BytesIO(fs.to_path(path).read_bytes()) if fs.is_remote(path) else path
    with np.load(src, allow_pickle=False) as z:
        grouped: dict[str, dict] = {}
        for key in z.files:
            name, _, k = key.rpartition("/")
            grouped.setdefault(name, {})[k] = z[key]
    out = {}
    for name, state in grouped.items():
        for k in [k[:-6] for k in state if k.endswith("@shape")]:
            shape, index, value = (state.pop(f"{k}@{x}") for x in ("shape", "index", "value"))
            dense = np.zeros(int(np.prod(shape)), value.dtype)
            dense[index] = value
            state[k] = dense.reshape(shape)
        kind = str(state["kind"])
        if kind == "pass1":
            out[name] = StatsAccumulator.from_state_dict(state, name=name)
        else:
            out[name] = ImageStatsAccumulator.from_state_dict(state)
    return out


# -- pass 2 and the derived arrays -------------------------------------------------------------

def finish(out: Path, features: dict[str, FeatureSpec], parts, starts: np.ndarray,
           lengths: np.ndarray, in_stats: np.ndarray, stats_split: str, quantiles,
           source_info: dict, tokenizer: ActionTokenizer | None = None) -> dict:
    """Merge the parts' statistics, finish them exactly, write stats.json and action arrays."""
    merged: dict = {}
    for k in range(len(parts)):
        for name, acc in load_accumulators(out / layout.PARTS /
                                           f"part-{k:05d}.stats.npz").items():
            merged[name] = acc if name not in merged else merged[name].merge(acc)
    return _finish(out, features, merged, _row_mask(starts, lengths, in_stats), stats_split,
                   quantiles, source_info, tokenizer=tokenizer)


def recompute(path: str | os.PathLike, quantiles=(0.01, 0.99),
              tokenizer: ActionTokenizer | None = None) -> dict:
    """Recompute a finished store's statistics (both passes) and rewrite the derived arrays.

    ``tokenizer`` replaces the recorded token layout; by default the store's own is kept.
    Refuses a store whose conversion is not complete; repairs one a previous run left
    half-committed.
    """
    out = fs.to_path(path)
    quantiles = with_required_quantiles(quantiles)
    if not (out / layout.MANIFEST).is_file():
        raise StoreError(f"{out}: not a complete store (no {layout.MANIFEST}); finish its "
                         "conversion first (`vladata convert ... --resume`)")
    problems = manifest.missing_data(out)
    if problems:  # zarr-python would read a missing chunk as zeros
        raise StoreError(f"{problems[0]}; run `vladata verify {out}`")
    root = zarr.open_group(fs.zarr_path(out), mode="r")
    attrs = dict(root.attrs["vlakit"])
    features = {k: FeatureSpec.from_dict(v) for k, v in attrs["features"].items()}
    eps = fs.read_parquet(out / layout.EPISODES)
    starts, lengths = eps["start"].to_numpy(), eps["length"].to_numpy()
    splits = eps["split"].to_list()
    stats_split = "train" if "train" in splits else "all"
    in_stats = np.asarray([stats_split == "all" or s == stats_split for s in splits])
    mask = _row_mask(starts, lengths, in_stats)
    merged = {}
    for name in stat_features(features):
        acc = StatsAccumulator(int(np.prod(features[name].shape)), name=name)
        for b, x in _blocks(root[f"{layout.DATA}/{name}"]):
            if not np.isfinite(x).all():
                r = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
                _raise_located(name, b + r, starts, x[r])
            acc.update(x[mask[b:b + len(x)]].reshape(-1, acc.dim))
        merged[name] = acc
    images = _old_image_stats(out)
    if tokenizer is None and attrs.get("tokenizer"):
        tokenizer = ActionTokenizer.from_dict(attrs["tokenizer"])
    stats = _finish(out, features, merged, mask, stats_split, quantiles,
                    attrs.get("source_info", {}), images=images, tokenizer=tokenizer)
    return stats


def _finish(out: Path, features, merged: dict, mask: np.ndarray, stats_split: str, quantiles,
            source_info: dict, images: dict | None = None,
            tokenizer: ActionTokenizer | None = None) -> dict:
    quantiles = with_required_quantiles(quantiles)
    root = zarr.open_group(fs.zarr_path(out), mode="r")
    stats: dict[str, dict[str, np.ndarray]] = {}
    image_stats = dict(images or {})
    for name, acc in merged.items():
        if not isinstance(acc, StatsAccumulator):
            image_stats[name] = acc.result()
            continue
        ref = acc.refiner(quantiles)
        for b, x in _blocks(root[f"{layout.DATA}/{name}"]):
            ref.update(x[mask[b:b + len(x)]].reshape(-1, acc.dim))
        stats[name] = ref.result()
    doc = stats_to_json(stats, split=stats_split, quantiles=quantiles,
                        images=image_stats or None)
    attrs = dict(root.attrs["vlakit"])
    attrs["stats_split"] = stats_split
    staged = []
    _clear_staging(out)
    action = features.get(layout.ACTION)
    try:
        if layout.ACTION in stats and action.kind == "lowdim" and len(action.shape) == 1:
            stage = zarr.open_group(fs.zarr_path(out / STAGING), mode="w-")
            norm, tok = write_action_arrays(root[layout.DATA][layout.ACTION], stage, action,
                                            stats[layout.ACTION], source_info,
                                            tokenizer or ActionTokenizer())
            attrs["normalization"], attrs["tokenizer"] = norm.to_dict(), tok.to_dict()
            attrs["features"] = {**attrs["features"], **_derived_feature_attrs(action)}
            staged = [NORM_KEY, TOKENS_KEY]
    except BaseException:  # nothing of the store was changed yet: leave it exactly as it was
        _clear_staging(out)
        raise
    _commit(out, staged, attrs, doc)
    return stats


def with_required_quantiles(quantiles) -> tuple[float, ...]:
    """``quantiles`` validated, plus :data:`REQUIRED_QUANTILES`, sorted (StatsError if invalid)."""
    try:
        return tuple(sorted(set(parse_quantiles(quantiles)) | set(REQUIRED_QUANTILES)))
    except ValueError as e:
        raise StatsError(f"quantiles: {e}") from None


def _commit(out: Path, staged: list[str], attrs: dict, doc: dict) -> None:
    """Swap the staged arrays, attributes and stats.json into the store (see module docstring)."""
    json.dumps([attrs, doc])  # anything not serialisable fails here, before the store changes
    atomic.write_json(out / COMMIT_MARKER, {"vlakit": "statistics commit in progress"})
    data = out / layout.DATA
    for name in staged:
        old = out / STAGING / f"{name}.old"
        if (data / name).exists():
            fs.move(data / name, old)
        fs.move(out / STAGING / name, data / name)
    group = json.loads((out / "zarr.json").read_text())  # the root group's metadata (Zarr v3)
    group.setdefault("attributes", {})["vlakit"] = attrs
    atomic.write_json(out / "zarr.json", group)  # zarr-python would rewrite it in place
    atomic.write_json(out / layout.STATS, doc)
    _clear_staging(out)
    if (out / layout.MANIFEST).exists():  # `vladata stats` on a complete store: list files anew
        manifest.refresh(out)
    (out / COMMIT_MARKER).unlink()


def _clear_staging(out: Path) -> None:
    if (out / STAGING).exists():
        fs.rmtree(out / STAGING)


def action_normalization(dim: int, source_info: dict) -> Normalization:
    """Quantile normalisation of every dimension but the gripper (last, for 7-d EEF actions).

    The gripper's convention is what the source records (``source_info["gripper"]``: "-1/1" or
    "0/1"); it is converted to -1 = closed / +1 = open, binarised at the midpoint or at
    ``source_info["gripper_threshold"]`` when the source records one. A source that records no gripper
    convention gets every dimension normalised.
    """
    convention = source_info.get("gripper")
    if not convention or convention == "unknown" or dim < 2:
        return Normalization()
    threshold = source_info.get("gripper_threshold")  # where open ends, if not the midpoint
    return Normalization.for_action(dim=dim, gripper=GripperConvention(
        source=convention, target="-1/1", dim=dim - 1,
        threshold=None if threshold is None else float(threshold)))


def write_action_arrays(src: zarr.Array, group: zarr.Group, spec: FeatureSpec, stats: dict,
                        source_info: dict, tok: ActionTokenizer):
    """Write ``action.norm`` and ``action.tokens`` of the actions ``src`` into ``group``."""
    dim = spec.shape[0]
    norm = action_normalization(dim, source_info)
    n = src.shape[0]
    store = {"codec": "raw", "chunk_frames": layout.BLOCK, "shard_frames": None}
    arr_n = layout.create_array(group, NORM_KEY, FeatureSpec("float32", (dim,)), n, store)
    arr_t = layout.create_array(group, TOKENS_KEY, FeatureSpec("int32", (dim,)), n, store)
    for b, x in _blocks(src):
        xn = normalize(x, stats, norm)
        arr_n[b:b + len(x)] = xn
        arr_t[b:b + len(x)] = tok.encode(xn).astype(np.int32)
    return norm, tok


def _derived_feature_attrs(action: FeatureSpec) -> dict:
    storage = {"codec": "raw", "chunk_frames": layout.BLOCK, "shard_frames": None}
    return {
        NORM_KEY: {**FeatureSpec("float32", action.shape, "lowdim", action.names,
                                 description="normalised action (see normalization)").to_dict(),
                   "storage": storage, "derived": True},
        TOKENS_KEY: {**FeatureSpec("int32", action.shape, "lowdim", action.names,
                                   description="token ids of action.norm (see tokenizer)").to_dict(),
                     "storage": storage, "derived": True},
    }


# -- helpers -----------------------------------------------------------------------------------

def stat_features(features: dict[str, FeatureSpec]) -> list[str]:
    return [n for n, s in features.items() if s.kind == "lowdim" and n not in (NORM_KEY, TOKENS_KEY)
            and np.issubdtype(np.dtype(s.dtype), np.floating)]


def _row_mask(starts: np.ndarray, lengths: np.ndarray, in_stats: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(in_stats, bool), np.asarray(lengths, np.int64))


def _blocks(arr: zarr.Array, rows: int = 16 * layout.BLOCK):
    for b in range(0, arr.shape[0], rows):
        yield b, np.asarray(arr[b:b + rows])


def _old_image_stats(out: Path) -> dict:
    p = out / layout.STATS
    if not p.exists():
        return {}
    return stats_from_json(json.loads(p.read_text()))[1].get("images") or {}


def load_stats(path: str | os.PathLike) -> tuple[dict, dict]:
    """``meta/stats.json`` of a store -> (stats, meta)."""
    p = fs.to_path(path) / layout.STATS
    if not p.exists():
        raise StatsError(f"{path}: the store has no meta/stats.json (run `vladata stats {path}`)")
    return stats_from_json(json.loads(p.read_text()))
