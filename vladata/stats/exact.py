"""Exact per-dimension statistics of low-dimensional features, in bounded memory, mergeable.

Two passes over the same data give count, min, max, mean, std and any quantiles, the quantiles
equal to ``numpy.quantile(x.astype(np.float32), q)`` (default ``method="linear"``) bit for bit:

* pass 1, :class:`StatsAccumulator`: every value is cast to float32 and mapped to an
  order-preserving uint32 key (:func:`float_keys`); a histogram counts the top 16 bits of the keys
  per dimension (``(dim, 65536)`` int64, 3.7 MB for 7 dimensions, whatever the number of values).
  Alongside: count, min/max (as keys), and mean/M2 in float64 merged with Chan's formula.
* pass 2, :class:`QuantileRefiner` (``acc.refiner(quantiles)``): for each wanted rank, pass 1 says
  which top-16-bit bucket holds it; pass 2 counts the low 16 bits of the values inside those few
  buckets only (512 KB per bucket: ~11 MB for 7 dims and 2 quantiles). A rank then resolves to
  one exact key, i.e. one exact float32 value of the data; the two neighbouring order statistics
  are interpolated with numpy's own formula and dtypes (:func:`rank_plan`, :func:`lerp_like_numpy`).

Speed (benchmarks/stats.py, 10M x 7 float32): both passes together take less CPU time than one
``np.quantile`` call on the same array, in bounded memory. Blocks of ~65k values are transposed
to (dim, rows) and processed in reused work arrays: numpy's loops over 7-wide rows, and first
touches of fresh multi-MB temporaries, each cost more than the arithmetic.

Both states are sums of counts (plus min/max), so merging parts is exact and associative, and
``state_dict``/``from_state_dict`` let store parts save them with ``np.savez`` (plain arrays, no
pickles) for the lead process to merge. Mean and std are float64 and merge to within rounding.

Signed zeros: numpy compares -0.0 == 0.0, so where a dimension holds both, *which* zero
``np.quantile`` returns depends on where its partition leaves them (shuffling the same data
changes the sign). Keys order -0.0 before +0.0 (IEEE totalOrder), which is deterministic and
independent of chunking and merge order; the value always equals numpy's, and so does the bit
pattern whenever the data's zeros have one sign (numpy's own interpolation may still turn -0.0
into +0.0; that is reproduced). ``min``/``max`` use the same order.
"""

from __future__ import annotations

import math
import threading
from decimal import Decimal
from typing import Callable, Iterable, Sequence

import numpy as np

from vladata.errors import NonFiniteError, StatsError

FORMAT_VERSION = 1
SPLITS = ("train", "all")
DEFAULT_QUANTILES = (0.01, 0.99)
BUCKETS = 1 << 16               # top-16-bit buckets per dimension (pass 1), low-16-bit bins (pass 2)
BLOCK_VALUES = 1 << 16          # values processed at a time: bounds the work arrays of ``update``
_SIGN = np.uint32(0x80000000)
_KEY_MAX = np.uint32(0xFFFFFFFF)


def quantile_key(q: float) -> str:
    """The statistics key of quantile ``q``: its percentage with two integer digits.

    >>> [quantile_key(q) for q in (0.01, 0.99, 0.5, 0.995, 0.05, 0.001, 0.0, 1.0)]
    ['q01', 'q99', 'q50', 'q99.5', 'q05', 'q00.1', 'q00', 'q100']
    """
    q = parse_quantile(q)
    pct = Decimal(repr(q)) * 100
    whole, frac = divmod(pct, 1)
    text = f"q{int(whole):02d}"
    if frac:
        text += "." + format(frac.normalize(), "f").split(".")[1]
    return text


def parse_quantile(q) -> float:
    """``q`` as a float in [0, 1], or ValueError."""
    try:
        f = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"quantile {q!r} is not a number") from None
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise ValueError(f"quantile {q!r} is not in [0, 1]")
    return f


def parse_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validated quantiles in the given order, duplicates dropped; at least one."""
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Iterable):
        raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles!r}")
    out: list[float] = []
    for q in quantiles:
        f = parse_quantile(q)
        if f not in out:
            out.append(f)
    return tuple(out)


def float_keys(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 (...) -> uint32 (...) keys whose unsigned order is the float order (-0.0 < +0.0).

    Negative floats have all their bits flipped, non-negative ones their sign bit set.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.uint32) if out is None else out
    np.right_shift(x.view(np.int32), 31, out=out.view(np.int32))   # -1 for negatives, else 0
    np.bitwise_or(out, _SIGN, out=out)
    return np.bitwise_xor(out, x.view(np.uint32), out=out)


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`: uint32 (...) -> float32 (...)."""
    k = np.asarray(keys, dtype=np.uint32)
    bits = np.where(k >= _SIGN, k ^ _SIGN, ~k)
    return bits.astype(np.uint32).view(np.float32)


