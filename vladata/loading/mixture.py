"""Mixtures of stores: windows drawn from several datasets with weights (OXE "magic soup" style).

A :class:`Mixture` puts the windows of several stores in one index space (store ``j``'s window
``w`` is mixture index ``offsets[j] + w``); each store's windows are cut exactly as
:class:`vladata.loading.windows.WindowDataset` cuts them, and ``action`` comes from that store's own
``action.norm`` -- every dataset is normalised with its own statistics, as Octo and OpenVLA do;
with ``normalize_observations`` (a mode name) so are its low-dimensional observations
(``observation.state``, ...): each store's :class:`~vladata.normalization.ObservationNormalizer` is
built from its own statistics and applied to its rows in the workers
(:attr:`Mixture.observation_norms`, one per store, for checkpoints and policies).

Sampling (:class:`MixtureSampler`): an epoch is ``epoch_size`` windows (default: all windows of
all stores). Store ``j`` gets a share ``p_j = w_j / sum(w)`` of them, or with ``balance=True``
``p_j`` proportional to ``w_j * n_j`` (its window count: OXE's balancing by transitions). The
counts are ``p_j * epoch_size`` rounded by largest remainder, so an epoch holds exactly its
shares; within a store windows come from per-epoch permutations (a store drawn more often than
it has windows goes round its permutation again), and the draws of all stores are shuffled
together from ``(seed, epoch)``. The order is then dealt across ranks, batched, resumed and
reshuffled by :class:`vladata.loading.sampler.WindowSampler`.

Batches hold every field of a window batch plus ``dataset_index`` int64 (B,); ``index`` is the
mixture index. All stores must share the chosen cameras (same names and shapes), the action
dimension and, when ``state=True``, the state shape; language embeddings of different sizes are
zero-padded to the largest.
"""

from __future__ import annotations

import numpy as np
import torch.utils.data

from vladata.dataset import open as open_dataset
from vladata.errors import ConfigError
from vladata.loading.sampler import WindowSampler
from vladata.store.layout import STATE
from vladata.loading.windows import WindowDataset, batch_loader


