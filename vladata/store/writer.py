"""Convert a :class:`~vladata.episode.Source` into a store, in parallel and resumably.

The store's tree is documented in :mod:`vladata.store.layout`. Conversion runs in three stages:

1. **plan** -- ``source.plan()`` fixes the episode order, so every episode's first row is known;
   the arrays are created at full size, ``meta/episodes.parquet`` and ``meta/segments.parquet``
   are written, and ``meta/plan.json`` records a fingerprint of the plan and the settings.
2. **parts** -- rows are cut into parts aligned to shard files; each part is written by one
   worker process (``workers=N``) or Ray task (``engine="ray"``: :mod:`vladata.store.engines`),
   which also accumulates first-pass statistics of the training rows. A part is done when
   ``meta/parts/part-NNNNN.json`` exists (written after its data and its statistics state). ``resume=True`` re-plans, checks the fingerprint and redoes only the
   parts without a marker.
3. **finalize** -- exact statistics (:mod:`vladata.store.finalize`), normalised and tokenised
   actions, then ``meta/manifest.json``, written last: a store without it is incomplete and
   ``vladata.open`` refuses it.

Before anything else the writer checks the output (:mod:`vladata.store.output`): it writes only
into a new or empty directory, or into a vlakit store (recognised by its ``.vlakit-conversion``
marker, put there first and removed with the manifest, or by the vlakit attributes of its
``zarr.json``); never into or around the source. ``overwrite=True`` deletes only a vlakit
store's own entries; ``resume=True`` on a complete store does nothing and says so
(``Summary.already_complete``). Metadata files are written atomically (:mod:`vladata.atomic`);
a resumed run deletes the ``*.tmp`` files an interrupted one left. ``out`` may be an fsspec URL
(``s3://...``): every file is then one PUT, in the same order (:mod:`vladata.store.fs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import zarr
from tqdm.auto import tqdm

import vladata.atomic as atomic
from vladata.episode import EpisodeInfo, FeatureSpec, Source, check_frames, concat_frames
from vladata.errors import NonFiniteError, SourceFormatError, StoreError
from vladata.jsonable import jsonable
from vladata.store import encode, engines, finalize, fs, layout, manifest, output
from vladata.store.shard_writer import ShardWriter, can_write


@dataclass
class Summary:
    """What a conversion did; ``str(summary)`` is the report printed at the end."""

    path: str
    episodes: int
    frames: int
    segments: int
    bytes: int
    parts_written: int
    parts_reused: int
    seconds: float
    splits: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    already_complete: bool = False  # resume=True found a complete store: nothing was done

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines = [f"{self.path}: the store is already complete; nothing to resume"
                 ] if self.already_complete else []
        lines += [f"store      {self.path}",
                 f"episodes   {self.episodes}  ({', '.join(f'{k}: {v}' for k, v in self.splits.items())})",
                 f"frames     {self.frames}  ({rate:,.0f} frames/s over {self.seconds:.1f} s)",
                 f"segments   {self.segments}",
                 f"bytes      {self.bytes:,}  ({self.bytes / 2**20:,.1f} MiB)",
                 f"parts      {self.parts_written} written, {self.parts_reused} reused"]
        lines.append(f"skipped    {len(self.skipped)}" + ("" if not self.skipped else ":"))
        lines += [f"  - {s}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see meta/manifest.json)")
        return "\n".join(lines)


def convert(source: Source, out: str | os.PathLike, *, workers: int = 1, resume: bool = False,
            overwrite: bool = False, image_codec: str = "raw", part_frames: int | None = None,
            quantiles: tuple[float, ...] = (0.01, 0.99), jpeg_quality: int = 90,
            image_stats: bool = False, tokenizer=None, progress: bool = True,
            inputs=None, gop: int | None = None, crf: int | None = None, engine="local",
            address: str | None = None) -> Summary:
    """Write ``source`` to a store at ``out``; see the module docstring. Returns a summary.

    ``image_codec``: ``raw``, ``lz4``, ``jpeg`` (a source with ``read_encoded`` hands over its
    JPEG bytes, stored unchanged after one validating decode), ``h264`` or ``av1`` (closed-GOP
    video per 64-frame shard, ``gop`` frames per GOP, quality ``crf``; the PSNR measured while
    writing is recorded per camera: :mod:`vladata.store.video`).

    ``tokenizer`` (a :class:`vladata.tokenize.ActionTokenizer`) sets the token-id layout of the
    stored ``action.tokens``; the default is 256 bins, ids ``bin + 10``. ``inputs`` are the paths
    the output must stay apart from (default: the source's ``root``/``path``/``src_dir``/
    ``mapping_file``). ``engine`` runs the parts in local processes (``"local"``, ``workers``
    of them) or as Ray tasks (``"ray"``, on the cluster at ``address`` or a Ray started here),
    or is an engine object (``.run(write_part, job, parts, todo, bar)``): see
    :mod:`vladata.store.engines`.
    """
    t0 = time.perf_counter()
    runner = (engine if hasattr(engine, "run")
              else engines.make(engine, workers=workers, address=address))
    out = fs.to_path(out)  # a local Path, or a UPath for a URL (s3://...): see vladata.store.fs
    decision = output.check(out, inputs=output.source_inputs(source) if inputs is None
                            else inputs, resume=resume, overwrite=overwrite)
    plan = source.plan()
    features = source.features()
    n = sum(ep.length for ep in plan)
    passthrough = (image_codec == "jpeg" and hasattr(source, "read_encoded")
                   and hasattr(source, "encoded_images"))
    orders = source.encoded_images() if passthrough else {}
    try:
        storage = {name: layout.storage_for(spec, image_codec, gop=gop, crf=crf,
                                            channel_order=orders.get(name, "rgb"))
                   for name, spec in features.items()}
    except ValueError as e:
        raise StoreError(f"{out}: {e}") from None
    if n == 0:
        raise SourceFormatError(f"{source.name}: the source has no frames to convert")
    how = output.begin(out, decision)  # the first write, once the source is known to be good
    old = json.loads((out / layout.PLAN).read_text()) if how != "new" else None
    if old is not None and part_frames is None:
        part_frames = old["settings"]["part_frames"]  # the interrupted run's parts, any --workers
    starts = np.cumsum([0] + [ep.length for ep in plan])[:-1].astype(np.int64)
    part_frames = part_frames or layout.default_part_frames(n, workers)
    parts = layout.part_ranges(n, part_frames)
    settings = {"image_codec": image_codec, "part_frames": part_frames, "jpeg_quality": jpeg_quality,
                "image_stats": image_stats}
    if image_codec in layout.VIDEO_CODECS:
        settings.update(gop=gop, crf=crf)
    fingerprint = _fingerprint(source, plan, features, settings)
    stats_split = "train" if any(ep.split == "train" and ep.length for ep in plan) else "all"

    if old is not None:
        if old.get("fingerprint") != fingerprint:
            raise StoreError(f"{out}: cannot resume: the source or the settings differ from the "
                             "interrupted conversion (use --overwrite to start again)")
        if how == "complete":
            return _already_complete(out)
    else:
        _create_store(out, source, plan, features, storage, starts, n)
        atomic.write_json(out / layout.PLAN, {"fingerprint": fingerprint, "settings": settings,
                                              "num_frames": n, "parts": parts,
                                              "stats_split": stats_split})

    done = {k for k in range(len(parts)) if (_marker(out, k)).exists()}
    todo = [k for k in range(len(parts)) if k not in done]
    job = _PartJob(source=source, out=str(out), starts=starts,
                   lengths=np.asarray([ep.length for ep in plan], np.int64),
                   in_stats=np.asarray([stats_split == "all" or ep.split == stats_split
                                        for ep in plan]),
                   features=features, storage=storage, jpeg_quality=jpeg_quality,
                   image_stats=image_stats, passthrough=passthrough)
    _run_parts(job, parts, todo, engine=runner, total=n,
               already=sum(parts[k][1] - parts[k][0] for k in done), progress=progress)
    encode.record_video_quality(out, storage, [_marker(out, k) for k in range(len(parts))])

    stats = finalize.finish(out, features, parts, starts, job.lengths, job.in_stats, stats_split,
                            quantiles, source.describe(), tokenizer=tokenizer)
    skipped = list(getattr(source, "skipped", lambda: [])())
    summary = Summary(path=str(out), episodes=len(plan), frames=n,
                      segments=sum(len(ep.segments) for ep in plan), bytes=_du(out),
                      parts_written=len(todo), parts_reused=len(done),
                      seconds=time.perf_counter() - t0,
                      splits={s: sum(ep.split == s for ep in plan)
                              for s in dict.fromkeys(ep.split for ep in plan)},
                      skipped=skipped)
    manifest.write(out, {"format_version": layout.FORMAT_VERSION, "complete": True,
                         "parts": len(parts), "num_frames": n, "stats_features": sorted(stats),
                         "summary": summary.to_dict()})
    output.finish(out)
    for p in (out / layout.PARTS).glob("*.stats.npz"):
        p.unlink()  # merged into meta/stats.json
    return summary


# -- stage 1: plan -----------------------------------------------------------------------------

def _already_complete(out: Path) -> Summary:
    """The summary of a complete store, as its manifest records it, for a resume with no work."""
    recorded = json.loads((out / layout.MANIFEST).read_text())["summary"]
    keep = {k: recorded[k] for k in Summary.__dataclass_fields__ if k in recorded}
    return Summary(**{**keep, "path": str(out), "parts_written": 0,
                      "parts_reused": keep.get("parts_written", 0) + keep.get("parts_reused", 0),
                      "already_complete": True})


def _fingerprint(source: Source, plan: list[EpisodeInfo], features: dict[str, FeatureSpec],
                 settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"source": source.name, "settings": settings,
                         "features": {k: v.to_dict() for k, v in features.items()}},
                        sort_keys=True).encode())
    for ep in plan:
        h.update(f"{ep.source_id}|{ep.length}|{ep.split}\n".encode())
        for g in ep.segments:
            h.update(f"{g.start}|{g.end}|{g.instruction}|{g.task}\n".encode())
    return h.hexdigest()


def _create_store(out: Path, source: Source, plan: list[EpisodeInfo],
                  features: dict[str, FeatureSpec], storage: dict, starts: np.ndarray,
                  n: int) -> None:
    root = zarr.open_group(fs.zarr_path(out), mode="a")  # not "w": it would empty the directory
    root.attrs["vlakit"] = {
        "format_version": layout.FORMAT_VERSION, "source": source.name,
        "source_info": jsonable(source.describe()), "fps": float(source.fps),
        "num_frames": int(n), "num_episodes": len(plan),
        "features": {k: {**v.to_dict(), "storage": storage[k]} for k, v in features.items()},
    }
    data = root.create_group(layout.DATA)
    for name, spec in features.items():
        layout.create_array(data, name, spec, n, storage[name])
    (out / layout.PARTS).mkdir(parents=True, exist_ok=True)
    fs.write_parquet(episode_table(plan, starts), out / layout.EPISODES)
    fs.write_parquet(segment_table(plan), out / layout.SEGMENTS)


def episode_table(plan: list[EpisodeInfo], starts: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({
        "episode_index": np.arange(len(plan), dtype=np.int64),
        "start": starts.astype(np.int64),
        "length": np.asarray([ep.length for ep in plan], np.int64),
        "split": [ep.split for ep in plan],
        "source_id": [ep.source_id for ep in plan],
        "metadata": [json.dumps(jsonable(ep.metadata)) for ep in plan],
    }, schema_overrides={"split": pl.String, "source_id": pl.String, "metadata": pl.String})


def segment_table(plan: list[EpisodeInfo]) -> pl.DataFrame:
    rows = [(i, s) for i, ep in enumerate(plan) for s in ep.segments]
    emb = [None if s.embedding is None else np.asarray(s.embedding, np.float32).ravel().tolist()
           for _, s in rows]
    return pl.DataFrame({
        "segment_index": np.arange(len(rows), dtype=np.int64),
        "episode_index": np.asarray([i for i, _ in rows], np.int64),
        "start": np.asarray([s.start for _, s in rows], np.int64),
        "end": np.asarray([s.end for _, s in rows], np.int64),
        "instruction": [s.instruction for _, s in rows],
        "task": [s.task for _, s in rows],
        "embedding": pl.Series("embedding", emb, dtype=pl.List(pl.Float32)),
    }, schema_overrides={"instruction": pl.String, "task": pl.String})


# -- stage 2: parts ----------------------------------------------------------------------------

@dataclass
class _PartJob:
    """Everything a worker needs to write any part (picklable)."""

    source: Source
    out: str
    starts: np.ndarray
    lengths: np.ndarray
    in_stats: np.ndarray  # per episode: counted in the statistics?
    features: dict[str, FeatureSpec]
    storage: dict[str, dict]
    jpeg_quality: int
    image_stats: bool
    passthrough: bool = False  # read_encoded: JPEG frames stay the source's bytes


def _marker(out: Path, k: int) -> Path:
    return out / layout.PARTS / f"part-{k:05d}.json"


def _run_parts(job: _PartJob, parts, todo, *, engine, total: int, already: int,
               progress: bool) -> None:
    bar = tqdm(total=total, initial=already, unit=" frames", unit_scale=False, disable=not progress,
               desc="convert", smoothing=0.1, dynamic_ncols=True)
    try:
        engine.run(_write_part, job, parts, todo, bar)
    finally:
        bar.close()


def _write_part(job: _PartJob, k: int, rows: tuple[int, int], report=None) -> None:
    """Write rows ``[lo, hi)`` of every feature, then the part's statistics state and marker.

    Reading the source (decompression, decoding) and writing shard files overlap: shards go to
    a writer thread, at most two in flight.
    """
    report = report or (lambda n: None)
    lo, hi = rows
    out = fs.to_path(job.out)
    with zarr.config.set(layout.WRITE_EMPTY):  # a missing chunk must mean damage, not zeros
        data = zarr.open_group(fs.zarr_path(out / layout.DATA), mode="r+")
        arrays = {name: data[name] for name in job.features}
    shard_writers = {name: ShardWriter(arr, out / layout.DATA / name)
                     for name, arr in arrays.items()
                     if not layout.is_blocked(job.storage[name]) and can_write(arr)}
    lowdim = [n for n in job.features if layout.is_blocked(job.storage[n])]
    stat_feats = finalize.stat_features(job.features)
    accs = finalize.new_accumulators(job.features, stat_feats, image_stats=job.image_stats)
    block = {n: np.empty((layout.BLOCK, *job.features[n].shape), job.features[n].dtype)
             for n in lowdim}
    block_lo = lo
    quality: dict[str, list[dict]] = {}  # video cameras: per-shard error measurements
    in_flight: list[Future] = []
    with ThreadPoolExecutor(1, thread_name_prefix="vlakit-shards") as io:
        for r in range(lo, hi, layout.IMAGE_SHARD):
            r2 = min(r + layout.IMAGE_SHARD, hi)
            frames, in_stats = _read_rows(job, r, r2)
            finalize.check_finite(frames, stat_feats, job, r)
            images = {}
            for name, arr in frames.items():
                if name in block:
                    block[name][r - block_lo:r2 - block_lo] = arr
                else:
                    images[name] = encode.shard_frames(arr, job.storage[name], job.jpeg_quality,
                                                  quality.setdefault(name, []),
                                                  where=f"{out} data/{name} rows {r}..{r2}")
            while len(in_flight) >= 2:
                in_flight.pop(0).result()
            in_flight.append(io.submit(_write_images, arrays, shard_writers, images, r, r2))
            finalize.update_accumulators(accs, {n: np.asarray(frames[n]) for n in accs},
                                         in_stats)
            if r2 - block_lo == layout.BLOCK or r2 == hi:
                for name in lowdim:
                    arrays[name][block_lo:r2] = block[name][:r2 - block_lo]
                block_lo = r2
            report(r2 - r)
        for f in in_flight:
            f.result()
    finalize.save_accumulators(out / layout.PARTS / f"part-{k:05d}.stats.npz", accs)
    marker = {"part": k, "rows": [lo, hi]}
    if any(quality.values()):
        marker["video"] = {n: encode.merge_quality(q) for n, q in quality.items() if q}
    atomic.write_json(_marker(out, k), marker)


def _write_images(arrays, shard_writers, images: dict, r: int, r2: int) -> None:
    for name, frames in images.items():
        if name in shard_writers:
            shard_writers[name].write(r, frames)
        else:
            arrays[name][r:r2] = frames


def _read_rows(job: _PartJob, r: int, r2: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frames of store rows ``[r, r2)`` (possibly spanning episodes) and a per-row stats mask."""
    first = int(np.searchsorted(job.starts, r, side="right")) - 1
    pieces, mask = [], []
    row = r
    i = first
    while row < r2:
        a = row - int(job.starts[i])
        b = min(int(job.lengths[i]), r2 - int(job.starts[i]))
        if b > a:
            read = job.source.read_encoded if job.passthrough else job.source.read
            got = check_frames(read(i, a, b), job.features, b - a, episode=i, first=a)
            pieces.append(got)
            mask.append(np.full(b - a, bool(job.in_stats[i])))
            row += b - a
        i += 1
    if len(pieces) == 1:
        return pieces[0], mask[0]
    return ({name: concat_frames([p[name] for p in pieces]) for name in job.features},
            np.concatenate(mask))


# -- helpers -----------------------------------------------------------------------------------



def _du(path) -> int:
    return sum(size if size is not None else p.stat().st_size
               for _, p, size in fs.files(path, "") if not p.name.endswith(".stats.npz"))


__all__ = ["convert", "Summary", "episode_table", "segment_table", "NonFiniteError"]
