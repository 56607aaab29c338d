"""The on-disk layout of a vlakit store (format version 2) and the arrays it holds.

A store is one Zarr v3 group, readable by any Zarr v3 reader (``zarr.open_group(path)``)::

    <name>.vla/
      zarr.json                  group; attributes["vlakit"] = store attributes (see below)
      data/zarr.json             group of per-frame arrays, all episodes concatenated on axis 0
      data/<feature>/            one array per feature, shape (N, *frame_shape):
                                   image, raw/lz4: chunks (1, H, W, C) inside shards of
                                     IMAGE_SHARD frames (sharding_indexed codec, index at the end)
                                   image, jpeg: 1-d vlen-bytes array (N,), one JPEG per element,
                                     chunks (1,) inside shards of IMAGE_SHARD frames; attributes
                                     {"encoding": "jpeg", "frame_shape": [H, W, C]}
                                   depth, and any feature over FRAME_CHUNK_ABOVE values a
                                     frame: per-frame chunks in shards, as raw images
                                   low-dim: chunks (BLOCK, D), no sharding
      data/action.norm           float32 (N, A): normalised ``action`` (written at finalize)
      data/action.tokens         int32 (N, A): token ids of ``action.norm`` (written at finalize)
      meta/plan.json             the conversion plan (episodes, parts); written first
      meta/parts/part-NNNNN.json a part's done-marker (+ .stats.npz, its statistics state)
      meta/episodes.parquet      episode_index, start (row in data/), length, split, source_id, metadata
      meta/segments.parquet      segment_index, episode_index, start, end (inclusive, offsets within
                                 the episode), instruction, task, embedding (list<float32> or null)
      meta/stats.json            per-feature, per-dimension statistics (schemas/stats.schema.json)
      meta/fast.json, meta/fast_tokenizer.json   optional FAST action tokenizer: settings and
                                 BPE (`vladata stats --fast`; vladata.fast)
      meta/paraphrases.json      optional, user-written: more phrasings per task (vlatrain.language)
      meta/manifest.json         written LAST: its presence is what makes a store complete; lists
                                 every other file with its size and CRC32C (vladata/store/manifest.py)
      .vlakit-conversion         written FIRST, removed after the manifest: marks an unfinished
                                 conversion as vlakit's (see vladata.store.output)
      meta/staging/, meta/restats.json   only while statistics are rewritten (see
                                 vladata.store.finalize); a store with restats.json is not opened

Checksums (format version 2): every chunk of every array ends with its CRC32C (Zarr v3's
``crc32c`` codec, the last codec of the chunk's chain: inside ``sharding_indexed`` for sharded
arrays, whose index carries its own ``crc32c`` too), so zarr-python verifies each chunk it reads
as well as vlakit's reader; and every chunk is written, zeros included (``write_empty_chunks``),
so a missing chunk or shard file is damage, never an implicit fill. Version 1 stores (no chunk
checksums, all-zero chunks possibly absent, a manifest without the file list) stay readable.

Store attributes (``zarr.json`` -> ``attributes.vlakit``, schemas/store.schema.json):
``format_version``, ``source`` (name), ``source_info`` (gripper convention, ...), ``fps``,
``num_frames``, ``num_episodes``, ``features`` (name -> FeatureSpec dict + ``"storage"``),
and after finalize ``stats_split``, ``normalization`` and ``tokenizer``.

Parts: rows ``[k*part_frames, (k+1)*part_frames)`` form part k. ``part_frames`` is a multiple of
``BLOCK``, itself a multiple of ``IMAGE_SHARD``, so parts never share a shard or chunk file and
can be written by separate processes without locks.
"""

from __future__ import annotations

import warnings

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

from vladata.episode import FeatureSpec

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WRITE_EMPTY = {"array.write_empty_chunks": True}  # zarr.config: all-zero chunks are written too
IMAGE_SHARD = 64     # frames per image shard file
BLOCK = 1024         # rows per low-dim chunk; parts are multiples of it
IMAGE_CODECS = ("raw", "lz4", "jpeg")
FRAME_CHUNK_ABOVE = 4096  # values per frame above which a non-image feature gets per-frame chunks

META = "meta"
DATA = "data"
MANIFEST = "meta/manifest.json"
PLAN = "meta/plan.json"
PARTS = "meta/parts"
EPISODES = "meta/episodes.parquet"
SEGMENTS = "meta/segments.parquet"
STATS = "meta/stats.json"

