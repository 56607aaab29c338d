"""The streaming form of a store: WebDataset tar shards, and windows cut from them in the worker.

Layout written by :func:`export_wds` (``OUT`` a local directory or an fsspec URL)::

    OUT/shard-000000.tar ...   WebDataset shards: consecutive members sharing a key form a sample
    OUT/index.json             written last: format, settings, the episode and segment bounds,
                               the features and the shard list (samples, windows-free counts)

One sample is one episode (``samples="episode"``) or one fixed-length piece of an episode
(``samples=N`` frames) -- never one window, which would store every frame ``h`` times. A piece
also carries up to ``context`` frames either side, so every window whose current step lies in the
piece can be cut from it alone (``history - 1 <= context`` and ``chunk - 1 <= context``). Members
of the sample with key ``e<episode>_<first own frame>``:

- ``meta.json``: ``episode_index``, ``episode_length``, ``split``, ``frame_start`` (offset of the
  first stored frame), ``own`` ([first, end) offsets of the frames whose windows this sample
  yields), ``segments`` (those overlapping ``own``: index, start, end, instruction, task,
  embedding);
- ``<feature>.npy`` (T, ...) for every feature (numpy format, no pickles), except JPEG images:
  ``<feature>.jpegs``, the frames' JPEG bytes as numcodecs' vlen-bytes (uint32 count, then uint32
  length + bytes per frame, little-endian).

:class:`WindowStream` reads the shards (local paths or any fsspec URL, ``s3://`` included), cuts
the same windows as :class:`vladata.windows.WindowDataset` (same semantics and window ``index``)
in the worker, shuffles them through a pool of ``shuffle_buffer`` samples, and splits the stream by
rank and worker. Every rank makes ``(num_windows // world_size) // batch_size`` batches per epoch:
a consumer whose shards run out starts over on them (new order), so uneven shards never leave a
rank waiting at an epoch end; an epoch therefore may repeat or skip a few windows.
"""

from __future__ import annotations

import io
import json
import posixpath
import struct
import tarfile

import fsspec
import numpy as np
import torch.utils.data

from vladata.errors import StoreError
from vladata.images import decode_jpeg
from vladata.sampler import WindowSampler
from vladata.store.shard_reader import StoreReader, decode_vlen
from vladata.windows import OVER, Geometry, Ranges, cut_window, embedding_matrix, put_language, window_spec

INDEX = "index.json"
FORMAT, FORMAT_VERSION = "vlakit-wds", 1


class StreamFormatError(StoreError):
    """A tar shard or index of the streaming form is missing, corrupt or not what index.json says."""


# -- export ------------------------------------------------------------------------------------

def _pack_vlen(items: list[bytes]) -> bytes:
    parts = [struct.pack("<I", len(items))]
    for b in items:
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def export_wds(ds, out: str, *, samples="episode", shard_size: int = 1 << 30, context: int = 31,
               features=None, storage_options: dict | None = None) -> dict:
    """Write ``ds`` (a Dataset or store path) as WebDataset shards at ``out``; return index.json."""
    import vladata
    if isinstance(ds, str) or not hasattr(ds, "info"):
        ds = vladata.open(ds)
    if samples != "episode" and not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be 'episode' or a positive frame count, got {samples!r}")
    if context < 0 or shard_size < 1:
        raise ValueError(f"context must be >= 0 and shard_size >= 1, got {context}, {shard_size}")
    feats = ds.info["features"]
    names = list(features or feats)
    missing = [n for n in names if n not in feats]
    if missing:
        raise KeyError(f"{ds.path}: no features {missing}; features: {sorted(feats)}")
    jpeg = {n for n in names if feats[n]["storage"]["codec"] == "jpeg"}
    reader = StoreReader(ds.path)
    eps, segs = ds.episodes, ds.segments
    seg_rows = segs.to_dicts()
    by_ep: dict[int, list[dict]] = {}
    for s in seg_rows:
        by_ep.setdefault(s["episode_index"], []).append(s)
    fs, root = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    if fs.exists(posixpath.join(root, INDEX)):  # an old index must not describe the new shards
        fs.rm(posixpath.join(root, INDEX))
    shards, cur, tar = [], None, None

    def close():
        if tar is not None:
            tar.close()
            cur["file"].close()
            shards.append({k: cur[k] for k in ("url", "samples", "frames", "bytes", "keys")})

    for ep in eps.iter_rows(named=True):
        n_ep, start = ep["length"], ep["start"]
        step = n_ep if samples == "episode" else samples
        for own_lo in range(0, n_ep, max(step, 1)):
            own_hi = min(n_ep, own_lo + step)
            lo, hi = (own_lo, own_hi) if samples == "episode" else (max(0, own_lo - context),
                                                                   min(n_ep, own_hi + context))
            key = f"e{ep['episode_index']:07d}_{own_lo:07d}"
            members = {"meta.json": json.dumps({
                "episode_index": ep["episode_index"], "episode_length": n_ep, "split": ep["split"],
                "frame_start": lo, "own": [own_lo, own_hi],
                "segments": [s for s in by_ep.get(ep["episode_index"], [])
                             if s["start"] < own_hi and s["end"] >= own_lo]}).encode()}
            for n in names:
                if n in jpeg:
                    members[f"{n}.jpegs"] = _pack_vlen(reader[n].read_items(start + lo, start + hi))
                else:
                    members[f"{n}.npy"] = _npy(reader[n].read(start + lo, start + hi))
            size = sum(len(v) + 1024 for v in members.values())
            if tar is None or (cur["bytes"] and cur["bytes"] + size > shard_size):
                close()
                name = f"shard-{len(shards):06d}.tar"
                f = fs.open(posixpath.join(root, name), "wb")
                tar = tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT)
                cur = {"url": name, "samples": 0, "frames": 0, "bytes": 0, "keys": [], "file": f}
            for m, data in members.items():
                _add(tar, f"{key}.{m}", data)
            cur["samples"] += 1
            cur["keys"].append([ep["episode_index"], own_lo, own_hi])
            cur["frames"] += own_hi - own_lo
            cur["bytes"] += size
    close()
    emb = embedding_matrix(segs["embedding"].to_list() if "embedding" in segs.columns else [])
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "store": ds.path,
             "samples": samples, "context": None if samples == "episode" else context,
             "features": {n: feats[n] for n in names},
             "info": {k: ds.info.get(k) for k in ("source", "fps", "normalization", "tokenizer")},
             "embedding_dim": int(emb.shape[1]),
             "episodes": {k: eps[k].to_list() for k in ("episode_index", "start", "length", "split")},
             "segments": {k: segs[k].to_list() for k in ("segment_index", "episode_index", "start", "end")},
             "shards": shards}
    with fs.open(posixpath.join(root, INDEX), "w") as f:
        json.dump(index, f)
    return index


