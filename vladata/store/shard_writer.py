"""Writing whole shard files of the zarr v3 ``sharding_indexed`` codec directly.

zarr-python encodes a shard chunk by chunk through its async codec pipeline, which costs far more
than the bytes (about 1 ms per frame at CALVIN sizes, more than reading the source). For the
layouts vlakit writes (:mod:`vladata.store.layout`: one frame per inner chunk, inner codecs
``bytes`` [+ ``blosc``] or ``vlen-bytes``, then ``crc32c`` (format version 2; absent in
version 1), index ``bytes`` + ``crc32c`` at the end) a shard is simply::

    chunk 0 bytes [| its crc32c] | chunk 1 ... | index: (n_chunks, 2) little-endian uint64
                                               (offset, nbytes), nbytes counting the chunk's crc
                                               | crc32c of the index, uint32 little-endian

with ``(2**64-1, 2**64-1)`` for chunks that are absent (past the end of the array). This module
writes that; zarr-python (and vlakit's reader) read it back -- the tests check both. Arrays with
any other codec configuration are written through zarr-python.
"""

from __future__ import annotations

import os
import struct

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc

from vladata.store import fs

MISSING = np.uint64(2**64 - 1)


def can_write(arr: zarr.Array) -> bool:
    """True if ``arr`` has the one-frame-per-chunk sharded layout this module writes."""
    codecs = arr.metadata.to_dict()["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return False
    cfg = codecs[0]["configuration"]
    inner = [c["name"] for c in cfg["codecs"]]
    return (cfg.get("index_location", "end") == "end"
            and [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"]
            and cfg["chunk_shape"][0] == 1 and tuple(cfg["chunk_shape"][1:]) == arr.shape[1:]
            and _strip_crc(inner) in (["bytes"], ["bytes", "blosc"], ["vlen-bytes"])
            and (inner[0] != "bytes" or _little_endian(cfg["codecs"][0])))


def _strip_crc(names: list[str]) -> list[str]:
    return names[:-1] if names[-1:] == ["crc32c"] else names


def _little_endian(bytes_codec: dict) -> bool:
    return (bytes_codec.get("configuration") or {}).get("endian", "little") == "little"


class ShardWriter:
    """Writes frames ``[r, r + shard_frames)`` of one array as one shard file."""

    def __init__(self, arr: zarr.Array, array_dir: str | os.PathLike):
        self.dir = fs.to_path(array_dir)
        cfg = arr.metadata.to_dict()["codecs"][0]["configuration"]
        self.shard_frames = int(arr.metadata.to_dict()["chunk_grid"]["configuration"]
                                ["chunk_shape"][0])
        self.ndim = len(arr.shape)
        self.n = arr.shape[0]
        inner = cfg["codecs"]
        self.crc = inner[-1]["name"] == "crc32c"
        if self.crc:
            inner = inner[:-1]
        self.kind = inner[-1]["name"]  # bytes | blosc | vlen-bytes
        self.blosc = None
        if self.kind == "blosc":
            c = inner[-1]["configuration"]
            shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                       "bitshuffle": Blosc.BITSHUFFLE}[c.get("shuffle", "noshuffle")]
            self.blosc = Blosc(cname=c["cname"], clevel=c["clevel"], shuffle=shuffle)

    def write(self, r: int, frames) -> None:
        """Write the shard that starts at row ``r`` (a multiple of shard_frames)."""
        if r % self.shard_frames:
            raise ValueError(f"row {r} is not at a shard boundary ({self.shard_frames} frames)")
        k = r // self.shard_frames
        chunks = [self._encode(f) for f in frames]
        index = np.full((self.shard_frames, 2), MISSING, dtype="<u8")
        offset = 0
        for j, c in enumerate(chunks):
            index[j] = (offset, len(c))
            offset += len(c)
        index_bytes = index.tobytes()
        crc = struct.pack("<I", google_crc32c.value(index_bytes))
        path = self.dir.joinpath("c", str(k), *(["0"] * (self.ndim - 1)))
        # locally under a temporary name (a resumed conversion deletes it), remotely in one PUT
        fs.write_file(path, [*chunks, index_bytes, crc])

    def _encode(self, frame) -> bytes:
        if self.kind == "vlen-bytes":
            out = struct.pack("<II", 1, len(frame)) + bytes(frame)
        else:
            data = np.ascontiguousarray(frame)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            out = self.blosc.encode(data) if self.blosc is not None else data.tobytes()
        return out + struct.pack("<I", google_crc32c.value(out)) if self.crc else out
