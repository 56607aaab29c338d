"""Writing a store's streaming form: :func:`export_wds` (layout: :mod:`vladata.stream`)."""

from __future__ import annotations

import io
import json
import posixpath
import struct
import tarfile

import fsspec
import numpy as np

from vladata.errors import SelectionError
from vladata.store import layout
from vladata.store.shard_reader import StoreReader
from vladata.stream import output
from vladata.stream.format import FORMAT, FORMAT_VERSION
from vladata.loading.windows import embedding_matrix

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
               features=None, storage_options: dict | None = None,
               overwrite: bool = False) -> dict:
    """Write ``ds`` (a Dataset or store path) as WebDataset shards at ``out``; return index.json.

    ``out`` must be new, empty or (with ``overwrite=True``) a previous vlakit export, whose
    index and shards are then deleted first (:mod:`vladata.stream.output`).
    """
    from vladata.dataset import open as open_dataset
    if isinstance(ds, str) or not hasattr(ds, "info"):
        ds = open_dataset(ds)
    if samples != "episode" and not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be 'episode' or a positive frame count, got {samples!r}")
    if context < 0 or shard_size < 1:
        raise ValueError(f"context must be >= 0 and shard_size >= 1, got {context}, {shard_size}")
    feats = ds.info["features"]
    names = list(features or feats)
    missing = [n for n in names if n not in feats]
    if missing:
        raise SelectionError(f"{ds.path}: no features {missing}; features: {sorted(feats)}")
    jpeg = {n for n in names if feats[n]["storage"]["codec"] == "jpeg"}
    unfit = [n for n in names if feats[n]["storage"]["codec"] in layout.VIDEO_CODECS
             or feats[n]["storage"].get("channel_order", "rgb") != "rgb"]
    if unfit:
        raise SelectionError(f"{ds.path}: {unfit} are stored as video or as channel-swapped "
                             "JPEG, which the stream format does not carry; export a copy made "
                             "with `vladata transcode STORE OUT --image-codec jpeg` (or raw)")
    reader = StoreReader(ds.path)
    eps, segs = ds.episodes, ds.segments
    seg_rows = segs.to_dicts()
    by_ep: dict[int, list[dict]] = {}
    for s in seg_rows:
        by_ep.setdefault(s["episode_index"], []).append(s)
    fs, root = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    output.prepare(fs, root, overwrite=overwrite, shown=str(out))
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
                name = output.shard_name(len(shards))
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
    output.finish(fs, root, index)
    return index
