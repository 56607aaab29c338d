"""Reading the streaming form: :class:`WindowStream` over the samples :func:`iter_samples` reads
and checks (see :mod:`vladata.stream` for the layout and the window and epoch semantics)."""

from __future__ import annotations

import copy

import json

import fsspec
import numpy as np
import torch.utils.data

from vladata.errors import SelectionError
from vladata.images import decode_jpeg
from vladata.sampler import WindowSampler
from vladata.store.layout import ACTION_NORM, ACTION_TOKENS, IMAGE_PREFIX, STATE
from vladata.stream.format import FORMAT, FORMAT_VERSION, INDEX, StreamFormatError
from vladata.stream.samples import iter_samples
from vladata.windows import (OVER, Geometry, Ranges, batch_loader, cut_window, put_language,
                             window_spec)


class _SampleRows:
    """Rows of one decoded sample by global store row (for :func:`cut_window`)."""

    def __init__(self, sample: dict, base: int, where: str):
        self.s, self.base, self.where = sample, base, where

    def _get(self, key):
        try:
            return self.s[key]
        except KeyError:
            raise StreamFormatError(f"{self.where}: no feature {key!r} in the sample") from None

    def read(self, key, a, b):
        return self._get(key)[a - self.base:b - self.base]

    def read_into(self, key, a, b, dst):
        dst[...] = self.read(key, a, b)

    def decode_into(self, key, a, b, dst):
        for j, data in enumerate(self.read(key, a, b)):
            decode_jpeg(data, dst[j], channels=dst.shape[-1], where=f"{self.where} {key} row {a + j}")