def _as_rows(x, dim: int) -> np.ndarray:
    """Any real array of shape (n, dim) or (dim,) -> C-contiguous float32 (n, dim)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise StatsError(f"statistics need real numbers, got dtype {a.dtype}")
    if a.ndim == 1 and dim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != dim:
        raise StatsError(f"expected an array of shape (n, {dim}), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_finite(x: np.ndarray, row0: int = 0) -> None:
    """Raise NonFiniteError at the first NaN/inf of float32 (n, dim) ``x`` (row relative to x)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x.reshape(-1))):   # NaN, inf propagate; overflow: look closer
            return
    if np.isfinite(x).all():
        return
    r, d = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
    raise NonFiniteError(f"non-finite value {x[r, d]!r} at row {row0 + r}, dimension {d}",
                         row=row0 + r, dim=d)


def locate_nonfinite(err: NonFiniteError, *, feature: str, episode: int | None = None,
                     first_frame: int = 0) -> NonFiniteError:
    """A copy of ``err`` (raised by ``update`` on one episode's rows) that names the feature,
    the episode and the frame (``first_frame + err.row``); raise it ``from err``."""
    frame = first_frame + (err.row or 0)
    where = f"feature {feature!r}" + (f", episode {episode}" if episode is not None else "")
    msg = (f"{where}, frame {frame}, dimension {err.dim}: {err} -- NaN/inf cannot be normalised; "
           f"fix or drop this episode in the source before converting")
    return NonFiniteError(msg, feature=feature, episode=episode, frame=frame, row=err.row,
                          dim=err.dim)


_work_arrays = threading.local()


def _work(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread work array, reused from block to block.

    Fresh temporaries of a few MB come from fresh pages, and first-touching them cost more than
    the arithmetic on them (10x on the 2-core machine this was measured on).
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_work_arrays, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, np.uint8)
        setattr(_work_arrays, name, buf)
    return buf[:nbytes].view(dtype).reshape(shape)


