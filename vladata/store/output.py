"""Where a conversion may write, and what ``--overwrite`` may delete.

vlakit deletes only what it wrote and can recognise. A directory is a **vlakit store** when it
holds either of vlakit's markers:

- ``.vlakit-conversion`` (:data:`MARKER`), a small JSON file the writer puts in the output
  *before anything else* and removes once ``meta/manifest.json`` is written; it is what makes an
  interrupted conversion recognisable as vlakit's, at any point of its run;
- ``zarr.json`` whose attributes hold ``vlakit.format_version`` (written by the plan stage;
  stores converted before the marker existed are recognised by it).

It is **complete** when ``meta/manifest.json`` is there too, **interrupted** otherwise. Anything
else -- a missing path, an empty directory, a non-empty directory without a marker, a file -- is
not a store. The rules (:func:`check` decides and writes nothing, so a source that fails to
plan leaves no output; :func:`begin` then clears or marks the output):

- the output may not be equal to, inside, or contain any input of the source (symlinks
  resolved), with or without ``--overwrite``;
- a file, or a non-empty directory that is not a vlakit store, is refused, with or without
  ``--overwrite``;
- ``--overwrite`` replaces a vlakit store by deleting only vlakit's own entries
  (:data:`ENTRIES`: the marker, ``zarr.json``, ``data/``, ``meta/`` and ``wds/``, the streaming
  form ``convert --format wds`` puts there); a store holding anything else at its top level is
  refused, naming it;
- ``--resume`` finishes an interrupted store (deleting the ``*.tmp`` files an interrupted write
  left), and on a complete one does nothing.

The marker is also what a failed conversion leaves: it is never complete-looking, and
``--resume`` or ``--overwrite`` take it from there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import vladata.atomic as atomic
from vladata.errors import IncompleteStoreError, StoreError
from vladata.store import fs, layout

MARKER = ".vlakit-conversion"
ENTRIES = (MARKER, "zarr.json", layout.DATA, layout.META, "wds")  # all a store's top level holds


def state(out: Path) -> str:
    """One of ``absent``, ``empty``, ``complete`` / ``interrupted`` (a vlakit store), ``foreign``,
    ``file``."""
    if not out.exists() and not out.is_symlink():
        return "absent"
    if not out.is_dir():
        return "file"
    if not any(out.iterdir()):
        return "empty"
    if not ((out / MARKER).is_file() or _has_vlakit_attrs(out / "zarr.json")):
        return "foreign"
    return "complete" if (out / layout.MANIFEST).is_file() else "interrupted"


def check(out: Path, *, inputs=(), resume: bool = False, overwrite: bool = False) -> str:
    """Decide, without writing anything, what a conversion to ``out`` does: ``new`` (a new or
    empty directory), ``replace`` (``overwrite`` a vlakit store), ``resume``, ``restart`` (resume
    a conversion interrupted before its plan) or ``complete`` (resume a complete store: nothing
    to do). Anything not allowed raises a :class:`StoreError` naming ``out``."""
    check_apart(out, inputs)
    st = state(out)
    if st == "file":
        raise StoreError(f"{out}: a file is there, not a store directory; refusing to replace "
                         "it (choose another output path)")
    if st == "foreign":
        raise StoreError(f"{out}: the directory is not empty and is not a vlakit store (no "
                         f"{MARKER} marker, no zarr.json with vlakit attributes); refusing to "
                         "write into it or delete it, with or without --overwrite: choose a new "
                         "or empty directory")
    if st in ("complete", "interrupted") and overwrite:
        _check_own(out)
        return "replace"
    if st == "complete":
        if resume:
            return "complete"
        raise StoreError(f"{out}: a complete store is already there (use --overwrite to replace "
                         "it)")
    if st == "interrupted":
        if not resume:
            raise IncompleteStoreError(f"{out}: an interrupted conversion is there: use --resume "
                                       "to finish it or --overwrite to start again")
        return "resume" if (out / layout.PLAN).is_file() else "restart"
    return "new"


def begin(out: Path, decision: str) -> str:
    """Carry out :func:`check`'s ``decision``: return ``new`` (``out`` is an empty directory but
    for :data:`MARKER`), ``resume`` (an interrupted store, its ``*.tmp`` files deleted) or
    ``complete``."""
    if decision in ("replace", "restart"):
        _clear(out)
        return "new"
    if decision == "resume":
        _write_marker(out)
        remove_temporary(out)
        return "resume"
    if decision == "new":
        if not fs.is_remote(out):  # object storage has no directories to make
            out.mkdir(parents=True, exist_ok=True)
        _write_marker(out)
    return decision


def finish(out: Path) -> None:
    """The manifest is written: the store is complete, drop the in-progress marker."""
    (out / MARKER).unlink(missing_ok=True)


def check_apart(out: Path, inputs) -> None:
    """Refuse an output equal to, inside or containing one of ``inputs`` (symlinks resolved).
    An output at a URL (object storage) is apart from the local inputs of every source."""
    if fs.is_remote(out):
        return
    o = out.resolve()
    for src in inputs:
        s = Path(src).resolve()
        how = ("is" if o == s else "is inside" if s in o.parents
               else "contains" if o in s.parents else None)
        if how:
            raise StoreError(f"{out}: the output {how} the source {src}; refusing to write there "
                             "(a conversion never writes into or deletes its input): choose an "
                             "output outside the source")


def source_inputs(source) -> list[str]:
    """The files and folders a source reads, as far as its attributes say (``root``, ``path``,
    ``src_dir``, ``mapping_file``)."""
    found = []
    for attr in ("root", "path", "src_dir", "mapping_file"):
        v = getattr(source, attr, None)
        if isinstance(v, (str, os.PathLike)) and str(v):
            found.append(os.fspath(v))
    return found


def remove_temporary(out: Path) -> None:
    """Delete the ``*.tmp`` files an interrupted run of ours left in ``data/`` and ``meta/``
    (on object storage every file is one PUT: there are none)."""
    if fs.is_remote(out):
        return
    for sub in (layout.DATA, layout.META):
        for p in (out / sub).rglob(f"*{atomic.TMP_SUFFIX}*"):
            if p.is_file() and (atomic.is_temporary(p) or p.name.endswith(".tmp.npz")):
                p.unlink()


def _check_own(out: Path) -> None:
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ENTRIES)
    if foreign:
        raise StoreError(f"{out}: the store also holds entries vlakit did not write "
                         f"({', '.join(foreign)}); refusing to --overwrite it: move them out first")


def _clear(out: Path) -> None:
    """Delete a vlakit store's own entries (nothing else is there, or refuse), keep the marker."""
    _check_own(out)
    _write_marker(out)  # recognisable as ours even if the deletion below is interrupted
    (out / layout.MANIFEST).unlink(missing_ok=True)  # first: never complete-looking from here
    for name in ENTRIES[1:]:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            fs.rmtree(p)


def _write_marker(out: Path) -> None:
    if not (out / MARKER).is_file():
        atomic.write_json(out / MARKER, {"vlakit": "conversion in progress",
                                         "format_version": layout.FORMAT_VERSION})


def _has_vlakit_attrs(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text())
        return "format_version" in doc["attributes"]["vlakit"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


__all__ = ["MARKER", "ENTRIES", "state", "check", "begin", "finish", "check_apart", "source_inputs",
           "remove_temporary"]
