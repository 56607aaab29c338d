"""The reader boundary: what a third-party decoder raises on damaged bytes becomes a
:class:`~vladata.errors.SourceFormatError`, and nothing else does.

Libraries such as h5py, rosbags (and its sqlite/lz4/zstd backends) or PyAV raise whatever their
code happens to hit on corrupt input -- ``KeyError``, ``RuntimeError``, ``AssertionError``,
``OverflowError``, their own classes. A reader cannot list them per call, yet catching
``Exception`` would also hide vlakit's own bugs. :func:`raised_in` draws the line by where an
error comes from: it is the data's fault when the traceback enters one of the library packages
and its innermost frame is not vlakit's own code.
"""

from __future__ import annotations

import struct
import traceback
from pathlib import PurePath

from PIL import Image

#: Exception classes decoders raise on damaged input (beside their own error classes).
DECODER_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError,
                  AssertionError, OverflowError, struct.error, MemoryError)

#: What decoding a damaged JPEG/PNG raises (simplejpeg: ValueError; Pillow: OSError, its
#: SyntaxError for broken chunks, DecompressionBombError for absurd sizes in a header).
IMAGE_ERRORS = (ValueError, OSError, SyntaxError, Image.DecompressionBombError)

_OURS = ("vladata",)


def _package(filename: str) -> str:
    """The top-level package a traceback frame's file belongs to ('' if none is recognisable)."""
    parts = PurePath(filename.replace("\\", "/")).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        return rest[0].split(".")[0] if rest else ""
    if "vladata" in parts:
        return "vladata"
    return parts[0] if len(parts) > 1 else ""  # Cython frames: "h5py/_objects.pyx"


def raised_in(e: BaseException, *packages: str) -> bool:
    """Whether ``e`` was raised inside one of ``packages`` (e.g. ``"h5py"``): its traceback
    enters them and its innermost frame is not vlakit's own code."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return False
    owners = [_package(f.filename) for f in frames]
    if owners[-1] in _OURS:
        return False
    return any(o in packages for o in owners)