class WindowStream(torch.utils.data.IterableDataset):
    """Windows cut from the shards at ``url`` (a directory/prefix holding index.json); see module doc.

    Iterating it (e.g. under a torch ``DataLoader`` with the same ``batch_size``) yields single
    windows, this worker's share of ``num_batches * batch_size`` per epoch (batch ``k`` comes from
    worker ``k % num_workers``, as torch interleaves them); call ``set_epoch`` before each epoch
    (torch's ``persistent_workers`` would keep the workers' copies at the old epoch).
    ``.loader(...)`` gives the batch path of :mod:`vladata.batching`, same batches per rank.
    ``rank``/``world_size`` default to torch.distributed's when it is initialised.
    """

    def __init__(self, url: str, history: int = 16, chunk: int = 10, cameras=None, split="train",
                 over: str = "segments", *, min_history: int = 1, batch_size: int = 32,
                 shuffle: bool = True, seed: int = 0, shuffle_buffer: int = 8, rank: int | None = None,
                 world_size: int | None = None, storage_options: dict | None = None):
        if over not in OVER:
            raise ValueError(f"over must be one of {OVER}, got {over!r}")
        self.url = str(url)[:-len(INDEX)].rstrip("/") if str(url).endswith(INDEX) else str(url).rstrip("/")
        self.storage_options = storage_options or {}
        idx = self._index()
        feats = idx["features"]
        context = idx["context"]
        if context is not None and (history - 1 > context or chunk - 1 > context):
            raise SelectionError(f"{self.url}: exported with context {context}: history and chunk "
                             f"must be <= {context + 1}; export again with a larger --context")
        images = [k for k, v in feats.items() if v.get("kind") == "image"]
        cams = images if cameras is None else [c if c in feats else IMAGE_PREFIX + c
                                               for c in ([cameras] if isinstance(cameras, str) else cameras)]
        bad = [c for c in cams if c not in images]
        if bad:
            raise SelectionError(f"{self.url}: no cameras {bad}; cameras: {images}")
        for k in (ACTION_NORM, ACTION_TOKENS):
            if k not in feats:
                raise StreamFormatError(f"{self.url}: the shards lack {k!r}; export them from a finalised store")
        lowdim = (STATE,) if STATE in feats else ()
        self.geometry = Geometry(int(history), int(chunk), tuple(cams),
                                 frozenset(c for c in cams if feats[c]["storage"]["codec"] == "jpeg"),
                                 lowdim, ACTION_NORM, ACTION_TOKENS)
        self.shapes = {k: tuple(v["shape"]) for k, v in feats.items()}
        self.dtypes = {k: v["dtype"] for k, v in feats.items()}
        self.emb_dim = int(idx["embedding_dim"])
        e, s = idx["episodes"], idx["segments"]
        self.ranges = Ranges(e["start"], e["length"], e["split"], s["episode_index"], s["start"],
                             s["end"], split=split, over=over, min_history=min_history, where=self.url)
        self.over, self.split, self.shuffle, self.seed = over, split, bool(shuffle), int(seed)
        self.shuffle_buffer, self.batch_size = max(1, int(shuffle_buffer)), int(batch_size)
        if rank is None or world_size is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shards = [f"{self.url}/{sh['url']}" for sh in idx["shards"]]
        self._shard_keys = [sh["keys"] for sh in idx["shards"]]
        self.context = context
        order = np.argsort(self.ranges.r_episode, kind="stable")
        self._ep_ranges = {}
        for r in order:
            self._ep_ranges.setdefault(int(self.ranges.r_episode[r]), []).append(int(r))
        self._shard_windows, self._shard_useful_samples = [], []
        for sh in idx["shards"]:
            counts = [self._sample_windows(*k) for k in sh["keys"]]
            self._shard_windows.append(sum(counts))
            self._shard_useful_samples.append(sum(1 for c in counts if c))
        self.plan = WindowSampler(len(self.ranges), self.batch_size, shuffle=False, rank=self.rank,
                                  world_size=self.world_size, drop_last=True)
        self.epoch, self.worker = 0, (0, 1)
        self._gen = None

    def _index(self) -> dict:
        path = f"{self.url}/{INDEX}"
        try:
            with fsspec.open(path, "r", **self.storage_options) as f:
                idx = json.load(f)
        except FileNotFoundError:
            raise StreamFormatError(f"{path}: no index.json (not an exported stream, or the export "
                                    "did not finish)") from None
        if idx.get("format") != FORMAT or idx.get("format_version") != FORMAT_VERSION:
            raise StreamFormatError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} index")
        return idx

    @property
    def num_windows(self) -> int:
        return len(self.ranges)

    @property
    def num_batches(self) -> int:
        """Batches per epoch on every rank."""
        return self.plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- the window stream of one consumer ------------------------------------------------------
    def _refs(self, sample: dict, rng) -> list[tuple[int, int]]:
        """(range, current step) of every window of ``sample`` in this stream's ranges."""
        m = sample["meta"]
        ep = int(m["episode_index"])
        base = int(self.ranges.ep_start[ep])
        a, b = base + m["own"][0], base + m["own"][1] - 1
        refs = []
        for r in self._ep_ranges.get(ep, ()):
            first = max(int(self.ranges.r_lo[r]) + self.ranges.min_history - 1, a)
            refs += [(r, e) for e in range(first, min(int(self.ranges.r_hi[r]), b) + 1)]
        if self.shuffle:
            rng.shuffle(refs)
        else:
            refs.reverse()  # popped from the end: in order
        return refs

    def _sample_windows(self, ep: int, own_lo: int, own_hi: int) -> int:
        """How many windows of this stream have their current step in a sample's own frames."""
        base = int(self.ranges.ep_start[ep])
        a, b = base + own_lo, base + own_hi - 1
        return sum(max(0, min(int(self.ranges.r_hi[r]), b) -
                       max(int(self.ranges.r_lo[r]) + self.ranges.min_history - 1, a) + 1)
                   for r in self._ep_ranges.get(ep, ()))

    def _samples(self, epoch: int, consumer: int, consumers: int):
        """This consumer's samples (only those holding windows), cycling with a new order per cycle.

        With at least as many useful shards as consumers, consumer ``g`` of ``G`` reads shards
        ``g, g+G, ...`` of the epoch's shard order; otherwise every consumer reads all of them and
        keeps useful samples ``g, g+G, ...``, and a consumer left with none reads them all.
        """
        useful = [i for i, n in enumerate(self._shard_windows) if n]
        n_samples = sum(self._shard_useful_samples[i] for i in useful)
        if not useful:
            raise StreamFormatError(f"{self.url}: no windows for this split and 'over' in the shards")
        cycle = 0
        while True:
            order = np.asarray(useful)
            if self.shuffle:
                order = order[np.random.default_rng([self.seed, epoch, cycle]).permutation(len(order))]
            by_shard = len(order) >= consumers
            keep_all = not by_shard and consumer >= n_samples
            k = yielded = 0
            mine = order[consumer::consumers] if by_shard else order
            for s in mine:
                for sample in iter_samples(self.shards[s], self.storage_options, self._shard_keys[s]):
                    m = sample["meta"]
                    if not self._sample_windows(m["episode_index"], *m["own"]):
                        continue
                    k += 1
                    if by_shard or keep_all or (k - 1) % consumers == consumer:
                        yielded += 1
                        yield sample
            if not yielded:  # never cycle on without yielding: the shards disagree with the index
                raise StreamFormatError(
                    f"{self.url}: shards {[self.shards[s] for s in mine]} hold no sample with "
                    f"windows for split {self.split!r}, although index.json says they do")
            cycle += 1

    def _windows(self, epoch: int, worker: int, workers: int):
        """(sample rows, meta, range, current step) drawn through the shuffle pool, forever."""
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        rng = np.random.default_rng([self.seed, epoch, consumer])
        pool: list[list] = []
        samples = self._samples(epoch, consumer, consumers)
        while True:
            while len(pool) < self.shuffle_buffer:
                s = next(samples)
                m = s["meta"]
                self._check_frames(s)
                base = int(self.ranges.ep_start[m["episode_index"]]) + m["frame_start"]
                pool.append([_SampleRows(s, base, f"{s['__url__']} sample {s['__key__']}"), m,
                             self._refs(s, rng)])
            j = int(rng.choice(len(pool), p=_weights(pool))) if self.shuffle else 0
            rows, m, refs = pool[j]
            r, e = refs.pop()
            if not refs:
                pool.pop(j)
            yield rows, m, r, e

    def _check_frames(self, sample: dict) -> None:
        """Refuse a sample whose frames do not cover what its windows read (see the module)."""
        m, where = sample["meta"], f"{sample['__url__']} sample {sample['__key__']}"
        ep, (lo, hi) = int(m["episode_index"]), m["own"]
        n_ep = int(self.ranges.ep_length[ep]) if 0 <= ep < len(self.ranges.ep_length) else None
        if n_ep is None or n_ep != m["episode_length"]:
            raise StreamFormatError(f"{where}: meta.json says episode {ep} of "
                                    f"{m['episode_length']} frames; index.json disagrees")
        want_lo, want_hi = ((0, n_ep) if self.context is None else
                            (max(0, lo - self.context), min(n_ep, hi + self.context)))
        got = {k: len(v) for k, v in sample.items() if k not in ("__key__", "__url__", "meta")}
        bad = {k: n for k, n in got.items() if n != want_hi - want_lo}
        if m["frame_start"] != want_lo or bad:
            raise StreamFormatError(f"{where}: expected frames [{want_lo}, {want_hi}) of episode "
                                    f"{ep}, the sample holds {bad or got} from {m['frame_start']}")

    def _fill(self, item, out: dict) -> tuple[str, str]:
        rows, m, r, e = item
        rg = self.ranges
        ep = int(rg.r_episode[r])
        cut_window(out, rows, lo=int(rg.r_lo[r]), hi=int(rg.r_hi[r]), e=e,
                   ep_start=int(rg.ep_start[ep]), geometry=self.geometry)
        seg = int(rg.r_segment[r]) if self.over == "segments" else rg.covering(ep, e)
        info = next((s for s in m["segments"] if s["segment_index"] == seg), None) if seg >= 0 else None
        if seg >= 0 and info is None:
            raise StreamFormatError(f"{rows.where}: meta.json lacks segment {seg}")
        put_language(out, None if info is None else
                     np.asarray(info["embedding"] if info["embedding"] is not None else
                                np.zeros(self.emb_dim), np.float32))
        out["episode_index"][...] = ep
        out["index"][...] = rg.window_index(r, e)
        return (info["instruction"], info["task"]) if info else ("", "")

    # -- torch IterableDataset ------------------------------------------------------------------
    def sample_spec(self) -> dict:
        return window_spec(self.geometry, self.shapes, self.dtypes, self.emb_dim)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, W = (info.id, info.num_workers) if info else (0, 1)
        quota = len(range(w, self.num_batches, W)) * self.batch_size
        gen = self._windows(self.epoch, w, W)
        spec = self.sample_spec()
        for _ in range(quota):
            out = {k: np.empty(shape, dt) for k, (shape, dt) in spec.items()}
            out["instruction"], out["task"] = self._fill(next(gen), out)
            yield out

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    # -- batch path -----------------------------------------------------------------------------
    def worker_init(self, worker_id: int, num_workers: int) -> None:
        self.worker, self._gen = (worker_id, num_workers), None

    def fill_batch(self, out: dict, task) -> dict:
        epoch, k = task
        w, W = self.worker
        if self._gen is None or self._gen[0] != epoch or self._gen[1] != k:
            gen = self._windows(epoch, w, W)
            for _ in range(((k - w) // W) * self.batch_size):  # resume: skip this worker's earlier batches
                next(gen)
            self._gen = [epoch, k, gen]
        gen = self._gen[2]
        strings = [self._fill(next(gen), {n: v[j, ...] for n, v in out.items()})
                   for j in range(self.batch_size)]
        self._gen[1] = k + W
        return {"instruction": [s[0] for s in strings], "task": [s[1] for s in strings],
                "n": self.batch_size}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_gen"] = None
        return state

    def loader(self, batch_size: int | None = None, *, shuffle: bool | None = None,
               seed: int | None = None, rank: int | None = None, world_size: int | None = None,
               drop_last: bool = True, **options):
        """The batch loader: ``batch_size`` windows per batch, ``num_batches`` per epoch per rank.

        Takes what ``WindowDataset.loader`` takes: ``batch_size``, ``shuffle``, ``seed``,
        ``rank``, ``world_size`` (None: this stream's own) and the ``options`` of
        :func:`vladata.windows.batch_loader` (num_workers, prefetch, pin_memory,
        multiprocessing_context, timeout). A stream serves whole batches only: ``drop_last``
        must stay True.
        """
        if not drop_last:
            raise ValueError("a WindowStream serves whole batches only (drop_last=True); read "
                             "the store itself for every window of a split")
        given = {"batch_size": batch_size, "shuffle": shuffle, "seed": seed, "rank": rank,
                 "world_size": world_size}
        stream = self._with(**{k: v for k, v in given.items() if v is not None})
        return batch_loader(stream, _StreamPlan(stream), stream.batch_size, **options)

    def _with(self, **changes) -> "WindowStream":
        """This stream with other batch settings (a copy; the plan rebuilt), or itself."""
        if all(getattr(self, k) == v for k, v in changes.items()):
            return self
        if changes.get("batch_size", 1) < 1:
            raise ValueError(f"batch_size must be >= 1, got {changes['batch_size']}")
        out = copy.copy(self)
        for k, v in changes.items():
            setattr(out, k, type(getattr(self, k))(v))
        out.plan = WindowSampler(len(out.ranges), out.batch_size, shuffle=False, rank=out.rank,
                                 world_size=out.world_size, drop_last=True)
        out._gen = None
        return out


def _weights(pool) -> np.ndarray:
    sizes = np.asarray([len(p[2]) for p in pool], float)
    return sizes / sizes.sum()


class _StreamPlan(WindowSampler):
    """Batch ``k`` of an epoch is the task ``(epoch, k)``: worker ``k % W`` takes its next windows."""

    def __init__(self, stream: WindowStream):
        super().__init__(stream.num_windows, stream.batch_size, shuffle=stream.shuffle,
                         seed=stream.seed, rank=stream.rank, world_size=stream.world_size)

    def batch(self, k: int, epoch: int | None = None):
        return (self.epoch if epoch is None else epoch, k)
