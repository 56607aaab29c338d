"""Loading pickled ``.npy`` files without executing them.

CALVIN ships ``auto_lang_ann.npy`` and ``scene_info.npy`` as pickled dicts (``np.save`` of a dict).
``np.load(allow_pickle=True)`` would run whatever the pickle asks for; :func:`load_pickled_npy`
reads the ``.npy`` header itself and unpickles the payload with :class:`RestrictedUnpickler`, which
resolves only the handful of globals that plain containers, numbers, strings and numpy arrays need,
and refuses anything else with :class:`~vladata.errors.UnsafePickleError`.
"""

from __future__ import annotations

import io
import pickle
import struct
import tokenize
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from vladata.errors import SourceFormatError, UnsafePickleError

# (module, name) pairs a pickle of plain data + numpy arrays needs; nothing here runs user code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol 2 pickles bytes
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain containers, numbers, strings and numpy arrays."""

    def __init__(self, file, *, source: object = None):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle global {module}.{name}: only plain containers, numbers, "
            "strings and numpy arrays are accepted from dataset files", file=self._source)

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids", file=self._source)


def loads(data: bytes, *, source: object = None):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), source=source).load()


def load_pickled_npy(path: str | Path):
    """Load an ``np.save``-d object (typically a dict) from ``path`` without executing code.

    Returns the unpickled object; a 0-d object array (what ``np.save(dict)`` writes) is unwrapped,
    like ``np.load(path, allow_pickle=True).item()``. A plain numeric ``.npy`` is returned as an
    array. Raises :class:`SourceFormatError` for an unreadable file, :class:`UnsafePickleError`
    for a pickle that asks for anything else.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                           else npy_format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f, max_header_size=1 << 20)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            # from memory: a corrupt length field then reads short instead of allocating it
            obj = RestrictedUnpickler(io.BytesIO(f.read()), source=path).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError:
        raise SourceFormatError("file not found", file=path) from None
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, AttributeError, IndexError,
            TypeError, KeyError, OverflowError, struct.error, SyntaxError,
            tokenize.TokenError) as e:  # what numpy's header parser and pickle raise on damage
        raise SourceFormatError(f"cannot read pickled .npy ({type(e).__name__}: {e})",
                                file=path) from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj
