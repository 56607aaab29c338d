"""Where an export may write, and what ``overwrite=True`` may delete (local paths or fsspec URLs).

A directory (or prefix) is a **vlakit export** when it holds vlakit's ``index.json`` (its
``format`` is ``vlakit-wds``: complete) or the ``.vlakit-export`` marker (:data:`MARKER`),
written before the first shard and removed after ``index.json`` (interrupted). Its own entries
are those two files (and ``index.json.tmp``) and the shards ``shard-NNNNNN.tar``. The rules
(:func:`prepare`):

- a new path or an empty directory is written into;
- a file, or a non-empty directory that is not a vlakit export, is refused, with or without
  ``overwrite``;
- an export is replaced only with ``overwrite=True``, and only if it holds nothing but its own
  entries: the marker is written first, then ``index.json`` and every shard are deleted, so no
  stale shard the new index does not list survives.
"""

from __future__ import annotations

import json
import posixpath
import re

import fsspec
from fsspec.implementations.local import LocalFileSystem

import vladata.atomic as atomic
from vladata.stream.format import FORMAT, INDEX, StreamFormatError

MARKER = ".vlakit-export"
_SHARD = re.compile(r"shard-\d{6}\.tar")


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def state(fs, root: str) -> str:
    """One of ``absent``, ``empty``, ``complete`` / ``interrupted`` (a vlakit export), ``foreign``,
    ``file``."""
    if not fs.exists(root):
        return "absent"
    if not fs.isdir(root):
        return "file"
    names = _names(fs, root)
    if not names:
        return "empty"
    if INDEX in names and _is_index(fs, posixpath.join(root, INDEX)):
        return "interrupted" if MARKER in names else "complete"
    return "interrupted" if MARKER in names else "foreign"


def export_state(url: str, storage_options: dict | None = None) -> str:
    """:func:`state` of the export at ``url``."""
    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return state(fs, root)


def prepare(fs, root: str, *, overwrite: bool = False, shown: str | None = None) -> None:
    """Make ``root`` ready for a new export (see the module docstring); leaves :data:`MARKER`."""
    shown = shown or root
    st = state(fs, root)
    if st == "file":
        raise StreamFormatError(f"{shown}: a file is there, not an export directory; refusing to "
                                "replace it")
    if st == "foreign":
        raise StreamFormatError(f"{shown}: the directory is not empty and is not a vlakit export "
                                f"(no vlakit {INDEX}, no {MARKER} marker); refusing to write into "
                                "it or delete it, with or without --overwrite: choose a new or "
                                "empty directory")
    if st in ("complete", "interrupted"):
        if not overwrite:
            what = "a vlakit export" if st == "complete" else "an interrupted vlakit export"
            raise StreamFormatError(f"{shown}: {what} is already there (use --overwrite to "
                                    "replace it)")
        names = _names(fs, root)
        own = (INDEX, INDEX + ".tmp", MARKER)
        foreign = sorted(n for n in names if n not in own and not _SHARD.fullmatch(n))
        if foreign:
            raise StreamFormatError(f"{shown}: the export also holds entries vlakit did not write "
                                    f"({', '.join(foreign)}); refusing to --overwrite it: move "
                                    "them out first")
        _write_marker(fs, root)
        for n in [INDEX, INDEX + ".tmp"] + sorted(n for n in names if _SHARD.fullmatch(n)):
            if n in names:
                fs.rm(posixpath.join(root, n))
        return
    fs.makedirs(root, exist_ok=True)
    _write_marker(fs, root)


def finish(fs, root: str, index: dict) -> None:
    """Write ``index.json`` (the export is complete), then drop the marker."""
    if isinstance(fs, LocalFileSystem):
        atomic.write_json(posixpath.join(root, INDEX), index, indent=None)
    else:  # object stores: a PUT is atomic, a rename of a temporary is a copy
        with fs.open(posixpath.join(root, INDEX), "w") as f:
            json.dump(index, f)
    fs.rm(posixpath.join(root, MARKER))


def _names(fs, root: str) -> set[str]:
    return {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}


def _is_index(fs, path: str) -> bool:
    try:
        with fs.open(path, "r") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(fs, root: str) -> None:
    with fs.open(posixpath.join(root, MARKER), "w") as f:
        json.dump({"vlakit": "export in progress"}, f)


__all__ = ["MARKER", "state", "export_state", "prepare", "finish", "shard_name"]
