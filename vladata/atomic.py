"""Writing a local file so that a reader sees the old content or the new one, never half of it.

The bytes go to ``<name>.tmp`` beside the target, are flushed to disk (``fsync``), renamed over
the target (``os.replace``, atomic on POSIX and Windows), and the directory entry is synced.
A crash leaves at most a ``*.tmp`` file, which :func:`is_temporary` recognises so that the
owner (e.g. a resumed conversion) can delete it. Every metadata file vladata writes goes through
:func:`write_json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see the module docstring).

    A remote path (an fsspec URL, :mod:`vladata.store.fs`) is written in one PUT, atomic on
    object storage without a rename."""
    if "://" in str(path) and not str(path).startswith("file://"):
        from vladata.store.fs import to_path
        to_path(path).write_bytes(data)
        return
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 1) -> None:
    """Replace ``path`` by the JSON of ``obj`` atomically (serialised before anything is written)."""
    write_bytes(path, json.dumps(obj, indent=indent).encode())


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a file :func:`write_bytes` (or a shard writer) left behind when interrupted."""
    return Path(path).name.endswith(TMP_SUFFIX)


def _sync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["write_bytes", "write_json", "is_temporary", "TMP_SUFFIX"]
