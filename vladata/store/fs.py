"""Where a store's files live: a local directory, or any fsspec URL (``s3://``, ``gs://``, ...).

Local paths stay :class:`pathlib.Path` and keep every local guarantee (temporary name, fsync,
rename). A URL becomes a :class:`upath.UPath` (``pip install 'vlakit[s3]'``), which offers the
same methods over the URL's fsspec filesystem; the filesystem's options come from its usual
configuration (for S3: ``AWS_*`` variables such as ``AWS_ENDPOINT_URL``, or fsspec's
``FSSPEC_S3_*``), so a URL alone names the store in every process and on every node.

On object storage a file is written in one PUT, which is atomic (readers see the old object or
the new one), so no temporary name is needed; the rules of the writer stay the same: data first,
then a part's statistics and marker, the manifest last.

Reading (:func:`buffer`): a shard or chunk file of a remote store is read through ranged GETs
(:class:`RemoteFile`; the shard reader fetches a shard's index once and then only the chunks of a
window), or, when ``VLADATA_CACHE_DIR`` is set, through a local read-through cache: each file is
fetched whole once into that directory, under a name made of its URL, size and ETag (a changed
object gets a new name), and memory-mapped from there.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import shutil
from pathlib import Path

import numpy as np

CACHE_ENV = "VLADATA_CACHE_DIR"


def is_remote(path) -> bool:
    """True for an fsspec URL other than ``file://`` (also for a UPath of one)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def to_path(path):
    """``path`` as a :class:`~pathlib.Path`, or a :class:`upath.UPath` for a remote URL."""
    if not is_remote(path):
        s = os.fspath(path) if not isinstance(path, str) else path
        return Path(s[len("file://"):] if s.startswith("file://") else s)
    if not isinstance(path, str) and hasattr(path, "fs"):
        return path
    try:
        from upath import UPath
    except ImportError:
        from vladata.errors import StoreError
        raise StoreError(f"{path}: stores at URLs need universal_pathlib and the URL's fsspec "
                         "filesystem: pip install 'vlakit[s3]'") from None
    # no listings cache: other processes and nodes write the same store
    return UPath(str(path), use_listings_cache=False)


def zarr_path(path):
    """What zarr-python opens for ``path``: the local path, or the URL string."""
    return str(path) if is_remote(path) else path


def write_file(path, pieces) -> None:
    """Write the concatenation of ``pieces`` (bytes-likes) whole: locally under a temporary name
    renamed over ``path`` (a resumed conversion deletes what an interrupted one left), remotely
    in one PUT."""
    from vladata.atomic import TMP_SUFFIX
    if is_remote(path):
        to_path(path).write_bytes(b"".join(bytes(p) for p in pieces))
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        for p in pieces:
            f.write(p)
    os.replace(tmp, path)


def read_parquet(path, **kwargs):
    import polars as pl
    if is_remote(path):
        return pl.read_parquet(io.BytesIO(to_path(path).read_bytes()), **kwargs)
    return pl.read_parquet(path, **kwargs)


def write_parquet(df, path) -> None:
    if is_remote(path):
        buf = io.BytesIO()
        df.write_parquet(buf)
        to_path(path).write_bytes(buf.getvalue())
    else:
        df.write_parquet(path)


def rmtree(path) -> None:
    """Delete the directory (or prefix) ``path`` and everything under it."""
    if is_remote(path):
        p = to_path(path)
        if p.fs.exists(p.path):
            p.fs.rm(p.path, recursive=True)
    else:
        shutil.rmtree(path)


def move(src, dst) -> None:
    """Rename ``src`` (a file or directory) to ``dst``: ``os.replace`` locally, copy then delete
    on object storage (which has no rename)."""
    if is_remote(src):
        s, d = to_path(src), to_path(dst)
        keys = s.fs.find(s.path)
        for key in keys:
            s.fs.copy(key, d.path + key[len(s.path):])
        s.fs.rm(keys)
    else:
        os.replace(src, dst)


def files(root, top: str):
    """``(path relative to root, path, size)`` of every file under ``root/top``, listed once."""
    if is_remote(root):
        r = to_path(root)
        base = r.path.rstrip("/")
        found = r.fs.find(f"{base}/{top}".rstrip("/"), detail=True)
        for key, info in sorted(found.items()):
            if info.get("type", "file") != "file":
                continue
            rel = key[len(base) + 1:]
            yield rel, r / rel, int(info["size"])
        return
    root = Path(root)
    for dirpath, _, names in os.walk(root / top if top else root):
        for name in names:
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p, None


# -- reading remote chunk and shard files ------------------------------------------------------

class RemoteFile:
    """A remote file read by ranged GETs: ``len(f)`` and ``f[a:b]`` (a uint8 array) only."""

    def __init__(self, fs, path: str, size: int):
        self.fs, self.path, self.size = fs, path, int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("RemoteFile supports contiguous slices only")
        a, b, _ = key.indices(self.size)
        if b <= a:
            return np.zeros(0, np.uint8)
        data = self.fs.cat_file(self.path, start=a, end=b)
        return np.frombuffer(data, np.uint8)


def buffer(url: str):
    """The bytes of the remote file ``url`` for the shard reader: a :class:`RemoteFile`, or a
    memory map of its copy in the read-through cache (``VLADATA_CACHE_DIR``); None if absent."""
    p = to_path(url)
    try:
        info = p.fs.info(p.path)
    except FileNotFoundError:
        return None
    size = int(info["size"])
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        return RemoteFile(p.fs, p.path, size)
    tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime"))
    key = hashlib.sha256(f"{url}\0{size}\0{tag}".encode()).hexdigest()
    local = Path(cache) / key[:2] / key
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{key}.{os.getpid()}.tmp")
        data = p.fs.cat_file(p.path)
        if len(data) != size:
            from vladata.errors import StoreError
            raise StoreError(f"{url}: read {len(data)} bytes, the object has {size}")
        tmp.write_bytes(data)
        os.replace(tmp, local)  # several loader workers may fetch it at once: last one wins
    if size == 0:
        return np.zeros(0, np.uint8)
    with open(local, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)


__all__ = ["is_remote", "to_path", "zarr_path", "write_file", "read_parquet", "write_parquet",
           "rmtree", "move", "files", "RemoteFile", "buffer", "CACHE_ENV"]
