"""A finished vlakit store read back as a source: what ``vladata transcode`` converts from.

Converting a store into a new store with another image codec runs through the ordinary writer
(:func:`vladata.store.writer.convert`), so its output rules, parts, resume and statistics apply
unchanged. The episodes (order, splits, source ids, metadata), language segments (embeddings
included), features and source facts are the store's own; the derived arrays (``action.norm``,
``action.tokens``) are not features: the writer derives them again, with the store's recorded
tokenizer (:func:`tokenizer_of`). Images come out as pixels (JPEG and video frames decoded);
``read_encoded`` hands a JPEG camera's bytes over unchanged, so JPEG -> JPEG copies them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vladata.episode import EncodedFrames, EpisodeInfo, FeatureSpec, Segment
from vladata.errors import SourceFormatError, StoreError
from vladata.store import layout, manifest
from vladata.store.shard_reader import StoreReader
from vladata.store.video import VideoRows


class StoreSource:
    """The episodes of the complete store at ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        manifest.check_open(self.path)  # complete, not mid-rewrite: else a StoreError
        self._attrs = json.loads((Path(self.path) / "zarr.json").read_text())["attributes"]["vlakit"]
        self.name = self._attrs["source"]
        self.fps = float(self._attrs["fps"])
        self._reader = None
        self._video: dict[str, VideoRows] = {}

    def __getstate__(self):
        return {"path": self.path, "_attrs": self._attrs, "name": self.name, "fps": self.fps,
                "_reader": None, "_video": {}}

    @property
    def reader(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(self.path)
        return self._reader

    def _storage(self, name: str) -> dict:
        return self._attrs["features"][name]["storage"]

    def features(self) -> dict[str, FeatureSpec]:
        return {k: FeatureSpec.from_dict(v) for k, v in self._attrs["features"].items()
                if not v.get("derived")}

    def plan(self) -> list[EpisodeInfo]:
        import polars as pl
        root = Path(self.path)
        eps = pl.read_parquet(root / layout.EPISODES)
        segs = pl.read_parquet(root / layout.SEGMENTS)
        by_ep: dict[int, list[Segment]] = {}
        for s in segs.iter_rows(named=True):
            emb = None if s["embedding"] is None else np.asarray(s["embedding"], np.float32)
            by_ep.setdefault(s["episode_index"], []).append(
                Segment(s["start"], s["end"], s["instruction"], s["task"], emb))
        return [EpisodeInfo(length=int(e["length"]), source_id=e["source_id"], split=e["split"],
                            segments=by_ep.get(int(e["episode_index"]), []),
                            metadata=json.loads(e["metadata"] or "{}"))
                for e in eps.iter_rows(named=True)]

    def _rows(self, i: int, lo: int, hi: int | None) -> tuple[int, int]:
        import polars as pl
        if not hasattr(self, "_starts"):
            eps = pl.read_parquet(Path(self.path) / layout.EPISODES)
            self._starts = eps["start"].to_numpy()
            self._lengths = eps["length"].to_numpy()
        n = int(self._lengths[i])
        hi = n if hi is None else hi
        if not 0 <= lo <= hi <= n:
            raise IndexError(f"frames {lo}..{hi} outside episode {i} of {n} frames")
        return int(self._starts[i]) + lo, int(self._starts[i]) + hi

    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        return self._read(i, lo, hi, encoded=False)

    def encoded_images(self) -> dict[str, str]:
        return {k: s.get("channel_order", "rgb") for k in self.features()
                if (s := self._storage(k))["codec"] == "jpeg"}

    def read_encoded(self, i: int, lo: int = 0, hi: int | None = None) -> dict:
        return self._read(i, lo, hi, encoded=True)

    def _read(self, i: int, lo: int, hi: int | None, *, encoded: bool) -> dict:
        a, b = self._rows(i, lo, hi)
        out = {}
        for name, spec in self.features().items():
            arr = self.reader[name]
            codec = self._storage(name)["codec"]
            try:
                if codec in layout.VIDEO_CODECS:
                    rows = self._video.get(name) or self._video.setdefault(name, VideoRows(arr))
                    out[name] = rows.read(a, b)
                elif codec == "jpeg":
                    frames = EncodedFrames(arr.read_items(a, b), spec.shape,
                                           channel_order=self._storage(name).get(
                                               "channel_order", "rgb"),
                                           file=arr.path, episode=i, key=name, first=lo)
                    out[name] = frames if encoded else np.asarray(frames)
                else:
                    out[name] = arr.read(a, b)
            except StoreError as e:
                raise SourceFormatError(str(e), file=self.path, episode=i, key=name) from None
        return out

    def describe(self) -> dict:
        return dict(self._attrs.get("source_info", {}))


def tokenizer_of(path: str | os.PathLike):
    """The action tokenizer a finished store recorded (None if it has none)."""
    from vladata.tokenize import ActionTokenizer
    attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]["vlakit"]
    return ActionTokenizer.from_dict(attrs["tokenizer"]) if attrs.get("tokenizer") else None


__all__ = ["StoreSource", "tokenizer_of"]
