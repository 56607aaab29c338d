"""The wire encoding of the policy server: msgpack, with numpy arrays as one extension type.

Every WebSocket message is one binary frame holding one msgpack map (``msgpack.packb``). Numpy
arrays travel as msgpack extension type :data:`NDARRAY_EXT` (code 1) whose payload is itself a
msgpack array ``[dtype, shape, data]``:

- ``dtype``: numpy's type string, little-endian or byte-sized only (``"|u1"``, ``"<f4"``, ...:
  :data:`DTYPES`); no object, string or big-endian arrays;
- ``shape``: a list of non-negative integers (at most :data:`MAX_NDIM` of them);
- ``data``: the C-order bytes, exactly ``prod(shape) * itemsize`` of them.

Numpy scalars are sent as plain msgpack numbers. Anything else msgpack cannot represent is a
``TypeError`` at the sender. :func:`unpack` checks all of the above and raises
:class:`CodecError` (never anything else) for a message that is not valid msgpack, uses another
extension type, or whose array payload disagrees with its header. A client in another language
needs only a msgpack library and these three fields.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

from vladata.errors import VladataError

NDARRAY_EXT = 1
MAX_NDIM = 8
DTYPES = frozenset(np.dtype(t).str for t in (
    "bool", "uint8", "int8", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"))


class CodecError(VladataError, ValueError):
    """A message is not a valid msgpack message of the policy server's encoding."""


def _default(obj):
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        if a.dtype.str not in DTYPES:
            a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
            if a.dtype.str not in DTYPES:
                raise TypeError(f"cannot send an array of dtype {obj.dtype}: supported dtypes are "
                                f"{', '.join(sorted(DTYPES))}")
        payload = msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()], use_bin_type=True)
        return msgpack.ExtType(NDARRAY_EXT, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a policy server message")


def pack(message: dict) -> bytes:
    """One message (a dict of msgpack types and numpy arrays) as bytes."""
    return msgpack.packb(message, default=_default, use_bin_type=True)


def _ext_hook(code: int, data: bytes):
    if code != NDARRAY_EXT:
        raise CodecError(f"unknown msgpack extension type {code} (arrays are type {NDARRAY_EXT})")
    try:
        dtype, shape, raw = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CodecError(f"array payload is not [dtype, shape, data]: {e}") from None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CodecError(f"array dtype {dtype!r} is not one of {', '.join(sorted(DTYPES))}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise CodecError(f"array shape {shape!r} is not a list of at most {MAX_NDIM} "
                         "non-negative integers")
    if not isinstance(raw, bytes):
        raise CodecError(f"array data is {type(raw).__name__}, expected bytes")
    dt = np.dtype(dtype)
    if math.prod(shape) * dt.itemsize != len(raw):
        raise CodecError(f"array {dtype} {tuple(shape)} needs {math.prod(shape) * dt.itemsize} "
                         f"bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()  # writable, owns its memory


def unpack(data: bytes) -> dict:
    """The message in ``data``: a dict, arrays decoded; else :class:`CodecError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("messages are binary WebSocket frames holding msgpack, got text")
    try:
        message = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=True)
    except CodecError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as e:
        raise CodecError(f"not a valid msgpack message: {e or type(e).__name__}") from None
    if not isinstance(message, dict):
        raise CodecError(f"a message is a msgpack map, got {type(message).__name__}")
    return message
