"""The manifest of a store and the integrity checks built on it.

``meta/manifest.json`` is written last (its presence makes a store complete). From format
version 2 it also lists every other file of the store under ``"files"``: the path relative to
the store, its size, and for every file that is not a chunk file (``zarr.json``s, the parquet
tables, ``stats.json``, the plan and part markers) its CRC32C. Chunk and shard files
(``data/<feature>/c/...``) carry a CRC32C per chunk inside them (:mod:`vladata.store.layout`), so
their size is listed and their bytes are checked chunk by chunk.

Two levels of checking:

- :func:`check_open` (cheap; ``vladata.open`` runs it): the manifest and every metadata file
  parse and match the manifest's sizes and checksums; every array's ``zarr.json`` parses and its
  length agrees with the episodes table; the first block of ``action.norm`` is what
  ``stats.json`` makes of ``action`` (an edit of the statistics changes every row).
- :func:`verify` (deep; ``vladata verify``): that, plus every listed file present at its size,
  no unlisted chunk file, every chunk read and its CRC32C checked, and ``action.norm`` /
  ``action.tokens`` equal to what ``stats.json`` makes of ``action``. It returns the list of
  problems instead of stopping at the first.

Version 1 stores have no file list: the structural and per-array checks still apply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import google_crc32c
import numpy as np
from tqdm.auto import tqdm

import vladata.atomic as atomic
from vladata.errors import StoreError
from vladata.store import fs, layout

_BLOCK = 16 << 20
NORM = "action.norm"
_SKIP_SUFFIXES = (".tmp", ".stats.npz")  # half-written files; part statistics (merged, deleted)


def is_chunk_file(rel: str) -> bool:
    """True for ``data/<feature>/c/...``: a chunk or shard file (checksummed per chunk inside)."""
    parts = rel.split("/")
    return len(parts) >= 4 and parts[0] == layout.DATA and parts[2] == "c"


def file_crc32c(path: str | os.PathLike) -> str:
    crc = 0
    with (fs.to_path(path).open("rb") if fs.is_remote(path) else open(path, "rb")) as f:
        while block := f.read(_BLOCK):
            crc = google_crc32c.extend(crc, block)
    return f"{crc:08x}"


def _walk(root: Path):
    """The store's own files: ``zarr.json``, ``data/``, ``meta/`` (not e.g. an export beside
    them), as ``(relative path, path, size)``; the size is None where listing does not give it
    (locally: a stat is as cheap), known on object storage (one listing, no request per file)."""
    if (root / "zarr.json").is_file():
        top = root / "zarr.json"
        yield "zarr.json", top, top.stat().st_size if fs.is_remote(root) else None
    for top in (layout.DATA, layout.META):
        for rel, p, size in fs.files(root, top):
            if (rel in (layout.MANIFEST, layout.RESTATS) or p.name.endswith(_SKIP_SUFFIXES)
                    or rel.startswith(layout.STAGING + "/")):
                continue
            yield rel, p, size


def file_table(root: str | os.PathLike) -> dict[str, dict]:
    """``{relative path: {"size": n[, "crc32c": hex]}}`` of every file of the store."""
    root = fs.to_path(root)
    table = {}
    for rel, p, size in sorted(_walk(root), key=lambda x: x[0]):
        entry = {"size": size if size is not None else p.stat().st_size}
        if not is_chunk_file(rel):
            entry["crc32c"] = file_crc32c(p)
        table[rel] = entry
    return table


def write(root: str | os.PathLike, doc: dict) -> None:
    """Write the manifest ``doc`` plus the file table, atomically (temporary name, then rename)."""
    root = fs.to_path(root)
    doc = {**doc, "files": file_table(root)}
    atomic.write_json(root / layout.MANIFEST, doc)


def refresh(root: str | os.PathLike) -> None:
    """Re-list the files of a complete store after an in-place rewrite (``vladata stats``)."""
    doc = read(root)
    if doc.get("format_version", 1) >= 2:
        write(root, doc)


def read(root: str | os.PathLike) -> dict:
    path = fs.to_path(root) / layout.MANIFEST
    doc = _load_json(path)
    if not isinstance(doc, dict) or doc.get("complete") is not True:
        raise StoreError(f"{path}: not a vlakit manifest (expected an object with complete: true)")
    return doc


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{path}: missing (the store is damaged)") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: unreadable or truncated JSON ({type(e).__name__}: {e})") from None


def missing_data(root: str | os.PathLike) -> list[str]:
    """Listed chunk files that are absent or of another size (a stat each, no reading)."""
    root = fs.to_path(root)
    files = read(root).get("files") or {}
    return [p for rel, e in files.items() if is_chunk_file(rel)
            for p in [_check_file(root, rel, e, crc=False)] if p]


def _check_file(root: Path, rel: str, entry: dict, *, crc: bool,
                listed: dict | None = None) -> str | None:
    """A problem with one listed file, or None. ``listed``: the sizes of the files found by one
    listing (for object storage), instead of a request per file."""
    p = root / rel
    try:
        size = listed[rel] if listed is not None else p.stat().st_size
    except (FileNotFoundError, KeyError):
        return f"{p}: missing (listed in {layout.MANIFEST})"
    if size != entry.get("size"):
        return (f"{p}: {size} bytes, {layout.MANIFEST} records {entry.get('size')} (the file was "
                "truncated or changed after conversion)")
    if crc and "crc32c" in entry and file_crc32c(p) != entry["crc32c"]:
        return (f"{p}: CRC32C {file_crc32c(p)} differs from {entry['crc32c']} in "
                f"{layout.MANIFEST} (the file was changed after conversion)")
    return None


def check_open(root: str | os.PathLike) -> tuple[dict, dict]:
    """The cheap checks of an opened store; -> (manifest, store attributes). Raises StoreError."""
    root = fs.to_path(root)
    man = read(root)
    for rel, entry in (man.get("files") or {}).items():
        if not is_chunk_file(rel):
            problem = _check_file(root, rel, entry, crc=True)
            if problem:
                raise StoreError(problem)
    problems = _structure(root)
    attrs = _load_json(root / "zarr.json")["attributes"]["vlakit"]
    if not problems and NORM in attrs["features"]:  # the first block of action.norm: a few KB
        from vladata.store.shard_reader import ArrayReader
        problems = _derived(root, attrs, {k: ArrayReader(root / layout.DATA / k)
                                          for k in ("action", NORM) if k in attrs["features"]},
                            rows=layout.BLOCK)
    if problems:
        raise StoreError(problems[0])
    return man, attrs


def _structure(root: Path) -> list[str]:
    """Metadata parses; every array's length and the episodes table agree with num_frames."""
    top = root / "zarr.json"
    meta = _load_json(top)
    attrs = meta.get("attributes", {}).get("vlakit") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("features"), dict):
        return [f"{top}: no 'vlakit' attributes with 'features' (not a vlakit store)"]
    n = attrs.get("num_frames")
    problems = []
    for name in attrs["features"]:
        p = root / layout.DATA / name / "zarr.json"
        try:
            shape = _load_json(p)["shape"]
        except StoreError as e:
            problems.append(str(e))
            continue
        except (KeyError, TypeError):
            problems.append(f"{p}: array metadata without a shape")
            continue
        if not shape or shape[0] != n:
            problems.append(f"{p}: shape {shape}, but the store has {n} frames ({top})")
    eps_path = root / layout.META / "episodes.parquet"
    try:
        eps = fs.read_parquet(eps_path, columns=["start", "length"])
    except Exception as e:  # noqa: BLE001 -- polars/arrow raise many types for a damaged file
        return problems + [f"{eps_path}: unreadable ({type(e).__name__}: {e})"]
    starts, lengths = eps["start"].to_numpy(), eps["length"].to_numpy()
    total = int(lengths.sum())
    if total != n or len(eps) != attrs.get("num_episodes"):
        problems.append(f"{eps_path}: {len(eps)} episodes of {total} frames, but {top} records "
                        f"{attrs.get('num_episodes')} episodes of {n} frames")
    elif len(starts) and not np.array_equal(starts, np.concatenate([[0], np.cumsum(lengths)[:-1]])):
        problems.append(f"{eps_path}: episode starts are not the running sum of their lengths")
    stats = root / layout.META / "stats.json"
    if stats.exists():
        try:
            _load_json(stats)
        except StoreError as e:
            problems.append(str(e))
    return problems


