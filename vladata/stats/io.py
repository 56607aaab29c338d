"""``meta/stats.json`` (:func:`stats_to_json` / :func:`stats_from_json`, ``schemas/stats.schema.json``)::

    {"format_version": 1, "split": "train" | "all", "quantiles": [0.01, 0.99],
     "quantile_dtype": "float32",
     "features": {"action": {"count": [N, ...], "min": [...], "max": [...], "mean": [...],
                             "std": [...], "q01": [...], "q99": [...]}, ...},
     "images": {"observation.images.static": {"count": [...], "mean": [...], "std": [...]}},
     "extra": {...}}

float32 values are written as the float64 of the same value and float64 ones by ``repr``, so
both read back exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vladata.errors import StatsError
from vladata.jsonable import jsonable
from vladata.stats.exact import FORMAT_VERSION, SPLITS, parse_quantiles, quantile_key


_FLOAT64_KEYS = ("mean", "std")
_FIXED_KEYS = ("count", "min", "max", "mean", "std")


def _dtype_of(key: str, quantile_dtype: str) -> str:
    if key == "count":
        return "int64"
    if key in _FLOAT64_KEYS:
        return "float64"
    return quantile_dtype if key.startswith("q") else "float32"


def stats_to_json(stats: dict[str, dict[str, np.ndarray]], *, split: str,
                  quantiles: Sequence[float], extra: dict | None = None,
                  images: dict[str, dict[str, np.ndarray]] | None = None,
                  quantile_dtype: str = "float32") -> dict:
    """The ``meta/stats.json`` document (see the module docstring) of per-feature ``stats``.

    Every feature must hold count, min, max, mean, std and one key per quantile; ``extra``
    is kept under ``"extra"`` (numpy values become lists); ``images`` (camera ->
    ImageStatsAccumulator result) go under ``"images"``, where ``stats_from_json`` reads them back.
    """
    if split not in SPLITS:
        raise StatsError(f"statistics split must be one of {SPLITS}, got {split!r}")
    if quantile_dtype not in ("float32", "float64"):
        raise StatsError(f"quantile_dtype must be float32 or float64, got {quantile_dtype!r}")
    qs = parse_quantiles(quantiles)
    want = list(_FIXED_KEYS) + [quantile_key(q) for q in qs]
    features = {}
    for name, st in stats.items():
        missing = [k for k in want if k not in st]
        if missing:
            raise StatsError(f"statistics of feature {name!r} lack {missing}")
        feat = {}
        for k in want:
            a = np.asarray(st[k])
            dt = np.dtype(_dtype_of(k, quantile_dtype))
            if a.ndim != 1 or a.shape != np.asarray(st["count"]).shape:
                raise StatsError(f"statistics of feature {name!r}: {k!r} has shape {a.shape}, "
                                 f"expected {np.asarray(st['count']).shape}")
            if not np.array_equal(a.astype(dt), a) or not np.isfinite(a).all():
                raise StatsError(f"statistics of feature {name!r}: {k!r} = {a.tolist()} is not "
                                 f"exactly representable as finite {dt}")
            feat[k] = [int(v) for v in a] if k == "count" else [float(v) for v in a.astype(dt)]
        features[name] = feat
    doc = {"format_version": FORMAT_VERSION, "split": split, "quantiles": list(qs),
           "quantile_dtype": quantile_dtype, "features": features}
    if images:
        doc["images"] = {cam: {"count": [int(v) for v in st["count"]],
                               "mean": [float(v) for v in st["mean"]],
                               "std": [float(v) for v in st["std"]]} for cam, st in images.items()}
    if extra:
        doc["extra"] = jsonable(dict(extra))
    return doc


def stats_from_json(d: dict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read a ``meta/stats.json`` document: (per-feature arrays, meta).

    ``meta`` holds format_version, split, quantiles, quantile_dtype, images (camera -> arrays,
    possibly empty) and extra (possibly empty). Arrays have the dtypes :func:`stats_to_json` got.
    """
    if not isinstance(d, dict) or "format_version" not in d:
        raise StatsError("meta/stats.json: not a statistics document (no format_version)")
    if d["format_version"] != FORMAT_VERSION:
        raise StatsError(f"meta/stats.json: format_version {d['format_version']!r} is not one this "
                         f"vlakit reads ({FORMAT_VERSION}); upgrade vlakit or run `vladata stats`")
    try:
        qs = parse_quantiles(d["quantiles"])
        split, qdt = d["split"], d.get("quantile_dtype", "float32")
        feats = d["features"]
    except (KeyError, ValueError) as e:
        raise StatsError(f"meta/stats.json: {e}") from None
    if split not in SPLITS or qdt not in ("float32", "float64") or not isinstance(feats, dict):
        raise StatsError(f"meta/stats.json: split {split!r} / quantile_dtype {qdt!r} / features "
                         f"are not valid (split in {SPLITS}, dtype float32 or float64)")
    want = list(_FIXED_KEYS) + [quantile_key(q) for q in qs]
    stats = {}
    for name, st in feats.items():
        if not isinstance(st, dict) or sorted(st) != sorted(want):
            got = sorted(st) if isinstance(st, dict) else type(st).__name__
            raise StatsError(f"meta/stats.json: feature {name!r} has keys {got}, expected {want}")
        out = {}
        for k in want:
            dt = np.dtype(_dtype_of(k, qdt))
            try:
                src = np.asarray(st[k], dtype=np.float64 if dt.kind == "f" else np.int64)
            except (TypeError, ValueError):
                raise StatsError(f"meta/stats.json: feature {name!r}, key {k!r} is not a list of "
                                 f"numbers") from None
            a = src.astype(dt)
            if a.ndim != 1 or len(a) != len(st["count"]) or not np.array_equal(a, src):
                raise StatsError(f"meta/stats.json: feature {name!r}, key {k!r}: expected "
                                 f"{len(st['count'])} values exactly representable as {dt}")
            out[k] = a
        stats[name] = out
    images = {cam: {"count": np.asarray(v["count"], np.int64),
                    "mean": np.asarray(v["mean"], np.float64),
                    "std": np.asarray(v["std"], np.float64)}
              for cam, v in d.get("images", {}).items()}
    meta = {"format_version": d["format_version"], "split": split, "quantiles": list(qs),
            "quantile_dtype": qdt, "images": images, "extra": d.get("extra", {})}
    return stats, meta