# canonical feature keys (data/<key>) and the window fields named after them
IMAGE_PREFIX = "observation.images."   # + camera name: one image feature per camera
STATE = "observation.state"            # the robot's proprioceptive state (low-dim)
ACTION = "action"                      # actions in the dataset's units
ACTION_NORM = "action.norm"            # normalised actions (written at finalize)
ACTION_TOKENS = "action.tokens"        # token ids of the normalised actions (written at finalize)
RESTATS = "meta/restats.json"  # present only while `vladata stats` swaps in new statistics
STAGING = "meta/staging"       # derived arrays are written here first, then renamed into data/


def storage_for(spec: FeatureSpec, image_codec: str) -> dict:
    """How a feature is laid out on disk; recorded per feature in the store attributes."""
    if spec.kind == "image":
        if image_codec not in IMAGE_CODECS:
            raise ValueError(f"image codec {image_codec!r} is not one of {IMAGE_CODECS}")
        return {"codec": image_codec, "chunk_frames": 1, "shard_frames": IMAGE_SHARD}
    if spec.kind == "depth" or int(np.prod(spec.shape)) > FRAME_CHUNK_ABOVE:
        return {"codec": "raw", "chunk_frames": 1, "shard_frames": IMAGE_SHARD}
    return {"codec": "raw", "chunk_frames": BLOCK, "shard_frames": None}


def is_blocked(storage: dict) -> bool:
    """True for features chunked in BLOCK-row chunks (low-dim), False for per-frame shards."""
    return not storage["shard_frames"]


def create_array(group: zarr.Group, name: str, spec: FeatureSpec, n: int, storage: dict,
                 *, overwrite: bool = False) -> zarr.Array:
    """Create ``data/<name>`` of ``n`` frames laid out as ``storage`` says."""
    shape = (n, *spec.shape)
    codec = storage["codec"]
    if codec == "jpeg":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vlen-bytes has no ratified v3 spec yet
            arr = group.create_array(name, shape=(n,), dtype=zarr.core.dtype.VariableLengthBytes(),
                                     chunks=(1,), shards=(storage["shard_frames"],),
                                     compressors=[Crc32cCodec()], overwrite=overwrite,
                                     config={"write_empty_chunks": True})
        arr.attrs.update({"encoding": "jpeg", "frame_shape": list(spec.shape)})
        return arr
    compressors = [Crc32cCodec()]
    if codec == "lz4":
        compressors = [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle), *compressors]
    if storage["shard_frames"]:
        chunks = (storage["chunk_frames"], *spec.shape)
        shards = (storage["shard_frames"], *spec.shape)
    else:
        chunks, shards = (storage["chunk_frames"], *spec.shape), None
    return group.create_array(name, shape=shape, dtype=spec.dtype, chunks=chunks, shards=shards,
                              compressors=compressors, fill_value=0, overwrite=overwrite,
                              config={"write_empty_chunks": True})


def part_ranges(n: int, part_frames: int) -> list[tuple[int, int]]:
    """Row ranges of the parts of an ``n``-frame store."""
    if part_frames % BLOCK:
        raise ValueError(f"part_frames must be a multiple of {BLOCK}, got {part_frames}")
    return [(a, min(a + part_frames, n)) for a in range(0, n, part_frames)] or [(0, 0)]


def default_part_frames(n: int, workers: int) -> int:
    """Parts of at most 8 blocks, and at least ``2 * workers`` parts when the data allows."""
    per = -(-n // max(1, 2 * workers))
    blocks = min(8, max(1, -(-per // BLOCK)))
    return blocks * BLOCK


def jpeg_frame_shape(arr: zarr.Array) -> tuple[int, ...] | None:
    fs = arr.attrs.get("frame_shape")
    return tuple(fs) if fs is not None else None


__all__ = ["FORMAT_VERSION", "IMAGE_SHARD", "BLOCK", "storage_for", "create_array",
           "part_ranges", "default_part_frames", "np", "META", "DATA", "MANIFEST", "PLAN", "PARTS",
           "EPISODES", "SEGMENTS", "STATS", "IMAGE_PREFIX", "STATE", "ACTION", "ACTION_NORM",
           "ACTION_TOKENS"]
