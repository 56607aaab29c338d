"""Opening a store: :func:`open` -> :class:`Dataset`.

A :class:`Dataset` is a thin, read-only view of a complete store (its layout is documented in
:mod:`vladata.store.layout`): metadata tables as polars DataFrames, statistics as numpy arrays,
features as zarr arrays, whole episodes as numpy arrays, and training windows
(:meth:`Dataset.windows`). Nothing is loaded until asked for.
"""

from __future__ import annotations

import builtins
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import zarr

from vladata.episode import FeatureSpec
from vladata.errors import IncompleteStoreError, SelectionError, StoreError
from vladata.store import fs, layout


def open(path: str | os.PathLike) -> "Dataset":  # noqa: A001 -- mirrors zarr.open / builtins.open
    """Open the complete store at ``path``; raise :class:`IncompleteStoreError` if unfinished.

    Cheap integrity checks run first (:func:`vladata.store.manifest.check_open`): a truncated or
    edited metadata file, or arrays whose length disagrees with the episodes table, raise
    :class:`StoreError` naming the file. ``vladata verify`` checks every byte.
    """
    p = fs.to_path(path)  # a local Path, or a UPath for a URL (s3://...): vladata.store.fs
    if not (p / "zarr.json").exists():
        raise StoreError(f"{p}: not a vlakit store (no zarr.json)")
    if not (p / layout.MANIFEST).exists():
        raise IncompleteStoreError(f"{p}: the store is incomplete (no {layout.MANIFEST}): its "
                                   "conversion was interrupted or failed; rerun it with --resume")
    if (p / layout.RESTATS).exists():
        raise IncompleteStoreError(f"{p}: a `vladata stats` run was interrupted while replacing "
                                   f"the statistics ({layout.RESTATS} is there), so they may not "
                                   f"match the data: rerun `vladata stats {p}`")
    from vladata.store.manifest import check_open
    check_open(p)
    return Dataset(p)


class Dataset:
    """A complete vlakit store. See the module docstring."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.root = zarr.open_group(fs.zarr_path(path), mode="r")
        attrs = self.root.attrs.get("vlakit")
        if not attrs:
            raise StoreError(f"{path}: zarr.json carries no 'vlakit' attributes")
        version = attrs.get("format_version")
        if version not in layout.READABLE_VERSIONS:
            raise StoreError(f"{path}: store format version {version} is not readable by this "
                             f"vlakit (reads {layout.READABLE_VERSIONS}); upgrade vlakit")
        self.info: dict = attrs
        self.features = {k: FeatureSpec.from_dict(v) for k, v in attrs["features"].items()}

    # -- tables and statistics -----------------------------------------------------------------
    @cached_property
    def episodes(self) -> pl.DataFrame:
        return fs.read_parquet(fs.to_path(self.path) / layout.EPISODES)

    @cached_property
    def segments(self) -> pl.DataFrame:
        return fs.read_parquet(fs.to_path(self.path) / layout.SEGMENTS)

    @cached_property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        from vladata.store.finalize import load_stats
        return load_stats(self.path)[0]

    @property
    def num_frames(self) -> int:
        return int(self.info["num_frames"])

    def __len__(self) -> int:
        return int(self.info["num_episodes"])

    # -- frames --------------------------------------------------------------------------------
    @cached_property
    def _reader(self):
        from vladata.store.shard_reader import StoreReader
        return StoreReader(self.path)

    def array(self, name: str) -> zarr.Array:
        """The zarr array of feature ``name``.

        zarr-python checks each chunk's CRC32C but reads a *missing* chunk as zeros;
        :meth:`episode`, the loaders and ``vladata verify`` refuse it.
        """
        if name not in self.info["features"]:
            raise SelectionError(f"{self.path}: no feature {name!r}; features: {sorted(self.features)}")
        return self.root[f"{layout.DATA}/{name}"]

    def episode(self, i: int, keys: builtins.list[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of episode ``i``: feature name -> array (T, ...), images decoded.

        The dict is an :class:`~vladata.viz.EpisodeView`: a notebook shows it as filmstrips and
        plots over time (``.plot()`` gives the figure).
        """
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range: the store has {n} episodes")
        i %= n
        row = self.episodes.row(i, named=True)
        lo, hi = row["start"], row["start"] + row["length"]
        out = {}
        for name in keys or self.features:
            self.array(name)  # a KeyError naming the features for an unknown name
            arr = self._reader[name]  # refuses a missing chunk (zarr-python would read zeros)
            codec = self.info["features"][name]["storage"]["codec"]
            if codec == "jpeg":
                from vladata.images import decode_jpeg
                bgr = arr.attrs.get("channel_order") == "bgr"
                out[name] = np.stack([decode_jpeg(b, bgr=bgr) for b in arr.read_items(lo, hi)])
            elif codec in layout.VIDEO_CODECS:
                from vladata.store.video import VideoRows
                out[name] = VideoRows(arr).read(lo, hi)
            else:
                out[name] = arr.read(lo, hi)
        from vladata.viz import EpisodeView
        return EpisodeView(out, ds=self, index=i)

    def windows(self, **kwargs):
        """Training windows of this store: see :class:`vladata.loading.windows.WindowDataset`."""
        from vladata.loading.windows import WindowDataset
        return WindowDataset(self, **kwargs)

    # -- summary -------------------------------------------------------------------------------
    def summary(self) -> dict:
        """What ``vladata inspect`` prints: a JSON-able description of the store."""
        eps = self.episodes
        splits = {s: {"episodes": int(c), "frames": int(f)} for s, c, f in
                  eps.group_by("split", maintain_order=True)
                     .agg(pl.len(), pl.col("length").sum()).iter_rows()}
        return {
            "path": self.path, "format_version": self.info["format_version"],
            "source": self.info["source"], "fps": self.info["fps"],
            "frames": self.num_frames, "episodes": len(self), "segments": self.segments.height,
            "splits": splits,
            "features": {k: {x: v[x] for x in ("dtype", "shape", "kind", "names") if x in v}
                         | {"codec": v["storage"]["codec"]}
                         for k, v in self.info["features"].items()},
            "stats_split": self.info.get("stats_split"),
            "normalization": self.info.get("normalization"),
            "tokenizer": self.info.get("tokenizer"),
        }

    def _repr_html_(self) -> str:
        from vladata.viz import summary_html
        return summary_html(self)

    def plot_distribution(self, feature: str = "action"):
        """Histogram of each dimension of ``feature`` with q01/q99 marked (a matplotlib Figure)."""
        from vladata.viz import plot_distribution
        return plot_distribution(self, feature)

    def __repr__(self) -> str:
        return (f"vladata.Dataset({self.path!r}: {len(self)} episodes, {self.num_frames} frames, "
                f"{len(self.features)} features)")
