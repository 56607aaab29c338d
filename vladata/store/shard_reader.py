"""A small, fast reader of the Zarr v3 arrays of a local store: the window loader's hot path.

zarr-python reads a 16-frame window at 2-7 k frames/s; reading the same bytes directly reaches
memcpy speed (measured when the store was designed: 20k frames of 200x200x3, random 16-frame
windows, one process: zarr-python 3.1 2,200-7,000 frames/s, this reader ~58,000, a numpy memmap
copy ~148,000). This module reads exactly the layouts that
``vladata.store.layout`` writes, straight from the files:

- arrays chunked along axis 0 only (a chunk holds whole rows), ``default`` chunk keys;
- sharded (``sharding_indexed``: index of ``(offset, nbytes)`` uint64 pairs at the start or end
  of the shard file, ``bytes`` codec and optionally ``crc32c``; empty chunks are ``2**64-1``) or
  unsharded;
- inner codecs ``bytes`` (raw, little-endian), ``bytes`` + ``blosc`` (lz4 and every other blosc
  cname), and ``vlen-bytes`` (one encoded JPEG per element), each optionally followed by
  ``crc32c`` (a little-endian CRC32C after each chunk's bytes: store format version 2).

Missing data is an error: in an array whose chunks carry checksums (version 2 stores write every
chunk) a missing shard or chunk file, or an empty index entry inside the array's rows, raises
:class:`MissingChunkError` naming the file; only version 1 arrays read absent chunks as the fill
value. Chunk checksums are verified when the reader is made with ``verify=True`` (the default is
:data:`VERIFY_DEFAULT`; see BENCHMARKS.md for its measured cost); a mismatch raises
:class:`ShardFormatError` naming the file and chunk.

Files are memory-mapped (read-only, an LRU of maps per process). A shard's index is read once
(the tail of the map, CRC32C checked) and cached; a run of chunks that lie back to back in the
file is copied with one slice straight into the caller's buffer (raw) or decoded from the map
into it (blosc). Anything else -- other codecs,
chunks that split inner dimensions, big-endian data -- falls back to zarr-python, so every local
store stays readable, only slower.

Worker safety: files are mapped lazily and the maps belong to the process that made them; after
a fork the child drops the inherited table and maps afresh, and pickling (spawn) carries only the
path and parsed metadata, never maps or caches. Maps are keyed by the array's identity (inode and
mtime of its ``zarr.json``) as well as the path, so an array rewritten in place (``convert
--overwrite``, ``vladata stats``) and opened again in the same process never sees the old files.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from collections import OrderedDict

import google_crc32c
import numpy as np
from numcodecs import blosc

from vladata.errors import StoreError
from vladata.store import fs

EMPTY = 2**64 - 1
_INDEX_ENTRY = 16  # (offset, nbytes) as two little-endian uint64


VERIFY_DEFAULT = False  # checking every chunk halves lossless window reads (BENCHMARKS.md)


class ShardFormatError(StoreError):
    """A chunk or shard file of a store is corrupt (bad CRC, short read, bad vlen header)."""


class MissingChunkError(ShardFormatError):
    """A chunk or shard file that the store must hold is absent."""


class _Maps:
    """Per-process LRU of read-only memory maps of chunk and shard files; resets in a forked child.

    A mapped file is read by slicing, a plain memcpy once the pages are mapped. Measured here
    (warm page cache, random 16-frame windows of a 200x200 camera, one process): ``preadv`` into
    the buffer ~3,600-3,800 windows/s on every pass; a map ~4,200 on the first pass and
    ~5,200-5,800 once mapped (a numpy memmap copy: ~6,000). MAP_POPULATE was not used: on data
    larger than memory it would read whole 64-frame shards for a 16-frame window.
    """

    def __init__(self, capacity: int = 4096):  # of vm.max_map_count (65530): ~30 GB of 64-frame shards
        self.capacity = capacity
        self._pid = os.getpid()
        self._maps: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, identity: str = "") -> np.ndarray | None:
        """The bytes of ``path`` as a read-only uint8 array, or None if the file does not exist.

        ``identity`` names the version of the array the file belongs to (see the module doc).
        """
        key = f"{identity}\0{path}"
        with self._lock:
            if self._pid != os.getpid():  # forked: map afresh in this process
                self._maps = OrderedDict()
                self._pid = os.getpid()
            buf = self._maps.get(key, False)
            if buf is not False:
                self._maps.move_to_end(key)
                return buf
            if fs.is_remote(path):  # ranged GETs, or a map of the read-through cache's copy
                buf = fs.buffer(path)
                if buf is None:
                    return None
                self._maps[key] = buf
                while len(self._maps) > self.capacity:
                    self._maps.popitem(last=False)
                return buf
            try:
                with open(path, "rb") as f:
                    try:
                        buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
                    except ValueError:  # an empty file cannot be mapped
                        buf = np.zeros(0, np.uint8)
            except FileNotFoundError:
                return None
            self._maps[key] = buf
            while len(self._maps) > self.capacity:
                self._maps.popitem(last=False)  # unmapped once no array refers to it
            return buf


_MAPS = _Maps()


def _slice(buf: np.ndarray, off: int, n: int, path: str) -> np.ndarray:
    if off + n > len(buf):
        raise ShardFormatError(f"{path}: expected {n} bytes at offset {off}, the file has {len(buf)}")
    return buf[off:off + n]


def _check_crc(chunk, path: str, what: str) -> None:
    """Raise unless the last 4 bytes of ``chunk`` are the CRC32C of the rest (little-endian)."""
    data = np.frombuffer(chunk, np.uint8)  # google_crc32c takes arrays, not memoryviews
    (want,) = struct.unpack("<I", data[-4:].tobytes())
    if google_crc32c.value(data[:-4]) != want:
        raise ShardFormatError(f"{path}: {what}: CRC32C mismatch (the file is corrupt)")


def _has_crc(codecs: list[dict]) -> bool:
    return [c["name"] for c in codecs][-1:] == ["crc32c"]


def _parse_inner(codecs: list[dict]) -> str | None:
    """'raw', 'blosc' or 'vlen' for the codec chains this reader decodes itself, else None.

    A trailing ``crc32c`` is not part of the answer: see :func:`_has_crc`.
    """
    names = [c["name"] for c in codecs]
    if names[-1:] == ["crc32c"]:
        names, codecs = names[:-1], codecs[:-1]
    if names == ["vlen-bytes"]:
        return "vlen"
    if not names or names[0] != "bytes":
        return None
    if (codecs[0].get("configuration") or {}).get("endian", "little") != "little":
        return None
    if names[1:] == []:
        return "raw"
    if names[1:] == ["blosc"]:
        return "blosc"
    return None


class ArrayReader:
    """Rows of one array of a store (``<store>/data/<name>``), read directly from its files.

    ``read(lo, hi)`` -> ndarray of rows ``lo..hi-1``; ``read_into(lo, hi, out)`` writes them into
    ``out`` (C-contiguous, shape ``(hi-lo, *shape[1:])``); ``read_items(lo, hi)`` -> list of
    bytes for a vlen-bytes array (``b""`` for elements never written). ``fast`` says whether the
    direct path is used (False: zarr-python fallback).
    """

    def __init__(self, path: str, *, index_cache: int = 16384, chunk_cache_bytes: int = 64 << 20,
                 verify: bool | None = None):
        self.path = str(path)
        self.verify = VERIFY_DEFAULT if verify is None else bool(verify)
        self.index_cache = index_cache
        self.chunk_cache_bytes = chunk_cache_bytes
        meta_path = os.path.join(self.path, "zarr.json")
        try:
            if fs.is_remote(meta_path):  # identity: the object's ETag (changes with its bytes)
                p = fs.to_path(meta_path)
                info = p.fs.info(p.path)
                meta = json.loads(p.read_bytes())
                self._identity = f"{info.get('ETag') or info.get('mtime')}:{info['size']}"
            else:
                with open(meta_path) as f:
                    st = os.fstat(f.fileno())
                    meta = json.load(f)
                self._identity = f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        except FileNotFoundError:
            raise StoreError(f"{meta_path}: no such array (expected a Zarr v3 array directory)")
        except (OSError, ValueError) as e:
            raise StoreError(f"{meta_path}: cannot read array metadata: {e}") from e
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3 \
                or meta.get("node_type") != "array":
            raise StoreError(f"{meta_path}: not a Zarr v3 array")
        try:
            self.shape = tuple(int(x) for x in meta["shape"])
            self.attrs = meta.get("attributes", {})
            self.vlen = meta["data_type"] == "variable_length_bytes"
            self.dtype = np.dtype(object) if self.vlen else _np_dtype(meta["data_type"])
            self.fill_value = meta.get("fill_value")
            self.fast = self._parse_layout(meta)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise StoreError(f"{meta_path}: malformed array metadata ({type(e).__name__}: {e})") from e
        self._init_caches()

    # -- layout ---------------------------------------------------------------------------------
    def _parse_layout(self, meta: dict) -> bool:
        self.crc = self.strict = False
        grid = meta.get("chunk_grid", {})
        keys = meta.get("chunk_key_encoding", {})
        if grid.get("name") != "regular" or keys.get("name") != "default" or not self.shape:
            return False
        self._sep = (keys.get("configuration") or {}).get("separator", "/")
        outer = tuple(grid["configuration"]["chunk_shape"])
        codecs = meta["codecs"]
        self.sharded = len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
        if self.sharded:
            conf = codecs[0]["configuration"]
            inner = tuple(conf["chunk_shape"])
            self.codec = _parse_inner(conf["codecs"])
            self.crc = _has_crc(conf["codecs"])
            index_names = [c["name"] for c in conf.get("index_codecs", [])]
            if index_names not in (["bytes"], ["bytes", "crc32c"]) or \
                    (conf["index_codecs"][0].get("configuration") or {}).get("endian", "little") != "little":
                return False
            self._index_crc = index_names == ["bytes", "crc32c"]
            self._index_at_end = conf.get("index_location", "end") == "end"
        else:
            inner = outer
            self.codec = _parse_inner(codecs)
            self.crc = _has_crc(codecs)
        self.strict = self.crc  # checksummed (version 2) arrays hold every chunk
        if self.codec is None or (self.codec == "vlen") != self.vlen:
            return False
        # whole rows per chunk and per shard: only axis 0 is split
        if tuple(inner[1:]) != tuple(self.shape[1:]) or tuple(outer[1:]) != tuple(self.shape[1:]):
            return False
        if outer[0] % inner[0]:
            return False
        self.rows_per_chunk = inner[0]
        self.rows_per_shard = outer[0]
        self.chunks_per_shard = outer[0] // inner[0]
        self._row_bytes = 0 if self.vlen else int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._index_size = self.chunks_per_shard * _INDEX_ENTRY + (4 if self.sharded and self._index_crc else 0)
        return True

    def _init_caches(self) -> None:
        self._indexes: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._chunk_bytes = 0
        self._zarr = None

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_indexes", "_chunks", "_chunk_bytes", "_zarr"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_caches()

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self, shard: int) -> str:
        key = self._sep.join(["c", str(shard)] + ["0"] * (len(self.shape) - 1))
        return os.path.join(self.path, key)

    def _zarr_array(self):
        if self._zarr is None:
            import zarr
            self._zarr = zarr.open_array(self.path, mode="r")
        return self._zarr

    # -- shard index ----------------------------------------------------------------------------
    def shard_index(self, shard: int) -> np.ndarray | None:
        """(chunks_per_shard, 2) uint64 of (offset, nbytes), or None if the shard file is absent."""
        idx = self._indexes.get(shard, False)
        if idx is not False:
            self._indexes.move_to_end(shard)
            return idx
        path = self._file(shard)
        buf = _MAPS.get(path, self._identity)
        if buf is None:
            if self.strict:
                raise MissingChunkError(f"{path}: shard file missing (the store is damaged; "
                                        "`vladata verify` lists what else is)")
            idx = None
        else:
            size = len(buf)
            if size < self._index_size:
                raise ShardFormatError(f"{path}: shard of {size} bytes is shorter than its index "
                                       f"({self._index_size} bytes)")
            raw = buf[size - self._index_size:] if self._index_at_end else buf[:self._index_size]
            raw = raw.tobytes()
            body = raw[:self.chunks_per_shard * _INDEX_ENTRY]
            if self._index_crc:
                want = struct.unpack("<I", raw[-4:])[0]
                if google_crc32c.value(body) != want:
                    raise ShardFormatError(f"{path}: shard index CRC32C mismatch (corrupt shard)")
            idx = np.frombuffer(body, dtype="<u8").reshape(self.chunks_per_shard, 2)
            bad = (idx[:, 0] != EMPTY) & (idx[:, 0] + idx[:, 1] > size)
            if bad.any():
                raise ShardFormatError(f"{path}: chunk {int(np.flatnonzero(bad)[0])} points past the "
                                       f"end of the file ({size} bytes)")
        self._indexes[shard] = idx
        while len(self._indexes) > self.index_cache:
            self._indexes.popitem(last=False)
        return idx

    # -- chunk runs -----------------------------------------------------------------------------
    def _runs(self, c0: int, c1: int):
        """Yield (first_chunk, n_chunks, file_offset, entries|None, buf, path) over chunks c0..c1-1.

        ``buf`` is the mapped file. Consecutive non-empty chunks stored back to back in the same
        shard form one run; empty chunks form runs with ``buf`` None.
        """
        c = c0
        while c < c1:
            shard, k = divmod(c, self.chunks_per_shard)
            path = self._file(shard)
            if not self.sharded:
                buf = _MAPS.get(path, self._identity)
                if buf is None and self.strict:
                    raise MissingChunkError(f"{path}: chunk file missing (the store is damaged; "
                                            "`vladata verify` lists what else is)")
                yield c, 1, 0, None, buf, path
                c += 1
                continue
            idx = self.shard_index(shard)
            stop = min(c1, (shard + 1) * self.chunks_per_shard)
            if idx is None:
                yield c, stop - c, 0, None, None, path
                c = stop
                continue
            fbuf = _MAPS.get(path, self._identity)
            n_max = stop - c
            off, nb = idx[k]
            if off == EMPTY:
                if self.strict and c * self.rows_per_chunk < self.shape[0]:
                    raise MissingChunkError(f"{path}: chunk {k} of the shard is missing (its "
                                            "index entry is empty)")
                n = 1
                while n < n_max and idx[k + n, 0] == EMPTY:
                    n += 1
                yield c, n, 0, None, None, path
            else:
                n, end = 1, int(off + nb)
                while n < n_max and int(idx[k + n, 0]) == end:
                    end += int(idx[k + n, 1])
                    n += 1
                yield c, n, int(off), idx[k:k + n], fbuf, path
            c += n

    def _fill(self, out: np.ndarray) -> None:
        v = self.fill_value
        if v is None:
            v = 0
        elif isinstance(v, str):  # JSON spellings of special floats
            v = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(v, v)
            if isinstance(v, str) and v.startswith("0x"):
                v = np.frombuffer(int(v, 16).to_bytes(self.dtype.itemsize, "big"),
                                  dtype=self.dtype.newbyteorder(">"))[0]
        out[...] = v

    def _payload(self, data, path: str, c: int):
        """A chunk's encoded bytes without its CRC32C, the CRC checked if ``verify``."""
        if not self.crc:
            return data
        if len(data) < 4:
            raise ShardFormatError(f"{path}: chunk {c} of {len(data)} bytes has no CRC32C")
        if self.verify:
            _check_crc(data, path, f"chunk {c}")
        return data[:-4]

    def _decode_chunk(self, data, path: str) -> np.ndarray:
        """A whole decoded chunk (rows_per_chunk, *shape[1:]) from its encoded bytes."""
        n = self.rows_per_chunk * self._row_bytes
        if self.codec == "blosc":
            buf = np.empty(n, dtype=np.uint8)
            blosc.decompress(data, buf)
        else:
            if len(data) != n:
                raise ShardFormatError(f"{path}: chunk of {len(data)} bytes, expected {n}")
            buf = np.frombuffer(data, dtype=np.uint8)
        return buf.view(self.dtype).reshape(self.rows_per_chunk, *self.shape[1:])

    def _chunk(self, c: int) -> np.ndarray:
        """Chunk ``c`` decoded (rows_per_chunk, ...); unsharded chunks stay in a per-process LRU."""
        arr = self._chunks.get(c)
        if arr is not None:
            self._chunks.move_to_end(c)
            return arr
        _, _, off, entries, fbuf, path = next(self._runs(c, c + 1))
        if fbuf is None:
            arr = np.empty((self.rows_per_chunk, *self.shape[1:]), dtype=self.dtype)
            self._fill(arr)
        else:
            data = fbuf[:] if entries is None else _slice(fbuf, off, int(entries[0, 1]), path)
            arr = self._decode_chunk(self._payload(data, path, c), path).copy()  # off the map
        if not self.sharded:
            self._chunks[c] = arr
            self._chunk_bytes += arr.nbytes
            while self._chunk_bytes > self.chunk_cache_bytes and len(self._chunks) > 1:
                self._chunk_bytes -= self._chunks.popitem(last=False)[1].nbytes
        return arr

    # -- public reads ---------------------------------------------------------------------------
    def read_into(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Write rows ``lo..hi-1`` into ``out`` (C-contiguous, ``(hi-lo, *shape[1:])``)."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"{self.path}: rows {lo}..{hi} outside 0..{self.shape[0]}")
        if self.vlen:
            raise TypeError(f"{self.path}: variable-length bytes array; use read_items()")
        if not self.fast:
            out[...] = self._zarr_array()[lo:hi]
            return out
        if hi == lo:
            return out
        r = self.rows_per_chunk
        if r != 1 or not self.sharded:
            for c in range(lo // r, (hi - 1) // r + 1):
                a, b = max(lo, c * r), min(hi, (c + 1) * r)
                out[a - lo:b - lo] = self._chunk(c)[a - c * r:b - c * r]
            return out
        if not out.flags.c_contiguous or out.shape != (hi - lo, *self.shape[1:]):
            raise ValueError(f"{self.path}: out must be C-contiguous of shape "
                             f"{(hi - lo, *self.shape[1:])}, got {out.shape}")
        flat = out.reshape(hi - lo, -1).view(np.uint8)
        for c, n, off, entries, fbuf, path in self._runs(lo, hi):
            dst = flat[c - lo:c - lo + n]
            if fbuf is None:
                self._fill(out[c - lo:c - lo + n])
            elif self.codec == "raw" and self.crc:
                self._copy_checked(fbuf, off, entries, dst, c, path)
            elif self.codec == "raw":
                if int(entries[:, 1].sum()) != n * self._row_bytes:
                    raise ShardFormatError(f"{path}: raw chunks of {entries[:, 1].tolist()} bytes, "
                                           f"expected {self._row_bytes} each")
                dst[...] = _slice(fbuf, off, n * self._row_bytes, path).reshape(dst.shape)
            else:
                data = _slice(fbuf, off, int(entries[:, 1].sum()), path)
                pos = 0
                for j, nb in enumerate(entries[:, 1].tolist()):
                    chunk = self._payload(memoryview(data)[pos:pos + nb], path, c + j)
                    blosc.decompress(chunk, dst[j])
                    pos += nb
        return out

    def _copy_checked(self, fbuf, off: int, entries, dst: np.ndarray, c: int, path: str) -> None:
        """Copy a run of raw one-row chunks, each followed by its CRC32C, into ``dst``."""
        rb = self._row_bytes
        if (entries[:, 1] != rb + 4).any():
            raise ShardFormatError(f"{path}: raw chunks of {entries[:, 1].tolist()} bytes, "
                                   f"expected {rb} + 4 (CRC32C) each")
        n = len(entries)
        data = _slice(fbuf, off, n * (rb + 4), path)
        if self.verify:
            for j in range(n):
                _check_crc(data[j * (rb + 4):(j + 1) * (rb + 4)], path, f"chunk {c + j}")
        dst[...] = data.reshape(n, rb + 4)[:, :rb]

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo..hi-1`` as a new array (vlen-bytes: an object array of bytes)."""
        if self.vlen:
            out = np.empty(hi - lo, dtype=object)
            out[:] = self.read_items(lo, hi)
            return out
        out = np.empty((hi - lo, *self.shape[1:]), dtype=self.dtype)
        return self.read_into(lo, hi, out)

    def read_items(self, lo: int, hi: int) -> list[bytes]:
        """Elements ``lo..hi-1`` of a vlen-bytes array; ``b""`` where none was written."""
        if not self.vlen:
            raise TypeError(f"{self.path}: fixed-size array; use read() or read_into()")
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"{self.path}: rows {lo}..{hi} outside 0..{self.shape[0]}")
        if not self.fast:
            return [bytes(x) if x is not None else b"" for x in self._zarr_array()[lo:hi]]
        r = self.rows_per_chunk
        items: list[bytes] = []
        c0, c1 = lo // r, (hi - 1) // r + 1 if hi > lo else lo // r
        for c, n, off, entries, fbuf, path in self._runs(c0, c1):
            if fbuf is None:
                items.extend([b""] * (n * r))
                continue
            data = memoryview(_slice(fbuf, off, int(entries[:, 1].sum()) if entries is not None
                                     else len(fbuf), path))
            pos = 0
            for j, nb in enumerate(entries[:, 1].tolist() if entries is not None else [len(data)]):
                items.extend(decode_vlen(self._payload(data[pos:pos + nb], path, c + j), path, r))
                pos += nb
        first = c0 * r
        return items[lo - first:hi - first]


def decode_vlen(chunk: memoryview, path: str, expect: int | None = None) -> list[bytes]:
    """Decode numcodecs' vlen-bytes: uint32 count, then per item uint32 length + bytes."""
    if len(chunk) < 4:
        raise ShardFormatError(f"{path}: vlen-bytes chunk of {len(chunk)} bytes has no header")
    (count,) = struct.unpack_from("<I", chunk, 0)
    pos, items = 4, []
    for _ in range(count):
        if pos + 4 > len(chunk):
            raise ShardFormatError(f"{path}: vlen-bytes chunk truncated in item {len(items)}")
        (n,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + n > len(chunk):
            raise ShardFormatError(f"{path}: vlen-bytes item {len(items)} of {n} bytes is truncated")
        items.append(bytes(chunk[pos:pos + n]))
        pos += n
    if expect is not None and count != expect:
        raise ShardFormatError(f"{path}: vlen-bytes chunk holds {count} items, expected {expect}")
    return items


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name).newbyteorder("<")
    except TypeError:
        raise StoreError(f"unsupported Zarr data type {name!r}")


class StoreReader:
    """The arrays of a store's ``data/`` group, each opened once: ``reader[name]``.

    A store at an fsspec URL (``s3://...``) is read through ranged GETs, or a local read-through
    cache (:func:`vladata.store.fs.buffer`).
    """

    def __init__(self, root: str, *, verify: bool | None = None):
        root = str(root)
        self.verify = verify
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root  # a local directory, or a URL read through ranged GETs (vladata.store.fs)
        self._arrays: dict[str, ArrayReader] = {}

    def __getitem__(self, name: str) -> ArrayReader:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = ArrayReader(os.path.join(self.root, "data", name),
                                                   verify=self.verify)
        return arr

    def __getstate__(self):
        return {"root": self.root, "verify": self.verify, "_arrays": {}}


__all__ = ["ArrayReader", "StoreReader", "ShardFormatError", "MissingChunkError", "decode_vlen",
           "VERIFY_DEFAULT"]
