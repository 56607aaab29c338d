"""The plan scan of one TFRecord shard: where each episode lies, its length and its language.

Every record is read once: framing and CRCs, protobuf parse, the check of every leaf against
``features.json`` (:meth:`Record.check`), T, the language segments and the episode metadata.
Pixels are not decoded here. :func:`scan_shard` is a top-level function of picklable arguments,
so the source can run it over shards in a process pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from vladata.episode import Segment
from vladata.sources.oxe.decode import Record
from vladata.sources.oxe.standardize import decode_codes
from vladata.sources.oxe.tfds import Leaf
from vladata.sources.oxe.tfrecord import (CorruptLengthError, RecordError, RecordRef,
                                          TruncatedRecordError, scan_records)

_MAX_META_VALUES = 64  # episode-level numeric leaves up to this size go into the metadata


@dataclass(frozen=True)
class LanguageSpec:
    """Where the instruction is: a Text step key (or int32 code points if ``codes``), an
    optional per-step embedding key, and other Text keys kept as metadata."""

    key: str | None = None
    codes: bool = False
    embedding: str | None = None
    alt: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardJob:
    path: str
    split: str
    shard_file: str
    expected: int | None          # records dataset_info.json promises, if it says
    leaves: tuple[Leaf, ...]
    language: LanguageSpec
    trim: tuple[int, int]
    verify: bool = True
    skip_bad: bool = False


@dataclass
class Scanned:
    """One planned record."""

    ref: RecordRef
    steps: int                    # T as stored (before any trim)
    segments: list[Segment]
    metadata: dict = field(default_factory=dict)


def segments_of(texts: list[str], emb: np.ndarray | None) -> list[Segment]:
    """Runs of consecutive equal, non-blank instructions -> segments (inclusive ends)."""
    out: list[Segment] = []
    start = 0
    for t in range(1, len(texts) + 1):
        if t == len(texts) or texts[t] != texts[start]:
            if texts[start].strip():
                out.append(Segment(start, t - 1, texts[start],
                                   embedding=None if emb is None else
                                   np.asarray(emb[start], np.float32).reshape(-1)))
            start = t
    return out


def _jsonable_value(rec: Record, lf: Leaf, T: int):
    if lf.kind == "text":
        vals = rec.texts(lf)
        return vals[0] if len(vals) == 1 else vals
    if lf.kind == "image" or lf.size > _MAX_META_VALUES or lf.size < 0:
        return None
    arr = rec.tensor(lf, T)
    return arr.item() if arr.size == 1 else arr.tolist()


def scan_record(rec: Record, job: ShardJob) -> Scanned | str:
    """Plan one parsed record; a string says why it holds no frames after the trim."""
    leaves = list(job.leaves)
    T = rec.length(leaves)
    rec.check(leaves, T)
    by_rel = {lf.rel: lf for lf in leaves if lf.in_steps}
    a, b = job.trim
    n = T - a - b
    meta: dict = {"shard": job.shard_file, "record": rec.record, "steps": T}
    if a or b:
        meta["trim"] = [a, b]
    if n <= 0:
        return (f"{job.path}, record {rec.record}: {T} step(s), nothing left after dropping the "
                f"first {a} and last {b} (the dataset's standardisation)")
    lang = job.language
    segments: list[Segment] = []
    if lang.key is not None:
        lf = by_rel[lang.key]
        texts = decode_codes(rec.tensor(lf, T)) if lang.codes else rec.texts(lf)
        emb = rec.tensor(by_rel[lang.embedding], T)[a:T - b] if lang.embedding else None
        segments = segments_of(texts[a:T - b], emb)
    for key in lang.alt:
        if key in by_rel:
            vals = list(dict.fromkeys(s for s in rec.texts(by_rel[key])[a:T - b] if s.strip()))
            if vals:
                meta[key] = vals[0] if len(vals) == 1 else vals
    for lf in leaves:
        if not lf.in_steps:
            v = _jsonable_value(rec, lf, T)
            if v is not None:
                meta[lf.key] = v
        elif lf.kind == "text" and lf.rel not in (lang.key, *lang.alt):
            vals = list(dict.fromkeys(s for s in rec.texts(lf)[a:T - b] if s.strip()))
            if vals:
                meta[lf.rel] = vals[0] if len(vals) == 1 else vals
    return Scanned(RecordRef(rec.record, 0, 0), T, segments, meta)


def scan_shard(job: ShardJob) -> tuple[list[Scanned], list[str]]:
    """Plan every record of one shard. Returns the planned records and what was skipped.

    Without ``job.skip_bad`` the first bad record raises its :class:`RecordError`.
    """
    skipped: list[str] = []
    out: list[Scanned] = []
    ended_early = False
    count = 0  # records seen, bad ones included

    def bad(err: RecordError) -> None:
        nonlocal ended_early, count
        if not job.skip_bad:
            raise err
        skipped.append(f"skipped: {err}")
        ended_early |= isinstance(err, (TruncatedRecordError, CorruptLengthError))
        if err.record is not None and not ended_early:
            count = max(count, err.record + 1)

    if not os.path.exists(job.path):
        bad(RecordError("shard file missing (dataset_info.json lists it)", file=job.path))
        return out, skipped
    for ref, data in scan_records(job.path, verify=job.verify, on_error=bad):
        count = ref.index + 1
        try:
            got = scan_record(Record(data, job.path, ref.index), job)
        except RecordError as e:
            bad(e)
            continue
        if isinstance(got, str):
            skipped.append(f"empty: {got}")
            continue
        got.ref = ref
        out.append(got)
    if job.expected is not None and count + 1 < job.expected and ended_early:
        skipped.append(f"skipped: {job.path}: records {count + 1}..{job.expected - 1} "
                       "unreadable after the error above")
    elif job.expected is not None and count != job.expected and not ended_early:
        bad(RecordError(f"holds {count} records, dataset_info.json's shardLengths says "
                        f"{job.expected}", file=job.path))
    return out, skipped
