"""HDF5 file access shared by the HDF5 readers: opening with the decoder-error boundary, the
datasets and groups of a file, and the references a file makes to other files."""

from __future__ import annotations

import fnmatch
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py

from vladata.errors import SourceFormatError, VladataError
from vladata.sources.boundary import DECODER_ERRORS, raised_in
from vladata.sources.paths import is_inside


def natural_key(s: str) -> list:
    """Sort key that orders embedded integers numerically (demo_2 < demo_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@contextmanager
def open_file(path: Path, episode: object = None) -> Iterator[h5py.File]:
    """The open file; what h5py raises on damaged bytes while it is used (KeyError,
    RuntimeError, OSError, ... from the HDF5 library) becomes a SourceFormatError naming it.
    Errors raised outside h5py's own code (bugs) keep their class and traceback."""
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise SourceFormatError("file not found", file=path, episode=episode) from None
    except OSError as e:
        raise SourceFormatError(f"unreadable HDF5 file, truncated or corrupt ({e})", file=path,
                                episode=episode) from None
    try:
        with f:
            yield f
    except DECODER_ERRORS as e:
        if isinstance(e, VladataError) or not raised_in(e, "h5py"):
            raise
        raise SourceFormatError(f"unreadable HDF5 data, truncated or corrupt "
                                f"({type(e).__name__}: {e})", file=path, episode=episode) from None


def dataset_at(f: h5py.File, group: str, key: str, file: Path, episode: str) -> h5py.Dataset:
    path = f"{group}/{key}" if group else key
    obj = f.get(path)
    if not isinstance(obj, h5py.Dataset):
        what = "missing" if obj is None else "a group, not a dataset"
        raise SourceFormatError(f"dataset {what}", file=file, episode=episode, key=path)
    return obj


def find_groups(f: h5py.File, pattern: str, file: Path) -> list[str]:
    """Group paths matching a '/'-separated fnmatch pattern, natural order."""
    level = [""]
    for piece in pattern.strip("/").split("/"):
        nxt = []
        for g in level:
            node = f[g] if g else f
            for k in str_keys(node, file):
                if fnmatch.fnmatchcase(k, piece) and isinstance(node[k], h5py.Group):
                    nxt.append(f"{g}/{k}" if g else k)
        level = nxt
    return sorted(level, key=natural_key)


def str_keys(group: h5py.Group, file: object, episode: object = None) -> list[str]:
    """The member names of ``group``; a name that is not UTF-8 (h5py gives bytes) is refused."""
    keys = list(group.keys())
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise SourceFormatError(f"member name {bad[0]!r} is not UTF-8", file=file,
                                episode=episode, key=group.name)
    return keys


def dataset_in(group: h5py.Group, key: str, file: object, episode: object = None) -> h5py.Dataset:
    """``group[key]``, which must be a dataset (not a group, a named datatype, ...)."""
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        what = "missing" if obj is None else f"a {type(obj).__name__}, not a dataset"
        raise SourceFormatError(what, file=file, episode=episode, key=f"{group.name}/{key}")
    return obj


def outside_references(f: h5py.File, root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(object, file)`` for every file outside ``root`` that reading ``f`` could open: the
    targets of external links (resolved from ``f``'s folder), external raw storage files
    (resolved from the working directory, or ``HDF5_EXTFILE_PREFIX``, as HDF5 does) and the
    source files of virtual datasets. Links are listed without being followed."""
    names: list[bytes] = []
    f.id.links.visit(names.append)  # names only: a callback that raises becomes SystemError
    links = [(name, f.get(name, getlink=True)) for name in names]
    here = Path(f.filename).parent
    ext_base = os.environ.get("HDF5_EXTFILE_PREFIX") or os.getcwd()
    ext_base = ext_base.replace("${ORIGIN}", str(here))  # HDF5's name for the file's folder
    out = []
    for raw, link in links:
        name = raw.decode(errors="replace")
        if isinstance(link, h5py.ExternalLink):
            out.append((name, str(here / link.filename)))
        elif isinstance(link, h5py.HardLink):
            obj = f.get(raw)
            if not isinstance(obj, h5py.Dataset):
                continue
            for ext_file, _, _ in obj.external or ():
                if isinstance(ext_file, bytes):
                    ext_file = ext_file.decode(errors="replace")
                out.append((name, os.path.join(ext_base, ext_file)))
            if obj.is_virtual:
                out += [(name, str(here / vs.file_name)) for vs in obj.virtual_sources()
                        if vs.file_name != "."]
    return [(name, target) for name, target in out if not is_inside(root, target)]