class MixtureSampler(WindowSampler):
    """A :class:`WindowSampler` whose epoch order is the weighted draw described in the module."""

    def __init__(self, mixture: "Mixture", batch_size: int, *, epoch_size: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.sizes = np.asarray(mixture.sizes, np.int64)
        self.offsets = np.asarray(mixture.offsets[:-1], np.int64)
        self.probs = np.asarray(mixture.probabilities, float)
        size = int(self.sizes.sum()) if epoch_size is None else int(epoch_size)
        super().__init__(size, batch_size, shuffle=True, seed=seed, rank=rank,
                         world_size=world_size, drop_last=drop_last)
        self.counts = quotas(self.probs, size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for j, n in enumerate(self.counts):
            m = int(self.sizes[j])
            if n == 0 or m == 0:
                continue
            perms = [rng.permutation(m) for _ in range(-(-n // m))]
            parts.append(self.offsets[j] + np.concatenate(perms)[:n])
        order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        rng.shuffle(order)
        return order


def quotas(probs: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``probs`` (largest remainder)."""
    raw = np.asarray(probs, float) * total
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(raw)), -(raw - counts)))
        counts[order[:rest]] += 1
    return counts


class Mixture(torch.utils.data.Dataset):
    """Windows of several stores under one index; see the module docstring.

    ``stores``: a list of stores (paths, :class:`vladata.Dataset`), a list of ``(store, weight)``
    pairs or a ``{path: weight}`` dict. ``weights`` (if not given with the stores) default to 1.
    The window arguments (history, chunk, cameras, split, over, min_history,
    normalize_observations: None or a mode name) apply to every store, each with its own
    statistics.
    """

    def __init__(self, stores, *, weights=None, balance: bool = False, history: int = 16,
                 chunk: int = 10, cameras=None, split="train", over: str = "episodes",
                 min_history: int = 1, state: bool = True,
                 normalize_observations: str | None = None):
        items = list(stores.items()) if isinstance(stores, dict) else list(stores)
        if items and all(isinstance(x, tuple) and len(x) == 2 for x in items):
            if weights is not None:
                raise ConfigError(["give weights either with the stores or as weights=, not both"])
            items, weights = [x[0] for x in items], [x[1] for x in items]
        if not items:
            raise ConfigError(["a mixture needs at least one store"])
        weights = [1.0] * len(items) if weights is None else [float(w) for w in weights]
        errors = []
        if len(weights) != len(items):
            errors.append(f"{len(weights)} weights for {len(items)} stores")
        if any(not np.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
            errors.append(f"weights must be finite, >= 0 and not all 0, got {weights}")
        if errors:
            raise ConfigError(errors)
        dsets = [open_dataset(x) if not hasattr(x, "info") else x for x in items]
        if cameras is None:
            cams = [k for k, v in dsets[0].info["features"].items() if v.get("kind") == "image"
                    and all(k in d.info["features"] for d in dsets)]
            if not cams:
                raise ConfigError(["the stores share no camera; pass cameras= explicitly"])
            cameras = cams
        if normalize_observations is not None and not isinstance(normalize_observations, str):
            raise ConfigError([f"normalize_observations: a mode name or None for a mixture (each "
                               f"store uses its own statistics), got {normalize_observations!r}"])
        self.parts = [WindowDataset(d, history, chunk, cameras, split, over, min_history=min_history,
                                    state_key=STATE if state else None,
                                    normalize_observations=normalize_observations) for d in dsets]
        self.observation_norms = [p.observation_norm for p in self.parts]
        self._check_compatible()
        self.paths = [p.path for p in self.parts]
        self.sizes = [len(p) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        w = np.asarray(weights, float) * (np.asarray(self.sizes, float) if balance else 1.0)
        w[np.asarray(self.sizes) == 0] = 0.0
        if not w.sum() > 0:
            raise ConfigError(["no store of the mixture has windows (check split and over)"])
        self.weights, self.balance = list(weights), bool(balance)
        self.probabilities = (w / w.sum()).tolist()
        self.emb_dim = max(p.embeddings.shape[1] for p in self.parts)

    def _check_compatible(self) -> None:
        ref = self.parts[0].sample_spec()
        errors = []
        for p in self.parts[1:]:
            spec = p.sample_spec()
            for k in sorted(set(ref) | set(spec)):
                if k == "language.embedding":
                    continue
                if k not in ref or k not in spec:
                    errors.append(f"{p.path}: field {k!r} is in {'only this store' if k in spec else 'the first store only'}")
                elif ref[k] != spec[k]:
                    errors.append(f"{p.path}: {k} is {spec[k][0]} {spec[k][1]}, the first store "
                                  f"({self.parts[0].path}) has {ref[k][0]} {ref[k][1]}")
        if errors:
            raise ConfigError(errors)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sample_spec(self) -> dict:
        spec = dict(self.parts[0].sample_spec())
        spec["language.embedding"] = ((self.emb_dim,), np.dtype(np.float32))
        spec["dataset_index"] = ((), np.dtype(np.int64))
        return spec

    def locate(self, i: int) -> tuple[int, int]:
        """(store, window of that store) of mixture index ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"mixture window {i} out of range 0..{len(self) - 1}")
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return j, int(i - self.offsets[j])

    def fill(self, i: int, out: dict) -> tuple[str, str]:
        """Write mixture window ``i`` into ``out``, observations as stored (:meth:`normalize`)."""
        j, w = self.locate(i)
        part = self.parts[j]
        e = part.embeddings.shape[1]
        view = dict(out)
        view["language.embedding"] = out["language.embedding"][:e]
        out["language.embedding"][e:] = 0
        seg = part.fill(w, view)
        out["index"][...] = i
        out["dataset_index"][...] = j
        return (part.instructions[seg], part.tasks[seg]) if seg >= 0 else ("", "")

    def __getitem__(self, i: int) -> dict:
        out = {k: np.empty(shape, dt) for k, (shape, dt) in self.sample_spec().items()}
        out["instruction"], out["task"] = self.fill(int(i), out)
        self.parts[int(out["dataset_index"])].normalize(out)
        return out

    def fill_batch(self, out: dict, indices) -> dict:
        strings = [self.fill(int(i), {k: v[r, ...] for k, v in out.items()})
                   for r, i in enumerate(indices)]
        self.normalize(out, len(strings))
        return {"instruction": [s[0] for s in strings], "task": [s[1] for s in strings],
                "n": len(strings)}

    def normalize(self, out: dict, rows: int) -> None:
        """Normalise the low-dim observations of the first ``rows`` rows of the batch ``out`` in
        place, each row with its own store's normaliser (picked by ``dataset_index``)."""
        store = out["dataset_index"][:rows]
        for j, part in enumerate(self.parts):
            if part.observation_norm is None:
                continue
            sel = np.flatnonzero(store == j)
            if len(sel):
                for k in part.observation_norm.keys:
                    out[k][sel] = part.observation_norm.apply_feature(k, out[k][sel])

    def summary(self) -> list[dict]:
        """Per store: path, windows, weight, share of an epoch, normalisation (for logs)."""
        return [{"path": p.path, "windows": n, "weight": w, "probability": q,
                 "normalization": p.dataset.info.get("normalization")}
                for p, n, w, q in zip(self.parts, self.sizes, self.weights, self.probabilities)]

    def loader(self, batch_size: int = 32, *, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = True, epoch_size: int | None = None, **options):
        """The batch loader over a :class:`MixtureSampler` (``options``: WindowDataset.loader's)."""
        sampler = MixtureSampler(self, batch_size, epoch_size=epoch_size, seed=seed, rank=rank,
                                 world_size=world_size, drop_last=drop_last)
        return batch_loader(self, sampler, batch_size, **options)


__all__ = ["Mixture", "MixtureSampler", "quotas"]