def _blocks(x: np.ndarray):
    """Yield float32 (dim, r) transposed copies (a work array) of (n, dim) ``x``, about
    ``BLOCK_VALUES`` values at a time, so per-dimension work runs along contiguous rows (numpy's
    loops over the 7-wide rows of an (n, 7) array are 5-20x slower).
    """
    n, dim = x.shape
    step = max(1, BLOCK_VALUES // dim)
    for a in range(0, n, step):
        xb = x[a:a + step]
        xt = _work("xt", (dim, xb.shape[0]), np.float32)
        np.copyto(xt, xb.T)
        yield xt


def _bucket_index(xt: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, d*65536 + top 16 bits of the keys) of a (dim, r) block, both in work arrays."""
    keys = float_keys(xt, out=_work("keys", xt.shape, np.uint32))
    idx = np.right_shift(keys, 16, out=_work("idx", xt.shape, np.intp))
    return keys, np.add(idx, offsets, out=idx)


def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries per dimension (Chan et al.); float64 (dim,)."""
    n = n_a + n_b
    safe = np.maximum(n, 1).astype(np.float64)
    delta = mean_b - mean_a
    mean = np.where(n > 0, mean_a + delta * (n_b / safe), 0.0)
    m2 = m2_a + m2_b + delta * delta * (n_a.astype(np.float64) * n_b / safe)
    return mean, np.where(n > 0, m2, 0.0)


class StatsAccumulator:
    """Pass 1: count, min, max, mean, M2 and the top-16-bit key histogram of (n, dim) arrays."""

    def __init__(self, dim: int, *, name: str | None = None):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.name = int(dim), name
        self.count = np.zeros(self.dim, np.int64)
        self.key_min = np.full(self.dim, _KEY_MAX, np.uint32)
        self.key_max = np.zeros(self.dim, np.uint32)
        self.mean = np.zeros(self.dim, np.float64)
        self.m2 = np.zeros(self.dim, np.float64)
        self.hist = np.zeros((self.dim, BUCKETS), np.int64)         # (dim, 65536)
        self._offsets = np.arange(self.dim, dtype=np.intp)[:, None] * BUCKETS  # (dim, 1)

    def update(self, x) -> "StatsAccumulator":
        """Add the rows of ``x`` ((n, dim), any real dtype, cast to float32 first).

        Raises NonFiniteError with ``.row`` (in ``x``) and ``.dim`` on NaN/inf; the state is
        left as it was before the call.
        """
        x = _as_rows(x, self.dim)
        _check_finite(x)
        for xt in _blocks(x):
            self._update_block(xt)
        return self

    def _update_block(self, xt: np.ndarray) -> None:
        n = xt.shape[1]
        keys, idx = _bucket_index(xt, self._offsets)                # (dim, n)
        np.add.at(self.hist.reshape(-1), idx.reshape(-1), 1)
        np.minimum(self.key_min, np.minimum.reduce(keys, axis=1), out=self.key_min)
        np.maximum(self.key_max, np.maximum.reduce(keys, axis=1), out=self.key_max)
        # mean/M2 of the block about a shift K (the running mean; the block mean at first), which
        # keeps s2 - s1^2/n free of cancellation whenever K is near the block's mean
        if self.count[0] == 0:
            shift = np.add.reduce(xt, axis=1, dtype=np.float64) / n
        else:
            shift = self.mean
        dev = _work("dev", xt.shape, np.float64)
        np.copyto(dev, xt)                                          # float32 -> float64
        np.subtract(dev, shift[:, None], out=dev)
        s1 = np.add.reduce(dev, axis=1)
        m2_b = np.maximum(np.einsum("ij,ij->i", dev, dev) - s1 * s1 / n, 0.0)
        n_b = np.full(self.dim, n, np.int64)
        self.mean, self.m2 = _chan_merge(self.count, self.mean, self.m2, n_b, shift + s1 / n, m2_b)
        self.count += n

    def merge(self, other: "StatsAccumulator") -> "StatsAccumulator":
        """Add ``other``'s values to this state (exact for counts, min, max, quantiles)."""
        if other.dim != self.dim:
            raise StatsError(f"cannot merge statistics of {other.dim} dimensions into {self.dim}")
        self.mean, self.m2 = _chan_merge(self.count, self.mean, self.m2,
                                         other.count, other.mean, other.m2)
        self.count = self.count + other.count
        np.minimum(self.key_min, other.key_min, out=self.key_min)
        np.maximum(self.key_max, other.key_max, out=self.key_max)
        self.hist += other.hist
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez``); ``from_state_dict`` rebuilds the accumulator."""
        return {"kind": np.array("pass1"), "count": self.count.copy(),
                "key_min": self.key_min.copy(), "key_max": self.key_max.copy(),
                "mean": self.mean.copy(), "m2": self.m2.copy(), "hist": self.hist.copy()}

    @classmethod
    def from_state_dict(cls, d, *, name: str | None = None) -> "StatsAccumulator":
        _expect_kind(d, "pass1")
        hist = np.asarray(d["hist"], np.int64)
        if hist.ndim != 2 or hist.shape[1] != BUCKETS:
            raise StatsError(f"statistics state: hist has shape {hist.shape}, "
                             f"expected (dim, {BUCKETS})")
        acc = cls(hist.shape[0], name=name)
        acc.hist[...] = hist
        for k in ("count", "key_min", "key_max", "mean", "m2"):
            v = np.asarray(d[k])
            if v.shape != (acc.dim,):
                raise StatsError(f"statistics state: {k!r} has shape {v.shape}, expected "
                                 f"({acc.dim},)")
            getattr(acc, k)[...] = v
        return acc

    @property
    def nbytes(self) -> int:
        """Memory held by the state (the histogram dominates)."""
        return sum(a.nbytes for a in (self.hist, self.count, self.key_min, self.key_max,
                                      self.mean, self.m2))

    def refiner(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> "QuantileRefiner":
        """Pass 2 for ``quantiles``: feed it the same values again (any order or chunking)."""
        self._require_values()
        return QuantileRefiner._plan(self, parse_quantiles(quantiles))

    def _require_values(self) -> None:
        if (self.count == 0).any():
            what = f"feature {self.name!r}" if self.name else "this feature"
            raise StatsError(f"{what} has no values: statistics of an empty feature are undefined")


def _expect_kind(d, kind: str) -> None:
    got = str(np.asarray(d["kind"])) if "kind" in d else None
    if got != kind:
        raise StatsError(f"statistics state is of kind {got!r}, expected {kind!r}")


def rank_plan(n: int, q: float) -> tuple[int, int, float]:
    """numpy's ``method="linear"`` for ``n`` values: (previous rank, next rank, gamma).

    As numpy computes it: ``v = (n - 1) * q`` in float64; ranks ``floor(v)`` and ``floor(v) + 1``;
    when ``v >= n - 1`` both ranks are the last one and gamma is ``v + 1`` (numpy subtracts the
    index -1 it substituted), otherwise gamma is ``v - floor(v)``.
    """
    v = np.float64(n - 1) * np.float64(q)
    if v >= n - 1:
        return n - 1, n - 1, float(v + 1.0)
    prev = np.floor(v)
    return int(prev), int(prev) + 1, float(v - prev)


def lerp_like_numpy(a: np.ndarray, b: np.ndarray, t: np.ndarray, dtype=np.float32) -> np.ndarray:
    """numpy's quantile interpolation of float32 order statistics ``a`` <= ``b`` by ``t`` (float64).

    ``dtype=float32`` reproduces ``np.quantile(x32, q)`` for a Python float ``q`` (weak promotion:
    ``t`` and ``1 - t`` are rounded to float32 and the arithmetic is float32); ``float64``
    reproduces ``np.quantile(x32, [q, ...])`` (``b - a`` in float32, the rest in float64).
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = np.asarray(t, np.float64)
    diff = b - a                                                    # float32, as numpy
    if np.dtype(dtype) == np.float32:
        low = a + diff * t.astype(np.float32)
        high = b - diff * (1.0 - t).astype(np.float32)
    elif np.dtype(dtype) == np.float64:
        diff = diff.astype(np.float64)
        low = a + diff * t
        high = b - diff * (1.0 - t)
    else:
        raise ValueError(f"quantile dtype must be float32 or float64, got {dtype!r}")
    return np.where(t >= 0.5, high, low)


