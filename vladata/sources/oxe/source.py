"""Open X-Embodiment (RLDS, written by TensorFlow Datasets) -> canonical episodes, no TensorFlow.

``OxeSource(src)`` reads a TFDS dataset version directory (``dataset_info.json``,
``features.json``, ``<name>-<split>.tfrecord-NNNNN-of-MMMMM``): every split (or those asked
for), every shard, in order. One record is one episode.

- ``plan()`` scans every record once (framing + CRCs, protobuf parse, the check of every key
  against features.json -- :mod:`~vladata.sources.oxe.scan`), across shards in a process pool
  when the data is large, and remembers where each record lies, so ``read`` seeks straight to
  it. ``source_id`` is ``<split>/<shard file>#<record index>``.
- Features follow :mod:`~vladata.sources.oxe.mapping`: standardised through the dataset's entry
  in :data:`~vladata.sources.oxe.standardize.OXE_TABLE`, or raw (``standardize=False``, or a
  dataset the table lacks -- then a warning, also in ``describe()["message"]``, says what
  entry to add).
- Language: the instruction of every step; consecutive steps with the same instruction make one
  segment (with its embedding where the dataset has one).
- Bad records (CRC mismatch, truncated, not matching features.json) raise a
  :class:`~vladata.sources.oxe.tfrecord.RecordError` naming shard, record and key; with
  ``skip_bad_records=True`` they are left out of the plan and listed by ``skipped()``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vladata.episode import EncodedFrames, EpisodeInfo, FeatureSpec, cast_exact
from vladata.errors import SourceFormatError
from vladata.sources.oxe.decode import JPEG_MAGIC, Record
from vladata.sources.oxe.mapping import Output, build_mapping, check_transform
from vladata.sources.oxe.scan import LanguageSpec, Scanned, ShardJob, scan_shard
from vladata.sources.oxe.standardize import (DEFAULT_EMBEDDING, DEFAULT_LANGUAGE,
                                             GRIPPER_CONVENTION, OXE_TABLE, OxeConfig,
                                             state_vector)
from vladata.sources.oxe.tfds import DatasetInfo, Leaf, parse_dataset_info, parse_features
from vladata.sources.oxe.tfrecord import RecordError, RecordRef, read_record

POOL_MIN_BYTES = 2 << 30  # scan serially below this much data: a spawned pool costs ~1 CPU-s
#                            to start, a serial scan runs at ~27,000 frames/s (BENCHMARKS.md)


class OxeSource:
    """A TFDS/RLDS dataset version directory as a :class:`~vladata.episode.Source`."""

    name = "oxe"

    def __init__(self, src_dir: str | os.PathLike, *, dataset: str | None = None,
                 splits: list[str] | tuple[str, ...] | None = None, standardize: bool = True,
                 skip_bad_records: bool = False, fps: float | None = None,
                 verify_crc: bool = True, scan_workers: int | None = None,
                 progress: bool = True, allow_outside: bool = False):
        self.src_dir = str(src_dir)
        src = Path(src_dir)
        if not src.is_dir():
            raise SourceFormatError("not a directory (expected a TFDS dataset version directory "
                                    "with dataset_info.json, features.json and tfrecord shards)",
                                    file=src)
        self.info: DatasetInfo = parse_dataset_info(src, allow_outside=allow_outside)
        self.dataset = dataset or self.info.name
        self.leaves: tuple[Leaf, ...] = tuple(parse_features(src))
        known = [s.name for s in self.info.splits]
        if splits:
            unknown = [s for s in splits if s not in known]
            if unknown:
                raise SourceFormatError(f"no split(s) {unknown}; dataset_info.json has {known}",
                                        file=src / "dataset_info.json")
        self.splits = tuple(splits) if splits else tuple(known)
        self.config: OxeConfig | None = OXE_TABLE.get(self.dataset)
        self.standardize = bool(standardize) and self.config is not None
        self.skip_bad_records, self.verify_crc = bool(skip_bad_records), bool(verify_crc)
        self.scan_workers, self.progress = scan_workers, progress
        self.fps = float(fps if fps is not None else self.config.fps if self.config else 0.0)
        self.message = self._message(standardize)
        if self.config is not None and self.standardize:
            self.message = self._drop_optional() or self.message
        if self.message:
            warnings.warn(self.message, stacklevel=2)
        if self.standardize:
            check_transform(list(self.leaves), self.config, self.dataset, src / "features.json")
        self.language = self._language()
        skip = set()
        if self.standardize and self.language.codes:
            skip.add(self.language.key)
        if self.standardize and self.language.embedding:
            skip.add(self.language.embedding)
        self.mapping: dict[str, Output] = build_mapping(
            list(self.leaves), self.config if self.standardize else None, skip=skip)
        # the plan: per episode (shard, record, offset, length, steps, first, frames) + infos
        self._shards: list[tuple[str, str]] = []  # (split, shard file)
        self._refs: np.ndarray | None = None      # (N, 7) int64
        self._plan: list[EpisodeInfo] | None = None
        self._skipped: list[str] = []
        self._fds: dict[int, int] = {}
        self._cache: tuple | None = None

    # -- construction helpers ------------------------------------------------------------------
    def _message(self, standardize: bool) -> str | None:
        if self.config is not None or not standardize:
            return None
        steps = [lf for lf in self.leaves if lf.in_steps]
        cams = [lf.rel for lf in steps if lf.kind == "image"]
        acts = [lf.rel for lf in steps if lf.rel == "action" or lf.rel.startswith("action/")]
        obs = [lf.rel for lf in steps if lf.kind == "tensor" and lf.rel.startswith("observation/")]
        text = [lf.rel for lf in steps if lf.kind == "text"]
        return (f"dataset {self.dataset!r} is not in the OXE standardisation table, so it is "
                "converted with its raw features (cameras as observation.images.<key>, numeric "
                "step keys with '/' -> '.', a flat action as 'action'). To standardise it, add "
                f"OXE_TABLE[{self.dataset!r}] = OxeConfig(...) in vladata/sources/oxe/"
                f"standardize.py: fps, cameras (primary/secondary/wrist from {cams}), state parts "
                f"(from {obs}), an action transform giving 7-d EEF delta xyz + rpy + gripper "
                f"(1 = open) from {acts}, and the language key (from {text}).")

    def _drop_optional(self) -> str | None:
        """Leave out the optional features whose keys the steps lack (taco_play without its
        depth cameras); say so. Keys the required features need are checked later."""
        have = {lf.rel for lf in self.leaves if lf.in_steps}
        missing = {k: f for k, f in self.config.optional_keys().items() if k not in have}
        if not missing:
            return None
        self.config = self.config.without(set(missing))
        return (f"dataset {self.dataset!r}: the steps lack {sorted(missing)}, which the OXE "
                f"table uses only for optional features; converted without "
                f"{', '.join(sorted(set(missing.values())))}")

    def _language(self) -> LanguageSpec:
        rels = {lf.rel: lf for lf in self.leaves if lf.in_steps}
        cfg = self.config
        if cfg is not None and (cfg.language is None or cfg.language in rels):
            return LanguageSpec(cfg.language, cfg.language_codes, cfg.language_embedding,
                                tuple(k for k in cfg.alt_language if k in rels))
        key = next((k for k in DEFAULT_LANGUAGE if k in rels and rels[k].kind == "text"), None)
        emb = next((k for k in DEFAULT_EMBEDDING if k in rels and rels[k].kind == "tensor"
                    and rels[k].size > 0), None)
        return LanguageSpec(key, False, emb if key else None, ())

    # -- the Source protocol -------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        return {name: o.spec for name, o in self.mapping.items()}

    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            self._scan()
        return self._plan

    def skipped(self) -> list[str]:
        self.plan()
        return list(self._skipped)

    def describe(self) -> dict:
        cfg = self.config if self.standardize else None
        d = {"dataset": self.dataset, "tfds_name": self.info.name, "version": self.info.version,
             "source_dir": str(Path(self.src_dir).resolve()), "splits": list(self.splits),
             "standardized": self.standardize, "in_table": self.config is not None,
             "fps": self.fps, "message": self.message,
             "raw_features": [lf.key for lf in self.leaves],
             "feature_sources": {n: ["steps/" + k for k in o.keys]
                                 for n, o in self.mapping.items()},
             "language_key": self.language.key and "steps/" + self.language.key}
        if cfg is not None:  # raw actions record no gripper convention: none is guessed
            d.update(gripper=GRIPPER_CONVENTION, gripper_meaning="1 = open, 0 = closed",
                     robot=cfg.robot, action_encoding=cfg.action_encoding,
                     state_encoding=cfg.state_encoding, state_names=list(cfg.state_names),
                     cameras=dict(cfg.cameras), depth=dict(cfg.depth), trim=list(cfg.trim),
                     notes=cfg.notes)
            if "action.raw" in self.mapping:
                d["action_raw_order"] = list(self.mapping["action.raw"].spec.names)
        else:
            d["action_encoding"] = "raw: each action key as stored"
        if self._plan is not None:
            d["skipped"] = len(self._skipped)
        return d

    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        return self._read(i, lo, hi, encoded=False)

    def encoded_images(self) -> dict[str, str]:
        """Cameras whose steps may be handed over as their JPEG bytes (see Source)."""
        return {name: "rgb" for name, o in self.mapping.items()
                if o.how == "image" and o.spec.kind == "image" and o.spec.dtype == "uint8"
                and o.spec.shape[-1] in (1, 3)}

    def read_encoded(self, i: int, lo: int = 0, hi: int | None = None) -> dict:
        """As :meth:`read`, but a camera whose steps are all JPEGs comes as their bytes
        (:class:`~vladata.episode.EncodedFrames`); PNG steps are decoded."""
        return self._read(i, lo, hi, encoded=True)

    def _read(self, i: int, lo: int, hi: int | None, *, encoded: bool) -> dict:
        if self._refs is None:
            self._scan()
        shard, record, offset, length, steps, first, n = (int(x) for x in self._refs[i])
        hi = n if hi is None else hi
        if not 0 <= lo <= hi <= n:
            raise IndexError(f"frames {lo}..{hi} outside episode {i} of {n} frames")
        rec, values = self._record(i, shard, RecordRef(record, offset, length), steps)
        a, b = first + lo, first + hi
        out = {}
        for name, o in self.mapping.items():
            if o.how == "image":
                lf = self._leaf(o.keys[0])
                if encoded and name in self.encoded_images():
                    steps = rec.values(lf)[a:b]
                    if all(bytes(v[:2]) == JPEG_MAGIC for v in steps):
                        out[name] = EncodedFrames(steps, o.spec.shape, key=lf.key, first=lo,
                                                  file=f"{rec.file}, record {rec.record}",
                                                  episode=i)
                        continue
                arr = rec.images(lf, a, b)
                out[name] = (arr[..., 0].astype(np.float32) if o.spec.kind == "depth" else arr)
            else:
                out[name] = values[name][a:b].copy()  # the cache stays untouched by callers
        return out

    # -- planning ------------------------------------------------------------------------------
    def _jobs(self) -> list[ShardJob]:
        src, jobs = Path(self.src_dir), []
        trim = self.config.trim if self.standardize else (0, 0)
        for split in self.info.splits:
            if split.name not in self.splits:
                continue
            for k, f in enumerate(split.shard_files):
                expected = split.shard_lengths[k] if split.shard_lengths else None
                jobs.append(ShardJob(str(src / f), split.name, f, expected, self.leaves,
                                     self.language, trim, self.verify_crc,
                                     self.skip_bad_records))
        return jobs

    def _scan(self) -> None:
        jobs = self._jobs()
        if not jobs:
            raise SourceFormatError(f"no shards listed for split(s) {list(self.splits)}",
                                    file=Path(self.src_dir) / "dataset_info.json")
        total = sum(j.expected or 0 for j in jobs) or None
        size = sum(os.path.getsize(j.path) for j in jobs if os.path.exists(j.path))
        workers = self.scan_workers or min(os.cpu_count() or 1, len(jobs))
        if size < POOL_MIN_BYTES and self.scan_workers is None:
            workers = 1
        bar = tqdm(total=total, unit="episode", desc=f"scan {self.dataset}",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            if workers <= 1 or len(jobs) == 1:
                results = []
                for j in jobs:
                    results.append(scan_shard(j))
                    bar.update(len(results[-1][0]))
            else:
                with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                    results = []
                    for r in pool.imap(scan_shard, jobs):
                        results.append(r)
                        bar.update(len(r[0]))
        finally:
            bar.close()
        self._build_plan(jobs, results)

    def _build_plan(self, jobs: list[ShardJob], results: list[tuple[list[Scanned], list[str]]]
                    ) -> None:
        trim = self.config.trim if self.standardize else (0, 0)
        refs, plan, skipped, shards = [], [], [], []
        for k, (job, (scanned, skips)) in enumerate(zip(jobs, results)):
            shards.append((job.split, job.shard_file))
            skipped += skips
            for s in scanned:
                n = s.steps - trim[0] - trim[1]
                refs.append((k, s.ref.index, s.ref.offset, s.ref.length, s.steps, trim[0], n))
                plan.append(EpisodeInfo(length=n,
                                        source_id=f"{job.split}/{job.shard_file}#{s.ref.index}",
                                        split=job.split, segments=s.segments,
                                        metadata=s.metadata))
        self._shards, self._skipped, self._plan = shards, skipped, plan
        self._refs = np.asarray(refs, np.int64).reshape(-1, 7)

    # -- reading -------------------------------------------------------------------------------
    def _leaf(self, rel: str) -> Leaf:
        return next(lf for lf in self.leaves if lf.in_steps and lf.rel == rel)

    def _record(self, i: int, shard: int, ref: RecordRef, steps: int):
        """The parsed record of episode ``i`` and its non-image features over all T steps
        (cached: the writer reads an episode in several row ranges)."""
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1], self._cache[2]
        split, fname = self._shards[shard]
        path = str(Path(self.src_dir) / fname)
        if shard not in self._fds:
            self._fds[shard] = os.open(path, os.O_RDONLY)
        rec = Record(read_record(self._fds[shard], ref, path, verify=self.verify_crc), path,
                     ref.index)
        T = rec.length(list(self.leaves))
        if T != steps:
            raise RecordError(f"{T} steps, the plan scan found {steps}: was the file modified?",
                              file=path, record=ref.index)
        values = self._values(rec, T)
        self._cache = (i, rec, values)
        return rec, values

    def _values(self, rec: Record, T: int) -> dict[str, np.ndarray]:
        """Every non-image feature of the record, all T steps, as its FeatureSpec says."""
        raw = {lf.rel: rec.tensor(lf, T) for lf in self.leaves
               if lf.in_steps and lf.kind == "tensor"}
        out = {}
        for name, o in self.mapping.items():
            spec = o.spec
            if o.how == "tensor":
                out[name] = raw[o.keys[0]].reshape(T, *spec.shape).astype(spec.dtype, copy=False)
            elif o.how == "depth":
                out[name] = raw[o.keys[0]].reshape(T, *spec.shape).astype(np.float32, copy=False)
            elif o.how == "concat":
                out[name] = np.concatenate([cast_exact(
                    raw[k].reshape(T, -1), np.float32, file=f"{rec.file}, record {rec.record}",
                    key="steps/" + k, first=0) for k in o.keys], axis=1)
            elif o.how == "state":
                out[name] = state_vector(self.config, raw, T)
            elif o.how == "action":
                out[name] = np.asarray(self.config.action(raw), np.float32).reshape(T, 7)
        return out

    # -- pickling: paths, settings and the compact plan; no open files, no cache ---------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_cache"] = {}, None
        state["_plan"] = None  # workers only read(): the (N, 7) refs array is enough for that
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