def verify(root: str | os.PathLike, *, progress: bool = True) -> list[str]:
    """Every check there is (see the module docstring); -> the problems found, [] if none."""
    from vladata.store.shard_reader import ArrayReader
    root = fs.to_path(root)
    try:
        man = read(root)
        problems = _structure(root)
    except StoreError as e:
        return [str(e)]
    files = man.get("files")
    if files is not None:
        found = list(_walk(root))
        listed = ({rel: size for rel, _, size in found} if fs.is_remote(root) else None)
        for rel, entry in files.items():
            problem = _check_file(root, rel, entry, crc=True, listed=listed)
            if problem:
                problems.append(problem)
        problems += [f"{root / rel}: not listed in {layout.MANIFEST} (a stray or stale file)"
                     for rel, _, _ in found if rel not in files and is_chunk_file(rel)]
    if problems:
        return problems
    attrs = _load_json(root / "zarr.json")["attributes"]["vlakit"]
    arrays = {name: ArrayReader(root / layout.DATA / name, verify=True) for name in attrs["features"]}
    total = sum(a.shape[0] for a in arrays.values())
    with tqdm(total=total, unit="row", unit_scale=True, desc="verify", disable=not progress,
              dynamic_ncols=True) as bar:
        for name, arr in arrays.items():
            try:
                _read_all(arr, bar)
                if arr.attrs.get("encoding") in layout.VIDEO_CODECS:
                    from vladata.store.video import verify_array
                    problems += verify_array(arr)  # every packet decodes; settings recorded
            except StoreError as e:
                problems.append(str(e))
    if not problems:
        problems += _derived(root, attrs, arrays)
    return problems


def _read_all(arr, bar, rows: int = 4 * layout.BLOCK) -> None:
    for lo in range(0, arr.shape[0], rows):
        hi = min(lo + rows, arr.shape[0])
        if arr.vlen:
            arr.read_items(lo, hi)
        elif arr.fast:
            arr.read(lo, hi)
        else:  # zarr-python checks each chunk's crc32c codec itself
            try:
                arr.read(lo, hi)
            except ValueError as e:
                raise StoreError(f"{arr.path}: rows {lo}..{hi}: {e}") from None
        bar.update(hi - lo)


def _derived(root: Path, attrs: dict, arrays: dict, rows: int | None = None) -> list[str]:
    """``action.norm`` and ``action.tokens`` are what stats.json makes of ``action``.

    ``rows``: check only the first rows (any edit of the statistics changes every row).
    """
    from vladata.normalization import Normalization, normalize
    from vladata.stats import stats_from_json
    from vladata.store.finalize import NORM_KEY, TOKENS_KEY
    from vladata.tokenize import ActionTokenizer
    if NORM_KEY not in arrays or "action" not in arrays or "normalization" not in attrs:
        return []
    stats_path = root / layout.META / "stats.json"
    try:
        stats = stats_from_json(_load_json(stats_path))[0]["action"]
    except (KeyError, ValueError, TypeError) as e:
        return [f"{stats_path}: no usable statistics of 'action' ({type(e).__name__}: {e})"]
    norm = Normalization.from_dict(attrs["normalization"])
    tok = ActionTokenizer.from_dict(attrs["tokenizer"]) if attrs.get("tokenizer") else None
    src, dst = arrays["action"], arrays[NORM_KEY]
    end = src.shape[0] if rows is None else min(rows, src.shape[0])
    for lo in range(0, end, 16 * layout.BLOCK):
        hi = min(lo + 16 * layout.BLOCK, end)
        want = normalize(src.read(lo, hi), stats, norm)
        got = dst.read(lo, hi)
        close = np.isclose(got, want, rtol=0, atol=1e-6, equal_nan=True)
        if not close.all():
            row = int(np.argwhere(~close)[0][0])
            return [f"{stats_path}: does not match {dst.path} (row {lo + row} differs from the "
                    "action normalised with these statistics: stats.json was edited, or "
                    "action.norm is stale; run `vladata stats`)"]
        if tok is not None and TOKENS_KEY in arrays:
            if not np.array_equal(arrays[TOKENS_KEY].read(lo, hi), tok.encode(got).astype(np.int32)):
                return [f"{arrays[TOKENS_KEY].path}: rows {lo}..{hi} are not the tokens of "
                        f"action.norm under the store's tokenizer"]
    return []


__all__ = ["write", "refresh", "read", "check_open", "verify", "file_table", "file_crc32c",
           "is_chunk_file"]