_PLAN_KEYS = ("quantiles", "count", "key_min", "key_max", "mean", "m2",
              "slot_dim", "slot_bucket", "slot_base", "slot_total")


class QuantileRefiner:
    """Pass 2: low-16-bit histograms of the few top-16-bit buckets that hold the wanted ranks.

    Built by :meth:`StatsAccumulator.refiner`; carries pass 1's summary so that its state alone
    (``state_dict``) is enough to resume, merge and produce the result.
    """

    def __init__(self, plan: dict[str, np.ndarray], low: np.ndarray | None = None,
                 seen: np.ndarray | None = None, *, name: str | None = None):
        self.plan, self.name = plan, name
        self.quantiles = tuple(float(q) for q in plan["quantiles"])
        self.dim = int(plan["count"].shape[0])
        nslots = int(plan["slot_dim"].shape[0])
        self.low = np.zeros((nslots, BUCKETS), np.int64)            # (slots, 65536)
        if low is not None:
            self.low[...] = low
        self.seen = np.zeros(self.dim, np.int64) if seen is None else seen        # (dim,)
        # (dim*65536,) per top-16-bit bucket of each dim: is it needed, and the flat index in
        # ``low`` of its slot's first bin
        where = plan["slot_dim"].astype(np.intp) * BUCKETS + plan["slot_bucket"]
        self._need = np.zeros(self.dim * BUCKETS, bool)
        self._need[where] = True
        self._base = np.zeros(self.dim * BUCKETS, np.intp)
        self._base[where] = np.arange(nslots, dtype=np.intp) * BUCKETS
        self._offsets = np.arange(self.dim, dtype=np.intp)[:, None] * BUCKETS   # (dim, 1)

    @classmethod
    def _plan(cls, acc: StatsAccumulator, quantiles: tuple[float, ...]) -> "QuantileRefiner":
        slots: list[tuple[int, int, int, int]] = []   # (dim, bucket, base rank, values in bucket)
        for d in range(acc.dim):
            cum = np.cumsum(acc.hist[d])
            buckets: set[int] = set()
            for q in quantiles:
                for r in rank_plan(int(acc.count[d]), q)[:2]:
                    buckets.add(int(np.searchsorted(cum, r, side="right")))
            for bk in sorted(buckets):
                total = int(acc.hist[d, bk])
                slots.append((d, bk, int(cum[bk]) - total, total))
        cols = np.array(slots, np.int64).reshape(-1, 4)
        plan = {"quantiles": np.array(quantiles, np.float64), "count": acc.count.copy(),
                "key_min": acc.key_min.copy(), "key_max": acc.key_max.copy(),
                "mean": acc.mean.copy(), "m2": acc.m2.copy(), "slot_dim": cols[:, 0].copy(),
                "slot_bucket": cols[:, 1].copy(), "slot_base": cols[:, 2].copy(),
                "slot_total": cols[:, 3].copy()}
        return cls(plan, name=acc.name)

    def update(self, x) -> "QuantileRefiner":
        """Feed rows of the same data as pass 1 ((n, dim), any order or chunking).

        Values outside the buckets pass 2 needs are only counted; ``result`` checks that the
        number of values and of values in each needed bucket equal pass 1's.
        """
        x = _as_rows(x, self.dim)
        for xt in _blocks(x):
            keys, idx = _bucket_index(xt, self._offsets)                 # (dim, n)
            need = np.take(self._need, idx, out=_work("need", xt.shape, bool), mode="clip")
            at = np.flatnonzero(need)             # few: only values in the buckets of the ranks
            if at.size:
                pos = self._base.take(idx.reshape(-1).take(at))
                pos += keys.reshape(-1).take(at) & 0xFFFF
                np.add.at(self.low.reshape(-1), pos, 1)
            self.seen += xt.shape[1]
        return self

    def merge(self, other: "QuantileRefiner") -> "QuantileRefiner":
        """Add the counts of another pass-2 state made from the same pass-1 state."""
        for k in _PLAN_KEYS:
            if not np.array_equal(self.plan[k], other.plan[k]):
                raise StatsError(f"cannot merge pass-2 statistics planned from different pass-1 "
                                 f"states ({k!r} differs): build every part's refiner from the "
                                 f"same merged pass-1 state")
        self.low += other.low
        self.seen += other.seen
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {k: v.copy() for k, v in self.plan.items()}
        d.update(kind=np.array("pass2"), low=self.low.copy(), seen=self.seen.copy())
        return d

    @classmethod
    def from_state_dict(cls, d, *, name: str | None = None) -> "QuantileRefiner":
        _expect_kind(d, "pass2")
        plan = {k: np.asarray(d[k]).copy() for k in _PLAN_KEYS}
        return cls(plan, np.asarray(d["low"], np.int64).copy(),
                   np.asarray(d["seen"], np.int64).copy(), name=name)

    @property
    def nbytes(self) -> int:
        return (self.low.nbytes + self._need.nbytes + self._base.nbytes
                + sum(v.nbytes for v in self.plan.values()))

    def result(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """count (int64), min/max (float32), mean/std (float64), one key per quantile (``dtype``).

        Quantiles with ``dtype=float32`` equal ``np.quantile(x.astype(np.float32), q)`` for a
        Python float ``q``; with float64, ``np.quantile(x.astype(np.float32), [q])``.
        """
        p, what = self.plan, f"feature {self.name!r}" if self.name else "the data"
        if not np.array_equal(self.seen, p["count"]) or \
                not np.array_equal(self.low.sum(axis=1), p["slot_total"]):
            raise StatsError(f"pass 2 over {what} saw other values than pass 1 ({self.seen.tolist()}"
                             f" vs {p['count'].tolist()} values): feed both passes the same data")
        cum = np.cumsum(self.low, axis=1)                                # (slots, 65536)

        def order_stat(d: int, r: int) -> np.uint32:
            s = int(np.flatnonzero((p["slot_dim"] == d) & (p["slot_base"] <= r)
                                   & (r < p["slot_base"] + p["slot_total"]))[0])
            low = np.searchsorted(cum[s], r - p["slot_base"][s], side="right")
            return np.uint32((int(p["slot_bucket"][s]) << 16) | int(low))

        out = {"count": p["count"].copy(), "min": keys_to_floats(p["key_min"]),
               "max": keys_to_floats(p["key_max"]), "mean": p["mean"].copy(),
               "std": np.sqrt(np.maximum(p["m2"], 0.0) / p["count"])}
        for q in self.quantiles:
            ka, kb, t = [], [], []
            for d in range(self.dim):
                prev, nxt, gamma = rank_plan(int(p["count"][d]), q)
                ka.append(order_stat(d, prev))
                kb.append(order_stat(d, nxt))
                t.append(gamma)
            out[quantile_key(q)] = lerp_like_numpy(keys_to_floats(np.array(ka)),
                                                   keys_to_floats(np.array(kb)),
                                                   np.array(t), dtype)
        return out


def compute_stats(chunks: Callable[[], Iterable[np.ndarray]],
                  quantiles: Sequence[float] = DEFAULT_QUANTILES, *,
                  name: str | None = None) -> dict[str, np.ndarray]:
    """Statistics of the rows yielded by ``chunks()``, which is called twice (pass 1, pass 2)."""
    acc = None
    for x in chunks():
        x = np.asarray(x)
        if acc is None:
            acc = StatsAccumulator(1 if x.ndim == 1 else x.shape[-1], name=name)
        acc.update(x)
    if acc is None:
        raise StatsError(f"feature {name!r} has no values" if name else "no data to compute "
                         "statistics of: chunks() yielded nothing")
    ref = acc.refiner(quantiles)
    for x in chunks():
        ref.update(x)
    return ref.result()