# -- reading -----------------------------------------------------------------------------------

def iter_samples(url: str, storage_options: dict | None = None):
    """Samples of one tar shard: dicts of member extension -> parsed content, plus ``__key__``."""
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f, \
                tarfile.open(fileobj=f, mode="r|") as tar:
            sample: dict = {}
            for m in tar:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                key, _, ext = base.partition(".")
                if sample and key != sample["__key__"]:
                    yield _parse(sample, url)
                    sample = {}
                sample["__key__"] = key
                sample[ext] = tar.extractfile(m).read()
            if sample:
                yield _parse(sample, url)
    except (tarfile.TarError, EOFError) as e:
        raise StreamFormatError(f"{url}: not a readable tar shard ({e})") from e
    except FileNotFoundError as e:
        raise StreamFormatError(f"{url}: shard not found") from e


def _parse(sample: dict, url: str) -> dict:
    where = f"{url} sample {sample['__key__']}"
    if "meta.json" not in sample:
        raise StreamFormatError(f"{where}: no meta.json")
    out = {"__key__": sample["__key__"], "meta": json.loads(sample["meta.json"])}
    for ext, data in sample.items():
        if ext.endswith(".npy"):
            out[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
        elif ext.endswith(".jpegs"):
            out[ext[:-6]] = decode_vlen(memoryview(data), where)
    return out


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
            raise ValueError(f"{self.url}: exported with context {context}: history and chunk "
                             f"must be <= {context + 1}; export again with a larger --context")
        images = [k for k, v in feats.items() if v.get("kind") == "image"]
        cams = images if cameras is None else [c if c in feats else f"observation.images.{c}"
                                               for c in ([cameras] if isinstance(cameras, str) else cameras)]
        bad = [c for c in cams if c not in images]
        if bad:
            raise KeyError(f"{self.url}: no cameras {bad}; cameras: {images}")
        for k in ("action.norm", "action.tokens"):
            if k not in feats:
                raise StreamFormatError(f"{self.url}: the shards lack {k!r}; export them from a finalised store")
        lowdim = ("observation.state",) if "observation.state" in feats else ()
        self.geometry = Geometry(int(history), int(chunk), tuple(cams),
                                 frozenset(c for c in cams if feats[c]["storage"]["codec"] == "jpeg"),
                                 lowdim, "action.norm", "action.tokens")
        self.shapes = {k: tuple(v["shape"]) for k, v in feats.items()}
        self.dtypes = {k: v["dtype"] for k, v in feats.items()}
        self.emb_dim = int(idx["embedding_dim"])
        e, s = idx["episodes"], idx["segments"]
        self.ranges = Ranges(e["start"], e["length"], e["split"], s["episode_index"], s["start"],
                             s["end"], split=split, over=over, min_history=min_history, where=self.url)
        self.over, self.shuffle, self.seed = over, bool(shuffle), int(seed)
        self.shuffle_buffer, self.batch_size = max(1, int(shuffle_buffer)), int(batch_size)
        if rank is None or world_size is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shards = [f"{self.url}/{sh['url']}" for sh in idx["shards"]]
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
            k = 0
            for s in (order[consumer::consumers] if by_shard else order):
                for sample in iter_samples(self.shards[s], self.storage_options):
                    m = sample["meta"]
                    if not self._sample_windows(m["episode_index"], *m["own"]):
                        continue
                    k += 1
                    if by_shard or keep_all or (k - 1) % consumers == consumer:
                        yield sample
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
                base = int(self.ranges.ep_start[m["episode_index"]]) + m["frame_start"]
                pool.append([_SampleRows(s, base, f"{self.url} sample {s['__key__']}"), m,
                             self._refs(s, rng)])
            j = int(rng.choice(len(pool), p=_weights(pool))) if self.shuffle else 0
            rows, m, refs = pool[j]
            r, e = refs.pop()
            if not refs:
                pool.pop(j)
            yield rows, m, r, e

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

    def loader(self, *, num_workers: int = 2, prefetch: int = 2, pin_memory: bool = False,
               multiprocessing_context: str | None = None, timeout: float = 300.0):
        """The batch loader: ``batch_size`` windows per batch, ``num_batches`` per epoch per rank."""
        from vladata.batching import BatchLoader
        return BatchLoader(self, _StreamPlan(self), batch_size=self.batch_size,
                           num_workers=num_workers, prefetch=prefetch, pin_memory=pin_memory,
                           multiprocessing_context=multiprocessing_context, timeout=timeout)


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


__all__ = ["export_wds", "iter_samples", "WindowStream", "StreamFormatError", "INDEX"]
