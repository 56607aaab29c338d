"""The samples of one tar shard of the streaming form: :func:`iter_samples` (layout:
:mod:`vladata.stream`).

The tar reading is our own few lines over ``tarfile`` and ``fsspec`` (any URL, ``s3://``
included), not ``webdataset``'s iterators: those are built to skip or warn on bad samples through
a handler, and a shard here must either match its index.json entry exactly -- the same samples, in
order, each with readable members and a well-formed meta.json -- or raise
:class:`StreamFormatError` naming the shard and the sample. A tar cut at a member boundary reads as
a valid, shorter tar, so the count is checked against the index. Plain ``webdataset`` still reads
the shards (the tests check it), which is why it is only a test dependency.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import tokenize

import fsspec
import numpy as np

from vladata.store.shard_reader import decode_vlen
from vladata.stream.format import StreamFormatError

# what np.load raises on a malformed .npy (its header is parsed with ast/tokenize)
NPY_ERRORS = (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError)
META_KEYS = ("episode_index", "episode_length", "split", "frame_start", "own", "segments")


def iter_samples(url: str, storage_options: dict | None = None, keys: list | None = None):
    """Samples of one tar shard: dicts of member extension -> parsed content, plus ``__key__`` and
    ``__url__`` (the shard).

    ``keys`` (the shard's ``keys`` in index.json: ``[episode, own_lo, own_hi]`` per sample) is what
    the shard must hold, in order: a shard that ends early -- a tar cut at a member boundary reads
    as a shorter, valid tar -- or holds other samples is a :class:`StreamFormatError` naming it.
    """
    expected = None if keys is None else [f"e{int(e):07d}_{int(lo):07d}" for e, lo, _ in keys]
    n = 0
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f, \
                tarfile.open(fileobj=f, mode="r|") as tar:
            sample: dict = {}
            for m in tar:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                key, _, ext = base.partition(".")
                if sample and key != sample["__key__"]:
                    yield _parse(sample, url, expected, n)
                    n, sample = n + 1, {}
                sample["__key__"] = key
                sample[ext] = tar.extractfile(m).read()
            if sample:
                yield _parse(sample, url, expected, n)
                n += 1
    except (tarfile.TarError, EOFError) as e:
        raise StreamFormatError(f"{url}: not a readable tar shard ({e})") from e
    except FileNotFoundError as e:
        raise StreamFormatError(f"{url}: shard not found") from e
    if expected is not None and n != len(expected):
        raise StreamFormatError(f"{url}: the shard ends after {n} samples, index.json lists "
                                f"{len(expected)} (truncated or replaced: export it again)")


def _parse(sample: dict, url: str, expected: list[str] | None = None, n: int = 0) -> dict:
    where = f"{url} sample {sample['__key__']}"
    if expected is not None and (n >= len(expected) or sample["__key__"] != expected[n]):
        want = expected[n] if n < len(expected) else f"no sample after {len(expected)}"
        raise StreamFormatError(f"{where}: sample {n} of the shard should be {want} as "
                                "index.json lists (the shard was replaced: export it again)")
    if "meta.json" not in sample:
        raise StreamFormatError(f"{where}: no meta.json")
    try:
        meta = json.loads(sample["meta.json"])
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise StreamFormatError(f"{where}: meta.json is not valid JSON ({e})") from None
    lacking = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if lacking:
        raise StreamFormatError(f"{where}: meta.json lacks {lacking}")
    bad = _meta_problems(meta)
    if bad:
        raise StreamFormatError(f"{where}: meta.json has malformed {bad}")
    try:
        named = f"e{int(meta['episode_index']):07d}_{int(meta['own'][0]):07d}"
    except (TypeError, ValueError, IndexError, KeyError):
        named = None
    if named != sample["__key__"]:
        raise StreamFormatError(f"{where}: meta.json says episode {meta['episode_index']!r} from "
                                f"{meta['own']!r}, not what the sample key names")
    out = {"__key__": sample["__key__"], "__url__": url, "meta": meta}
    for ext, data in sample.items():
        if ext.endswith(".jpegs"):
            out[ext[:-6]] = decode_vlen(memoryview(data), f"{where} member {ext}")
        elif ext.endswith(".npy"):
            try:
                out[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
            except NPY_ERRORS as e:  # a bad .npy header or a short body
                raise StreamFormatError(f"{where}: member {ext} is not a readable .npy array "
                                        f"({type(e).__name__}: {e})") from None
    lengths = {k: len(v) for k, v in out.items() if k not in ("__key__", "__url__", "meta")}
    if len(set(lengths.values())) > 1:
        raise StreamFormatError(f"{where}: its features hold different frame counts {lengths}")
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _meta_problems(meta: dict) -> list[str]:
    """The fields of a sample's meta.json whose types are not what the export writes."""
    bad = [k for k in ("episode_index", "episode_length", "frame_start") if not _is_int(meta[k])]
    own = meta["own"]
    if not (isinstance(own, list) and len(own) == 2 and all(map(_is_int, own))):
        bad.append("own")
    segs = meta["segments"]
    if not isinstance(segs, list) or not all(
            isinstance(g, dict) and _is_int(g.get("segment_index"))
            and all(isinstance(g.get(k), (str, type(None))) for k in ("instruction", "task"))
            and (g.get("embedding") is None or (isinstance(g["embedding"], list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in g["embedding"])))
            for g in segs):
        bad.append("segments")
    return bad
