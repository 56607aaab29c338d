"""A lean reader of ``.npz`` files, for sources stored as millions of small ones (CALVIN).

``np.load`` on an npz parses the zip central directory with :mod:`zipfile` and each member's
``.npy`` header with ``ast.literal_eval``; on CALVIN's per-frame files that costs more than the
decompression itself. :func:`read_npz` reads the file once, walks the local file headers
(zip64 extras included, as ``np.savez`` writes them), inflates only the wanted members, checks
their CRC-32, and parses each distinct ``.npy`` header once (cached: every frame of a dataset has
the same few). Anything it does not expect -- a data descriptor, an unknown compression method,
an unusual header -- falls back to ``np.load``, so the result is always what numpy would give.
"""

from __future__ import annotations

import io
import struct
import tokenize
import zipfile
import zlib
from functools import lru_cache

import numpy as np
from numpy.lib import format as npy_format

from vladata.errors import SourceFormatError

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
_SIG = b"PK\x03\x04"


class _Fallback(Exception):
    """This file needs the general reader."""


class CorruptMember(SourceFormatError):
    """A member's data is truncated or fails its CRC (the caller adds the file to the message)."""


_CORRUPT = (zipfile.BadZipFile, zlib.error, struct.error, IndexError, NotImplementedError,
            EOFError, OverflowError, SyntaxError, tokenize.TokenError)


def read_npz(path, keys) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of the npz at ``path``. Raises KeyError naming a missing key,
    ValueError (incl. :class:`CorruptMember`) or OSError for unreadable files."""
    with open(path, "rb") as f:
        buf = f.read()
    try:
        try:
            return _parse(buf, set(keys))
        except _Fallback:
            with np.load(io.BytesIO(buf), allow_pickle=False) as z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise KeyError(missing[0]) from None
                return {k: z[k] for k in keys}
    except _CORRUPT as e:  # what zipfile, zlib, struct and numpy raise on damaged bytes
        raise CorruptMember(f"corrupt zip or .npy data ({type(e).__name__}: {e})") from None


def _parse(buf: bytes, wanted: set[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pos, n = 0, len(buf)
    while len(out) < len(wanted):
        if pos + 30 > n or buf[pos:pos + 4] != _SIG:
            if pos + 4 <= n and buf[pos:pos + 4] == b"PK\x01\x02":
                missing = sorted(wanted - set(out))
                raise KeyError(missing[0])  # reached the central directory
            raise CorruptMember(f"truncated zip: no local file header at byte {pos}")
        (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = _LOCAL.unpack_from(buf, pos)
        name = buf[pos + 30:pos + 30 + nlen].decode("utf-8", "replace")
        extra = buf[pos + 30 + nlen:pos + 30 + nlen + xlen]
        if flags & 0x08:
            raise _Fallback  # sizes live in a data descriptor after the data
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF:
            usize, csize = _zip64_sizes(extra, usize, csize)
        start = pos + 30 + nlen + xlen
        pos = start + csize
        if pos > n:
            raise CorruptMember(f"truncated zip: member {name!r} runs past the end of the file")
        key = name[:-4] if name.endswith(".npy") else name
        if key not in wanted:
            continue
        data = buf[start:pos]
        if method == 8:
            try:
                data = zlib.decompress(data, -15)
            except zlib.error as e:
                raise CorruptMember(f"member {name!r}: {e}") from None
        elif method != 0:
            raise _Fallback
        if len(data) != usize or zlib.crc32(data) != crc:
            raise CorruptMember(f"member {name!r} fails its CRC-32 check")
        out[key] = _npy(data)
    return out


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int]:
    i = 0
    while i + 4 <= len(extra):
        hid, size = struct.unpack_from("<HH", extra, i)
        if hid == 0x0001:
            vals = list(struct.unpack_from(f"<{size // 8}Q", extra, i + 4))
            if usize == 0xFFFFFFFF:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF:
                csize = vals.pop(0)
            return usize, csize
        i += 4 + size
    raise _Fallback


def _npy(data: bytes) -> np.ndarray:
    if data[:6] != b"\x93NUMPY":
        raise CorruptMember("member is not a .npy array")
    major = data[6]
    if major == 1:
        hlen, hstart = struct.unpack_from("<H", data, 8)[0], 10
    elif major in (2, 3):
        hlen, hstart = struct.unpack_from("<I", data, 8)[0], 12
    else:
        raise _Fallback
    shape, fortran, dtype = _header(data[:hstart + hlen])
    if dtype.hasobject:
        raise _Fallback  # object arrays are pickles: never here
    count = int(np.prod(shape)) if shape else 1
    body = data[hstart + hlen:]
    if len(body) != count * dtype.itemsize:
        raise CorruptMember(f"array data has {len(body)} bytes, header says {count * dtype.itemsize}")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


@lru_cache(maxsize=256)
def _header(head: bytes):
    f = io.BytesIO(head)
    version = npy_format.read_magic(f)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    return read(f)
