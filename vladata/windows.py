"""Training windows of a store: history ``h`` of observations, an action chunk ``c`` per step.

:class:`WindowDataset` is a map-style torch Dataset; ``.loader(...)`` gives the fast batch path
(:mod:`vladata.batching`, :mod:`vladata.sampler`). Frames are read with the direct shard reader
(:mod:`vladata.store.shard_reader`): a window reads only the rows it needs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch.utils.data

from vladata.dataset import open as open_dataset
from vladata.errors import SelectionError, StoreError
from vladata.fast import load_for_windows
from vladata.images import decode_jpeg
from vladata.normalize import observation_normalizer
from vladata.store.layout import ACTION_NORM, ACTION_TOKENS, IMAGE_PREFIX, STATE
from vladata.store.shard_reader import StoreReader

OVER = ("segments", "episodes")
FAST, FAST_MASK = "action.fast", "action.fast_mask"   # window fields of FAST tokens


class WindowDataset(torch.utils.data.Dataset):
    """Windows of history ``h`` and action chunk ``c`` over the segments or episodes of a store.

    **Ranges.** ``over="segments"``: every language segment (``ds.segments``: frames
    ``start..end`` inclusive of its episode) of a selected episode is one range; segments may
    overlap (CALVIN's language windows do), and a frame in two segments then starts a window in
    each. ``over="episodes"``: every selected episode is one range. ``split`` keeps the episodes
    of that split (a name or a list of names; ``None``: all) and ``episodes`` (episode indices,
    e.g. a held-out part of a split; ``None``: all). No window leaves its range, so no window
    crosses an episode.

    **Where windows sit.** A window is anchored at its *current step* ``e``, the last of its ``h``
    steps ``t..e`` with ``t = e - h + 1``. Every frame ``e`` of a range with at least
    ``min_history`` real steps ending at it (``e >= lo + min_history - 1``) anchors one window, in
    range order then frame order: window ``index`` counts them. With the default ``min_history=1``
    a range of length L gives L windows, and a range (segment) shorter than ``h`` gives windows
    whose missing history is padding; ``min_history=h`` keeps only windows with full history
    (a range shorter than ``h`` then gives none).

    **A sample** (``lo..hi`` the range's first and last frames; ``s_i = max(t+i, lo)`` the frame
    that history slot ``i`` shows):

    - ``observation.images.<cam>`` uint8 (h, H, W, 3), ``observation.state`` float32 (h, D) and
      every ``extra_keys`` feature (h, ...): frame ``s_i`` for slot ``i``; with
      ``normalize_observations`` the low-dimensional ones normalised (below);
    - ``obs_mask`` bool (h,): ``t + i >= lo`` (false: padding before the range start);
    - ``action`` float32 (h, c, A) from the stored ``action.norm`` and ``action.tokens`` int64
      (h, c, A): ``[i, j]`` holds the row of frame ``min(s_i + j, hi)``;
    - ``action_mask`` bool (h, c): ``t + i >= lo and t + i + j <= hi`` -- false where the chunk
      runs past the range end (segment or episode) and for every padded step;
    - padding rule: a padded step repeats the first real step, a chunk entry past the range end
      repeats the action of frame ``hi`` (edge padding; the masks, not the values, tell padding);
    - ``instruction``, ``task`` (str), ``language.embedding`` float32 (E,; zeros if the segment
      has none) and ``language_mask`` bool (a segment applies): the range's segment
      (``over="segments"``); for ``over="episodes"`` the segment covering the current step ``e``
      -- the instruction the action at ``e`` follows -- (of several, the one that started last,
      then the lowest segment index), or ``""``/zeros with ``language_mask`` false if none does;
    - ``episode_index`` int64, ``frame_index`` int64 (h,) = ``s_i`` as an offset in the episode,
      ``index`` int64 (the window index).

    **Observation normalisation.** ``normalize_observations=None`` (default) serves the stored
    values. A mode name (``"meanstd"``, as :data:`vladata.normalize.OBSERVATION_MODE`) normalises
    ``observation.state`` and every low-dim ``extra_keys`` feature of float dtype with this
    store's own statistics (float32 out); an :class:`~vladata.normalize.ObservationNormalizer`
    (e.g. the one a checkpoint recorded) is used as given. ``observation_norm`` holds the one in
    use (or None); it is applied in the workers, and is the object a policy applies to a live
    frame (:meth:`ObservationNormalizer.apply`).

    **FAST tokens** (``fast_tokens=True``; the store's :class:`vladata.fast.FastTokenizer`, fitted
    with ``vladata stats --fast`` for chunks of this ``chunk``): ``action.fast`` int64 (h, L) with
    ``L = c * A`` holds the FAST ids of each step's ``action`` chunk *as served* -- a chunk that
    runs past the range end is encoded with its edge padding, and ``action_mask`` still tells
    which of its steps are real -- padded with 0, and ``action.fast_mask`` bool (h, L) is true on
    the real tokens. Encoding runs in the loader workers.

    ``h=1`` is one-step modelling. ``cameras``: image features to include, as full keys or the
    part after ``observation.images.`` (default: all). ``__getitem__`` returns numpy arrays (torch's
    ``DataLoader`` can batch them); :meth:`loader` is the fast path: windows written straight into
    reused batch buffers by worker processes (:mod:`vladata.batching`).
    """

    def __init__(self, ds, history: int = 16, chunk: int = 10, cameras=None, split="train",
                 over: str = "segments", *, min_history: int = 1, state_key=STATE,
                 action_key: str = ACTION_NORM, tokens_key: str | None = ACTION_TOKENS,
                 extra_keys=(), normalize_observations=None, verify: bool | None = None,
                 fast_tokens: bool = False, episodes=None):
        if isinstance(ds, str):
            ds = open_dataset(ds)
        if history < 1 or chunk < 1:
            raise ValueError(f"history and chunk must be >= 1, got {history}, {chunk}")
        if not 1 <= min_history <= history:
            raise ValueError(f"min_history must be in 1..{history}, got {min_history}")
        if over not in OVER:
            raise ValueError(f"over must be one of {OVER}, got {over!r}")
        self.path, self.history, self.chunk, self.over = ds.path, int(history), int(chunk), over
        self.min_history = int(min_history)
        feats = ds.info["features"]
        for key, what in ((action_key, "normalised actions"), (tokens_key, "action tokens")):
            if key is not None and key not in feats:
                raise StoreError(f"{ds.path}: no feature {key!r} ({what}); the store was not "
                                 f"finalised with normalisation statistics (features: {sorted(feats)})")
        self.cameras = _pick_cameras(ds.path, feats, cameras)
        self.action_key, self.tokens_key = action_key, tokens_key
        self.state_key = state_key if state_key in feats else None
        if state_key is not None and state_key != STATE and self.state_key is None:
            raise SelectionError(f"{ds.path}: no feature {state_key!r}; features: {sorted(feats)}")
        for k in extra_keys:
            if k not in feats:
                raise SelectionError(f"{ds.path}: no feature {k!r}; features: {sorted(feats)}")
        self.extra_keys = tuple(extra_keys)
        self.jpeg = {c for c in self.cameras if feats[c]["storage"]["codec"] == "jpeg"}
        self.shapes = {k: tuple(feats[k]["shape"]) for k in (*self.cameras, *self.extra_keys,
                                                            *filter(None, [self.state_key, action_key]))}
        self.dtypes = {k: np.dtype(feats[k]["dtype"]) for k in self.shapes}
        self.observation_norm = observation_normalizer(ds, normalize_observations,
                                                       [self.state_key, *self.extra_keys])
        if self.observation_norm is not None:
            self.dtypes.update({k: np.dtype(np.float32) for k in self.observation_norm.keys})
        eps, seg = ds.episodes, ds.segments
        self.ranges = Ranges(eps["start"].to_numpy(), eps["length"].to_numpy(), eps["split"].to_list(),
                             seg["episode_index"].to_numpy(), seg["start"].to_numpy(),
                             seg["end"].to_numpy(), split=split, over=over,
                             min_history=self.min_history, where=ds.path, episodes=episodes)
        self.instructions, self.tasks = seg["instruction"].to_list(), seg["task"].to_list()
        embs = seg["embedding"].to_list() if "embedding" in seg.columns else [None] * seg.height
        self.embeddings = embedding_matrix(embs)
        self.reader = StoreReader(ds.path, verify=verify)  # verify: check every chunk's CRC32C
        self._rows = StoreRows(self.reader, self.path)
        self.geometry = Geometry(self.history, self.chunk, self.cameras, frozenset(self.jpeg),
                                 ((self.state_key,) if self.state_key else ()) + self.extra_keys,
                                 action_key, tokens_key)
        self.fast = load_for_windows(ds, self.chunk, action_key) if fast_tokens else None
        self._dataset = ds

    def __len__(self) -> int:
        return len(self.ranges)

    def locate(self, i: int) -> tuple[int, int]:
        """(range, current-step store row) of window ``i``."""
        return self.ranges.locate(i)

    # -- samples --------------------------------------------------------------------------------
    def sample_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-window array fields: name -> (shape, dtype)."""
        spec = window_spec(self.geometry, self.shapes, self.dtypes, self.embeddings.shape[1])
        if self.fast is not None:
            length = (self.history, self.fast.settings.length)
            spec.update({FAST: (length, np.dtype(np.int64)), FAST_MASK: (length, np.dtype(bool))})
        return spec

    def __getitem__(self, i: int) -> dict:
        out = {k: np.empty(shape, dtype) for k, (shape, dtype) in self.sample_spec().items()}
        seg = self.fill(int(i), out)
        self.normalize(out)
        out["instruction"] = self.instructions[seg] if seg >= 0 else ""
        out["task"] = self.tasks[seg] if seg >= 0 else ""
        return out

    def fill_batch(self, out: dict[str, np.ndarray], indices) -> dict:
        """Write windows ``indices`` into rows of the batch arrays ``out``; return the strings."""
        segs = [self.fill(int(i), {k: v[j, ...] for k, v in out.items()}) for j, i in enumerate(indices)]
        self.normalize(out, len(segs))
        return {"instruction": [self.instructions[s] if s >= 0 else "" for s in segs],
                "task": [self.tasks[s] if s >= 0 else "" for s in segs], "n": len(segs)}

    def normalize(self, out: dict[str, np.ndarray], rows: int | None = None) -> None:
        """Normalise the low-dim observations of ``out`` in place (its first ``rows`` rows, or the
        one window it holds) with :attr:`observation_norm`; nothing without one."""
        if self.observation_norm is None:
            return
        for k in self.observation_norm.keys:
            dst = out[k] if rows is None else out[k][:rows]
            dst[...] = self.observation_norm.apply_feature(k, dst)

    def fill(self, i: int, out: dict[str, np.ndarray]) -> int:
        """Write window ``i`` into ``out`` (arrays shaped as :meth:`sample_spec`), observations as
        stored (:meth:`normalize` normalises them); return its segment."""
        rg = self.ranges
        r, e = rg.locate(i)
        ep = int(rg.r_episode[r])
        cut_window(out, self._rows, lo=int(rg.r_lo[r]), hi=int(rg.r_hi[r]), e=e,
                   ep_start=int(rg.ep_start[ep]), geometry=self.geometry)
        seg = int(rg.r_segment[r]) if self.over == "segments" else rg.covering(ep, e)
        if self.fast is not None:
            self.fast.encode_into(out["action"], out[FAST], out[FAST_MASK])
        put_language(out, self.embeddings[seg] if seg >= 0 else None)
        out["episode_index"][...] = ep
        out["index"][...] = i
        return seg

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def dataset(self):
        """The :class:`vladata.Dataset` (reopened after unpickling)."""
        if self._dataset is None:
            self._dataset = open_dataset(self.path)
        return self._dataset

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_dataset"] = None
        return state

    def loader(self, batch_size: int = 32, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
               world_size: int = 1, drop_last: bool = True, **options):
        """The batch loader over a :class:`WindowSampler` (:func:`batch_loader`; ``options``:
        num_workers, prefetch, pin_memory, multiprocessing_context, timeout)."""
        from vladata.sampler import WindowSampler
        sampler = WindowSampler(len(self), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                world_size=world_size, drop_last=drop_last)
        return batch_loader(self, sampler, batch_size, **options)


def batch_loader(producer, sampler, batch_size: int, *, num_workers: int = 2, prefetch: int = 2,
                 pin_memory: bool = False, multiprocessing_context: str | None = None,
                 timeout: float = 300.0):
    """The :class:`vladata.batching.BatchLoader` of ``producer``'s windows in ``sampler``'s order
    (``WindowDataset.loader`` and ``Mixture.loader`` both build theirs here)."""
    from vladata.batching import BatchLoader
    return BatchLoader(producer, sampler, batch_size=batch_size, num_workers=num_workers,
                       prefetch=prefetch, pin_memory=pin_memory,
                       multiprocessing_context=multiprocessing_context, timeout=timeout)


class Ranges:
    """The ranges windows are drawn from and the numbering of their windows (see WindowDataset).

    Inputs are the episodes table (start row, length, split) and the segments table (episode,
    start, end offsets); all ``r_*`` and ``seg_*`` bounds are global store rows, inclusive.
    """

    def __init__(self, ep_start, ep_length, ep_split, seg_episode, seg_start, seg_end, *,
                 split, over: str, min_history: int, where: str = "", episodes=None):
        self.ep_start = np.asarray(ep_start, np.int64)
        self.ep_length = np.asarray(ep_length, np.int64)
        ep_split = list(ep_split)
        splits = sorted(set(ep_split))
        wanted = None if split is None else ([split] if isinstance(split, str) else list(split))
        if wanted is not None and not set(wanted) <= set(splits):
            raise SelectionError(f"{where}: no split {sorted(set(wanted) - set(splits))}; "
                             f"the data has {splits}")
        keep = np.asarray([wanted is None or s in wanted for s in ep_split], bool)
        if episodes is not None:
            keep &= np.isin(np.arange(len(ep_split)), np.asarray(list(episodes), np.int64))
        self.seg_episode = np.asarray(seg_episode, np.int64)
        self.seg_lo = self.ep_start[self.seg_episode] + np.asarray(seg_start, np.int64)
        self.seg_hi = self.ep_start[self.seg_episode] + np.asarray(seg_end, np.int64)
        if over == "segments":
            sel = np.flatnonzero(keep[self.seg_episode])
            self.r_lo, self.r_hi = self.seg_lo[sel], self.seg_hi[sel]
            self.r_episode, self.r_segment = self.seg_episode[sel], sel.astype(np.int64)
        else:
            sel = np.flatnonzero(keep)
            self.r_lo, self.r_hi = self.ep_start[sel], self.ep_start[sel] + self.ep_length[sel] - 1
            self.r_episode, self.r_segment = sel.astype(np.int64), np.full(len(sel), -1, np.int64)
        self.min_history = int(min_history)
        self._by_episode = None  # per episode: segment ids, lo, hi in covering-preference order
        counts = np.maximum(0, self.r_hi - self.r_lo + 1 - (self.min_history - 1))
        self.r_first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # first window of each range

    def __len__(self) -> int:
        return int(self.r_first[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(range, current-step store row) of window ``i``."""
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range 0..{n - 1}")
        r = int(np.searchsorted(self.r_first, i, side="right")) - 1
        return r, int(self.r_lo[r] + self.min_history - 1 + (i - self.r_first[r]))

    def window_index(self, r: int, e: int) -> int:
        """The index of the window of range ``r`` with current step ``e`` (global row)."""
        return int(self.r_first[r] + e - self.r_lo[r] - (self.min_history - 1))

    def covering(self, episode: int, row: int) -> int:
        """The segment covering store ``row`` of ``episode`` (latest start, then lowest index), or -1."""
        if self._by_episode is None:
            order = np.lexsort((np.arange(len(self.seg_lo)), -self.seg_lo, self.seg_episode))
            cuts = np.searchsorted(self.seg_episode[order], np.arange(len(self.ep_start) + 1))
            self._by_episode = [(order[a:b], self.seg_lo[order[a:b]], self.seg_hi[order[a:b]])
                                for a, b in zip(cuts[:-1], cuts[1:])]
        ids, lo, hi = self._by_episode[episode]   # in preference order
        hit = np.flatnonzero((lo <= row) & (hi >= row))
        return int(ids[hit[0]]) if len(hit) else -1


def embedding_matrix(embs: list) -> np.ndarray:
    """float32 (S, E) of per-segment embeddings (zeros where a segment has none; E=0 if none has)."""
    dim = next((len(e) for e in embs if e is not None), 0)
    out = np.zeros((len(embs), dim), np.float32)
    for i, e in enumerate(embs):
        if e is not None:
            out[i] = e
    return out


def window_spec(geometry: "Geometry", shapes: dict, dtypes: dict, emb_dim: int) -> dict:
    """Per-window array fields: name -> (shape, dtype)."""
    g, h, c = geometry, geometry.history, geometry.chunk
    spec = {k: ((h, *shapes[k]), np.dtype(dtypes[k])) for k in g.cameras}
    spec.update({k: ((h, *shapes[k]), np.dtype(np.float32) if k == STATE else
                     np.dtype(dtypes[k])) for k in g.lowdim})
    a = shapes[g.action_key]
    spec["action"] = ((h, c, *a), np.dtype(np.float32))
    if g.tokens_key:
        spec[ACTION_TOKENS] = ((h, c, *a), np.dtype(np.int64))
    spec.update({"action_mask": ((h, c), np.dtype(bool)), "obs_mask": ((h,), np.dtype(bool)),
                 "language.embedding": ((emb_dim,), np.dtype(np.float32)),
                 "language_mask": ((), np.dtype(bool)), "episode_index": ((), np.dtype(np.int64)),
                 "frame_index": ((h,), np.dtype(np.int64)), "index": ((), np.dtype(np.int64))})
    return spec


class Geometry(NamedTuple):
    """What a window holds: sizes and which features play which part."""

    history: int
    chunk: int
    cameras: tuple[str, ...]
    jpeg: frozenset
    lowdim: tuple[str, ...]      # per-step features (state, extras)
    action_key: str
    tokens_key: str | None


class StoreRows:
    """Rows of a store's features for :func:`cut_window` (global row numbers)."""

    def __init__(self, reader: StoreReader, path: str):
        self.reader, self.path = reader, path

    def read_into(self, key: str, a: int, b: int, dst: np.ndarray) -> None:
        self.reader[key].read_into(a, b, dst)

    def read(self, key: str, a: int, b: int) -> np.ndarray:
        return self.reader[key].read(a, b)

    def decode_into(self, key: str, a: int, b: int, dst: np.ndarray) -> None:
        for j, data in enumerate(self.reader[key].read_items(a, b)):
            decode_jpeg(data, dst[j], channels=dst.shape[-1], where=f"{self.path} data/{key} row {a + j}")


def cut_window(out: dict, rows, *, lo: int, hi: int, e: int, ep_start: int, geometry: Geometry) -> None:
    """Fill the frame fields of the window with current step ``e`` in range ``lo..hi``.

    ``rows`` reads rows by global row number (:class:`StoreRows` or a stream sample). Writes
    images, per-step features, ``action``, ``action.tokens``, ``action_mask``, ``obs_mask`` and
    ``frame_index`` following the rules of :class:`WindowDataset`.
    """
    h, c = geometry.history, geometry.chunk
    t = e - h + 1
    a = max(t, lo)           # first real step
    pad = a - t              # padded history slots
    for cam in geometry.cameras:
        dst = out[cam]
        if cam in geometry.jpeg:
            rows.decode_into(cam, a, e + 1, dst[pad:])
        else:
            rows.read_into(cam, a, e + 1, dst[pad:])
        if pad:
            dst[:pad] = dst[pad]
    for k in geometry.lowdim:
        dst = out[k]
        dst[pad:] = rows.read(k, a, e + 1)
        if pad:
            dst[:pad] = dst[pad]
    steps = np.arange(t, e + 1)
    real = steps >= lo
    shown = np.maximum(steps, lo)                                        # s_i
    last = min(e + c - 1, hi)
    ahead = np.arange(c)[None, :]
    idx = np.minimum(shown[:, None] + ahead, hi) - a                     # (h, c) into rows a..last
    out["action"][...] = rows.read(geometry.action_key, a, last + 1)[idx]
    if geometry.tokens_key:
        out[ACTION_TOKENS][...] = rows.read(geometry.tokens_key, a, last + 1)[idx]
    out["action_mask"][...] = real[:, None] & (steps[:, None] + ahead <= hi)
    out["obs_mask"][...] = real
    out["frame_index"][...] = shown - ep_start


def put_language(out: dict, embedding: np.ndarray | None) -> None:
    if embedding is None:
        out["language.embedding"][...] = 0
        out["language_mask"][...] = False
    else:
        out["language.embedding"][...] = embedding
        out["language_mask"][...] = True


def _pick_cameras(path, feats: dict, cameras) -> tuple[str, ...]:
    images = [k for k, v in feats.items() if v.get("kind") == "image"]
    if cameras is None:
        return tuple(images)
    picked = []
    for cam in ([cameras] if isinstance(cameras, str) else cameras):
        key = cam if cam in feats else IMAGE_PREFIX + cam
        if key not in images:
            raise SelectionError(f"{path}: no camera {cam!r}; cameras: {images}")
        picked.append(key)
    return tuple(picked)


__all__ = ["WindowDataset", "FAST", "FAST_MASK", "Ranges", "window_spec", "embedding_matrix", "Geometry", "StoreRows",
           "cut_window", "put_language", "batch_loader"]
