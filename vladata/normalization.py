"""Normalise low-dimensional features (actions, states) with stored statistics, and back.

Modes, per normalised dimension, with statistics from :mod:`vladata.stats`:

* ``"quantile"`` (default): ``clip(2 * (x - lo) / (hi - lo) - 1, -1, 1)`` with ``lo``/``hi`` the
  statistics named by ``low``/``high`` (``"q01"``/``"q99"``);
* ``"minmax"``: the same with ``min``/``max`` (also clipped, for values outside the data's range);
* ``"meanstd"``: ``(x - mean) / std`` (not clipped).

A constant dimension (``hi == lo``, or ``std == 0``) maps to 0 and denormalises to the constant.
Dimensions whose ``mask`` entry is False are not normalised: they pass through unchanged, or, for
the gripper, through the explicit :class:`GripperConvention` conversion (e.g. 0/1 -> -1/1).
A statistic the mode needs but ``stats`` lacks raises :class:`~vladata.errors.StatsError`; data is
never passed through un-normalised because a statistic is missing.

The arithmetic is float64 (float32 on devices without float64) and the result float32; numpy
arrays and torch tensors (any device) are accepted and the same kind is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vladata.errors import ConfigError, StatsError, StoreError

MODES = ("quantile", "meanstd", "minmax")


class NormalizationError(ConfigError):
    """A normalisation or gripper convention setting is invalid; lists every problem."""


def parse_convention(text: str) -> tuple[float, float]:
    """``"<closed>/<open>"`` -> (closed value, open value); e.g. ``"0/1"``, ``"-1/1"``, ``"1/-1"``."""
    parts = str(text).split("/")
    try:
        closed, opened = (float(p) for p in parts)
    except ValueError:
        raise NormalizationError([f"gripper convention {text!r} is not '<closed>/<open>', "
                                  f"e.g. '0/1' (0 = closed, 1 = open) or '-1/1'"]) from None
    if closed == opened or not np.isfinite([closed, opened]).all():
        raise NormalizationError([f"gripper convention {text!r}: closed and open values must be "
                                  f"finite and different"])
    return closed, opened


@dataclass(frozen=True)
class GripperConvention:
    """Explicit conversion of the (un-normalised) gripper dimension between two conventions.

    A convention is the string ``"<closed value>/<open value>"``: OpenVLA/Octo's OXE actions are
    ``"0/1"`` (1 = open), CALVIN's ``"-1/1"`` (-1 = close), RT-1's gripper_closedness ``"1/-1"``.
    With ``binarize`` (default) a source value is *open* when it lies strictly beyond
    ``threshold`` on the open side (``threshold`` defaults to the midpoint of the two source
    values: 0.5 for ``"0/1"``, 0 for ``"-1/1"``; a value equal to it counts as closed) and becomes
    the target's open or closed value. Without ``binarize`` the map is affine (closed -> closed,
    open -> open), so intermediate gripper positions are kept.
    ``denormalize`` applies the inverse (binarising at the target's midpoint).
    """

    source: str = "0/1"
    target: str = "-1/1"
    dim: int = -1
    binarize: bool = True
    threshold: float | None = None

    def __post_init__(self):
        errors = []
        for what in ("source", "target"):
            try:
                parse_convention(getattr(self, what))
            except NormalizationError as e:
                errors += e.errors
        if not isinstance(self.dim, int) or isinstance(self.dim, bool):
            errors.append(f"gripper dim must be an integer, got {self.dim!r}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            errors.append(f"gripper threshold must be finite, got {self.threshold!r}")
        if errors:
            raise NormalizationError(errors)

    def convert(self, x, xp):
        return _convert(x, parse_convention(self.source), parse_convention(self.target),
                        self.binarize, self.threshold, xp)

    def invert(self, y, xp):
        return _convert(y, parse_convention(self.target), parse_convention(self.source),
                        self.binarize, None, xp)

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "dim": self.dim,
                "binarize": self.binarize, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> "GripperConvention":
        _check_keys(d, {"source", "target", "dim", "binarize", "threshold"}, "gripper")
        return cls(**d)


def _convert(x, src, dst, binarize, threshold, xp):
    (s_closed, s_open), (d_closed, d_open) = src, dst
    if binarize:
        thr = (s_closed + s_open) / 2 if threshold is None else threshold
        is_open = (x - thr) * (1.0 if s_open > s_closed else -1.0) > 0
        return xp.where(is_open, xp.full_like(x, d_open), xp.full_like(x, d_closed))
    return d_closed + (x - s_closed) * ((d_open - d_closed) / (s_open - s_closed))


@dataclass(frozen=True)
class Normalization:
    """How a feature is normalised; recorded in the store's metadata (``to_dict``)."""

    mode: str = "quantile"
    low: str = "q01"
    high: str = "q99"
    mask: tuple[bool, ...] | None = None      # True = normalise this dimension; None = all
    gripper: GripperConvention | None = field(default=None)

    def __post_init__(self):
        errors = []
        if self.mode not in MODES:
            errors.append(f"mode {self.mode!r} is not one of {MODES}")
        for what in ("low", "high"):
            v = getattr(self, what)
            if not (isinstance(v, str) and v.startswith("q") and len(v) > 1):
                errors.append(f"{what} {v!r} is not a quantile key such as 'q01' or 'q99.5'")
        if self.mask is not None:
            mask = tuple(self.mask)
            if not mask or not all(isinstance(m, (bool, np.bool_)) for m in mask):
                errors.append(f"mask must be a non-empty list of booleans, got {self.mask!r}")
            else:
                object.__setattr__(self, "mask", tuple(bool(m) for m in mask))
        if self.gripper is not None and not isinstance(self.gripper, GripperConvention):
            errors.append(f"gripper must be a GripperConvention, got {type(self.gripper).__name__}")
        elif self.gripper is not None:
            if self.mask is None:
                errors.append("a gripper conversion needs a mask that leaves the gripper out")
            elif isinstance(self.mask, tuple) and all(isinstance(m, bool) for m in self.mask):
                g = self.gripper.dim
                if not -len(self.mask) <= g < len(self.mask):
                    errors.append(f"gripper dim {g} is outside the mask's {len(self.mask)} dims")
                elif self.mask[g]:
                    errors.append(f"gripper dim {g} is normalised by the mask; set it False")
        if errors:
            raise NormalizationError(errors)

    @classmethod
    def for_action(cls, dim: int = 7, *, mode: str = "quantile",
                   gripper: GripperConvention | None = None) -> "Normalization":
        """The default for actions: every dimension but the last (the gripper) normalised."""
        if dim < 2:
            raise NormalizationError([f"an action with a gripper has >= 2 dims, got {dim}"])
        return cls(mode=mode, mask=(True,) * (dim - 1) + (False,), gripper=gripper)

    def required_stats(self) -> tuple[str, str]:
        return {"quantile": (self.low, self.high), "minmax": ("min", "max"),
                "meanstd": ("mean", "std")}[self.mode]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "low": self.low, "high": self.high,
                "mask": None if self.mask is None else list(self.mask),
                "gripper": None if self.gripper is None else self.gripper.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        _check_keys(d, {"mode", "low", "high", "mask", "gripper"}, "normalization")
        g = d.get("gripper")
        return cls(mode=d.get("mode", "quantile"), low=d.get("low", "q01"),
                   high=d.get("high", "q99"),
                   mask=None if d.get("mask") is None else tuple(d["mask"]),
                   gripper=None if g is None else GripperConvention.from_dict(g))


def parse_normalization(value) -> Normalization:
    """A Normalization from itself, its dict, or a mode name."""
    if isinstance(value, Normalization):
        return value
    if isinstance(value, str):
        return Normalization(mode=value)
    if isinstance(value, dict):
        return Normalization.from_dict(value)
    raise NormalizationError([f"normalization must be a mode name or a dict, got {value!r}"])


def _check_keys(d, allowed: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise NormalizationError([f"{what} must be a dict, got {type(d).__name__}"])
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise NormalizationError([f"{what}: unknown key {k!r} (allowed: {sorted(allowed)})"
                                  for k in unknown])


class _Numpy:
    where, full_like = staticmethod(np.where), staticmethod(np.full_like)

    @staticmethod
    def clip(x, lo, hi):
        return np.clip(x, lo, hi)


class _Torch:
    def __init__(self, torch):
        self.torch = torch
        self.where, self.full_like = torch.where, torch.full_like

    def clip(self, x, lo, hi):
        return self.torch.clamp(x, lo, hi)


def _prepare(x, stats, norm: Normalization):
    """Validate and widen: (array ops, x as float64 (..., D), the mode's two statistics lo and hi
    as float64 (D,), mask (D,) bool, (D,) -> x-like vector function, float32 output function)."""
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        wide = torch.float32 if x.device.type == "mps" else torch.float64
        xp, xx = _Torch(torch), x.to(wide)

        def vec(a):
            return torch.as_tensor(np.asarray(a, np.float64), dtype=wide, device=x.device)

        def out(y):
            return y.to(torch.float32)
    else:
        xp, xx = _Numpy, np.asarray(x, dtype=np.float64)

        def vec(a):
            return np.asarray(a, np.float64)

        def out(y):
            return np.asarray(y, dtype=np.float32)
    if xx.ndim < 1:
        raise StatsError(f"cannot normalise a scalar; expected (..., D), got shape {tuple(x.shape)}")
    dim = xx.shape[-1]
    mask = np.ones(dim, bool) if norm.mask is None else np.array(norm.mask, bool)
    if mask.shape[0] != dim:
        raise StatsError(f"normalisation mask has {mask.shape[0]} entries, data has {dim} dims")
    names = norm.required_stats()
    missing = [k for k in names if k not in stats]
    if missing:
        raise StatsError(f"statistics lack {missing} needed by {norm.mode!r} normalisation "
                         f"(have: {sorted(stats)}); recompute them, e.g. `vladata stats PATH "
                         f"--quantiles '[...]'` with the quantiles this normalisation uses")
    bounds = []
    for k in names:
        a = np.asarray(stats[k], np.float64)
        if a.shape != (dim,):
            raise StatsError(f"statistic {k!r} has shape {a.shape} but the data has {dim} "
                             f"dimensions: were these statistics computed for another feature?")
        if not np.isfinite(a).all():
            raise StatsError(f"statistic {k!r} is not finite: {a.tolist()}")
        bounds.append(a)
    lo, hi = bounds
    if norm.mode != "meanstd" and (hi < lo).any():
        raise StatsError(f"statistics {names[1]!r} < {names[0]!r} in dims "
                         f"{np.flatnonzero(hi < lo).tolist()}: the statistics are corrupt")
    if norm.mode == "meanstd" and (hi < 0).any():
        raise StatsError("statistic 'std' is negative: the statistics are corrupt")
    return xp, xx, lo, hi, mask, vec, out


def normalize(x, stats: dict[str, np.ndarray], norm: Normalization | None = None):
    """Normalise ``x`` (..., D) with ``stats`` (key -> (D,)) as ``norm`` says -> float32 (..., D)."""
    norm = norm or Normalization()
    xp, xx, lo, hi, mask, vec, out = _prepare(x, stats, norm)
    const = (hi == 0) if norm.mode == "meanstd" else (hi == lo)
    if norm.mode == "meanstd":
        y = (xx - vec(lo)) / vec(np.where(const, 1.0, hi))
    else:
        y = xp.clip(2.0 * (xx - vec(lo)) / vec(np.where(const, 1.0, hi - lo)) - 1.0, -1.0, 1.0)
    y = xp.where(vec(const) > 0, 0.0, y)
    y = xp.where(vec(mask) > 0, y, xx)
    if norm.gripper is not None:
        g = norm.gripper.dim
        y[..., g] = norm.gripper.convert(xx[..., g], xp)
    return out(y)


def denormalize(y, stats: dict[str, np.ndarray], norm: Normalization | None = None):
    """Inverse of :func:`normalize` (exact up to rounding for values inside the bounds; values
    outside [-1, 1] extrapolate linearly) -> float32 (..., D)."""
    norm = norm or Normalization()
    xp, yy, lo, hi, mask, vec, out = _prepare(y, stats, norm)
    if norm.mode == "meanstd":
        x = yy * vec(hi) + vec(lo)
    else:
        x = vec(lo) + (yy + 1.0) * 0.5 * vec(hi - lo)   # hi == lo gives the constant
    x = xp.where(vec(mask) > 0, x, yy)
    if norm.gripper is not None:
        g = norm.gripper.dim
        x[..., g] = norm.gripper.invert(yy[..., g], xp)
    return out(x)


OBSERVATION_MODE = "meanstd"  # how the low-dim observation inputs of windows are normalised
MIN_STD = 1e-6                # a std at or below it is recorded as 1: the dimension is only centred


@dataclass(frozen=True)
class ObservationNormalizer:
    """How the low-dimensional observation inputs of one store are normalised -- one object for
    the window loader (its workers), the checkpoint (``to_dict``) and the policy runtime.

    ``features`` maps a feature key (``observation.state``, ...) to ``(Normalization, stats)``,
    ``stats`` holding only the statistics the mode needs, as tuples of floats (D,). Built from a
    store with :meth:`from_dataset` (each store with its own statistics, as Octo normalises every
    dataset before mixing), saved with :meth:`to_dict` (JSON-able) and rebuilt with
    :meth:`from_dict`. :meth:`apply` is THE function that normalises: the loader calls it on a
    batch of windows, a policy calls it on one live frame, with the same result for the same
    values::

        norm = ObservationNormalizer.from_dict(spec.observation_norm)   # from a checkpoint
        obs = norm.apply({"observation.state": state})                  # state: (D,) or (..., D)
    """

    features: dict = field(default_factory=dict)   # key -> (Normalization, {stat: (D,) floats})

    @classmethod
    def from_dataset(cls, ds, keys, mode: str = OBSERVATION_MODE) -> "ObservationNormalizer":
        """The normaliser of ``keys`` with the statistics of store ``ds`` (``mode`` for all).

        A statistic the mode needs but the store lacks raises
        :class:`~vladata.errors.StatsError`; nothing is passed through un-normalised.
        """
        norm = Normalization(mode=mode)
        features = {}
        for key in keys:
            st = ds.stats.get(key)
            missing = [k for k in norm.required_stats() if st is None or k not in st]
            if missing:
                raise StatsError(f"{ds.path}: no {'/'.join(missing)} statistics of {key!r} (needed "
                                 f"to normalise it, mode {mode!r}); run `vladata stats {ds.path}`")
            stats = {k: np.asarray(st[k], np.float64) for k in norm.required_stats()}
            if mode == "meanstd":
                stats["std"] = np.where(stats["std"] > MIN_STD, stats["std"], 1.0)
            features[key] = (norm, {k: tuple(float(v) for v in a.reshape(-1))
                                    for k, a in stats.items()})
        return cls(features)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.features)

    def apply_feature(self, key: str, x):
        """Feature ``key``'s values ``x`` (..., D) normalised -> float32 (numpy/torch, as ``x``)."""
        norm, stats = self.features[key]
        return normalize(x, stats, norm)

    def apply(self, obs: dict) -> dict:
        """A copy of ``obs`` (key -> (..., D) values: one frame, a window or a batch) with every
        feature this normaliser covers normalised; other keys pass through unchanged."""
        return {k: self.apply_feature(k, v) if k in self.features else v for k, v in obs.items()}

    def to_dict(self) -> dict:
        return {"features": {k: {"normalization": n.to_dict(),
                                 "stats": {s: list(v) for s, v in st.items()}}
                             for k, (n, st) in self.features.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ObservationNormalizer":
        _check_keys(d, {"features"}, "observation normalisation")
        features = {}
        for key, f in d["features"].items():
            _check_keys(f, {"normalization", "stats"}, f"observation normalisation of {key!r}")
            features[key] = (Normalization.from_dict(f["normalization"]),
                             {s: tuple(float(x) for x in v) for s, v in f["stats"].items()})
        return cls(features)


def observation_normalizer(ds, how, keys) -> ObservationNormalizer | None:
    """The normaliser of store ``ds``'s windows that ``normalize_observations=how`` asks for
    (:class:`vladata.loading.windows.WindowDataset`): None; a mode name applied to the float low-dim
    features among ``keys`` with ``ds``'s statistics; or a given one, checked to cover exactly
    those features with their dims."""
    if how is None:
        return None
    feats = ds.info["features"]
    picked = [k for k in keys if k is not None and feats[k].get("kind", "lowdim") == "lowdim"
              and np.issubdtype(np.dtype(feats[k]["dtype"]), np.floating)]
    if isinstance(how, str):
        return ObservationNormalizer.from_dataset(ds, picked, how)
    if not isinstance(how, ObservationNormalizer):
        raise TypeError(f"normalize_observations must be None, a mode name or an "
                        f"ObservationNormalizer, got {how!r}")
    if set(how.keys) != set(picked):  # nothing served un-normalised, nothing asked for missing
        raise StoreError(f"{ds.path}: the observation normaliser covers {sorted(how.keys)}, the "
                         f"windows serve the low-dim features {sorted(picked)}")
    for k in picked:
        dims = [len(v) for v in how.features[k][1].values()]
        if any(d != int(np.prod(feats[k]["shape"])) for d in dims):
            raise StoreError(f"{ds.path}: the observation normaliser of {k!r} has statistics of "
                             f"{dims[0]} dims, the store's {k!r} has shape {feats[k]['shape']}")
    return how


__all__ = ["MODES", "Normalization", "GripperConvention", "NormalizationError", "normalize",
           "denormalize", "parse_normalization", "parse_convention", "ObservationNormalizer",
           "OBSERVATION_MODE", "observation_normalizer"]
