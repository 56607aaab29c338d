"""LeRobot datasets (v3.0, and the legacy v2.1 / v2.0) -> canonical episodes.

v3.0 layout (many episodes per file, videos addressed by time windows)::

    meta/info.json                 codebase_version, fps, features, splits, data_path, video_path
    meta/tasks.parquet             index = task string (pandas index column), column task_index
    meta/episodes/chunk-*/file-*.parquet   one row per episode: episode_index, tasks, length,
                                   data/{chunk,file}_index, videos/<key>/{chunk_index, file_index,
                                   from_timestamp, to_timestamp}, stats/...
    data/chunk-*/file-*.parquet    one row per frame: features, timestamp, frame_index,
                                   episode_index, index, task_index
    videos/<key>/chunk-*/file-*.mp4

v2.1/v2.0: ``data/chunk-XXX/episode_XXXXXX.parquet`` and ``videos/chunk-XXX/<key>/episode_XXXXXX
.mp4`` per episode (the video starts at 0), ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.

Mapping: episodes in ``episode_index`` order; ``observation.*`` and ``action*`` features kept
(float and int values stored as float32 where exact, the source dtype recorded); an image/video
feature not named ``observation.images.<cam>`` is renamed to ``observation.images.<last name
part>``; other features (``next.reward``, strings, ...) are listed in
``describe()["unmapped_features"]``.
Splits come from ``info.splits`` (``"a:b"`` episode ranges; ``val``/``valid`` -> validation),
language from each frame's ``task_index``: one segment per run of the same task.

Videos are decoded with PyAV. Frame ``j`` of an episode is the video frame whose presentation
time is within :data:`TOLERANCE_S` of ``from_timestamp + timestamp[j]`` (LeRobot's own rule and
tolerance); a missing frame is an error naming the file, episode, key and frame.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vladata.episode import (EncodedFrames, EpisodeInfo, FeatureSpec, cast_exact,
                             segments_from_runs)
from vladata.errors import SourceFormatError
from vladata.images import decode_image, image_format
from vladata.sources.boundary import IMAGE_ERRORS
from vladata.sources.lerobot_video import TOLERANCE_S, decode_video_frames
from vladata.sources.mapping import gripper_facts
from vladata.sources.paths import inside, safe_format
from vladata.store.layout import IMAGE_PREFIX, STATE

VERSIONS = ("v3.0", "v2.1", "v2.0")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
NUMERIC = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test"}
V2_EPISODES, V2_TASKS = "meta/episodes.jsonl", "meta/tasks.jsonl"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceFormatError("file missing: not a LeRobot dataset root?", file=path) from None
    except ValueError as e:
        raise SourceFormatError(f"invalid JSON ({e})", file=path) from None


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise SourceFormatError("file missing", file=path) from None
    except ValueError as e:
        raise SourceFormatError(f"invalid JSON lines ({e})", file=path) from None


def _read_parquet(path: Path, episode: object = None, **kw) -> pa.Table:
    try:
        table = pq.read_table(path, **kw)
        table.validate(full=True)  # string columns hold valid UTF-8, offsets are in range
        _ = table.column_names     # so do the column names
        return table
    except FileNotFoundError:
        raise SourceFormatError("parquet file missing", file=path, episode=episode) from None
    except UnicodeDecodeError as e:
        raise SourceFormatError(f"a column name is not UTF-8 ({e})", file=path,
                                episode=episode) from None
    except (pa.ArrowException, OSError) as e:
        raise SourceFormatError(f"unreadable parquet ({e})", file=path, episode=episode) from None


def _column(table: pa.Table, name: str, file: Path, episode: object = None) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SourceFormatError(f"column missing (has {table.column_names})", file=file,
                                episode=episode, key=name)
    return table.column(name)


def _to_numpy(col: pa.ChunkedArray, n: int, width: int, file: Path, episode, key,
              first: int = 0) -> np.ndarray:
    """A list / fixed-size-list / scalar column -> float32 (n, width), cast only where exact
    (``first``: the frame number of row 0, for errors)."""
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) \
            or pa.types.is_large_list(arr.type):
        flat = arr.flatten()
        while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
            flat = flat.flatten()
        vals = flat.to_numpy(zero_copy_only=False)
    else:
        vals = arr.to_numpy(zero_copy_only=False)
    if vals.size != n * width:
        raise SourceFormatError(f"expected {width} values per frame, got {vals.size / max(n, 1):g}",
                                file=file, episode=episode, key=key)
    return cast_exact(vals.reshape(n, width), np.float32, file=file, episode=episode, key=key,
                      first=first)


def _checked_rows(rows: list, types: dict[str, type], file: Path) -> list[dict]:
    """Metadata rows as dicts whose ``types`` keys hold values of that type (ints as int)."""
    out = []
    for j, r in enumerate(rows):
        if not isinstance(r, dict):
            raise SourceFormatError(f"row {j} is not an object", file=file)
        for k, t in types.items():
            v = r.get(k)
            ok = isinstance(v, t) and not isinstance(v, bool) or (
                t is int and isinstance(v, float) and v.is_integer())
            if not ok:
                raise SourceFormatError(f"row {j}: expected {t.__name__}, got {v!r}", file=file,
                                        key=k)
        out.append({**r, **{k: t(r[k]) for k, t in types.items()}})
    return out


def _check_info(info: dict, file: Path) -> None:
    """The info.json fields this reader uses have the types LeRobot writes."""
    def bad(key: str, want: str, got: object) -> SourceFormatError:
        return SourceFormatError(f"expected {want}, got {got!r}", file=file, key=key)

    fps, chunks = info["fps"], info.get("chunks_size", 1000)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise bad("fps", "a positive number", fps)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise bad("chunks_size", "a positive integer", chunks)
    for k in ("data_path", "video_path"):
        if not isinstance(info.get(k, ""), (str, type(None))):
            raise bad(k, "a path template string", info[k])
    if not isinstance(info["features"], dict):
        raise bad("features", "an object of feature name -> {dtype, shape}", info["features"])
    for name, ft in info["features"].items():
        shape = ft.get("shape") if isinstance(ft, dict) else None
        ok = (isinstance(ft, dict) and isinstance(ft.get("dtype"), str)
              and isinstance(shape, list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
              and (ft["dtype"] not in ("video", "image") or len(shape) == 3))
        if not ok:
            raise bad(f"features.{name}", "{dtype: str, shape: [non-negative ints] (3 for "
                      "images)}", ft)


def _tasks_v3(path: Path) -> dict[int, str]:
    """meta/tasks.parquet: the task string is pandas' index column (named in its metadata)."""
    t = _read_parquet(path)
    try:
        meta = json.loads((t.schema.metadata or {}).get(b"pandas", b"{}"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise SourceFormatError(f"pandas metadata is not JSON ({e})", file=path) from None
    if not isinstance(meta, dict):
        raise SourceFormatError("pandas metadata is not a JSON object", file=path)
    idx = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    text_col = next((c for c in ("task", *idx, "__index_level_0__") if c in t.column_names), None)
    if text_col is None:
        raise SourceFormatError("no task string column (pandas index) found", file=path, key="task")
    ids = _column(t, "task_index", path).to_pylist()
    return {int(i): str(s) for i, s in zip(ids, t.column(text_col).to_pylist())}


@dataclass
class LeRobotSource:
    """A local LeRobot dataset root (v3.0 / v2.1 / v2.0); see the module docstring."""

    root: str
    name: str = "lerobot"
    fps: float = 0.0
    _info: dict | None = field(default=None, repr=False)
    _episodes: list[dict] | None = field(default=None, repr=False)
    _plan: list[EpisodeInfo] | None = field(default=None, repr=False)
    _map: dict | None = field(default=None, repr=False)  # canonical name -> (lerobot key, kind)
    allow_outside: bool = False  # follow data_path / video_path templates out of the root

    def __post_init__(self):
        info_file = self._path("meta/info.json")
        self._info = info = _read_json(info_file)
        if not isinstance(info, dict):
            raise SourceFormatError("expected a JSON object", file=info_file)
        version = info.get("codebase_version")
        if version not in VERSIONS:
            raise SourceFormatError(f"codebase_version {version!r} is not one of {VERSIONS}",
                                    file=info_file, key="codebase_version")
        for k in ("fps", "features", "data_path"):
            if k not in info:
                raise SourceFormatError("key missing", file=info_file, key=k)
        _check_info(info, info_file)
        self.fps = float(info["fps"])

    @property
    def version(self) -> str:
        return self._info["codebase_version"]

    def _path(self, rel: str) -> Path:
        return Path(self.root) / rel

    # -- features ------------------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        out = {}
        for name, (key, kind) in self._mapping().items():
            ft = self._info["features"][key]
            shape = tuple(int(s) for s in ft["shape"])
            if kind == "lowdim":
                width = int(np.prod(shape))
                out[name] = FeatureSpec(
                    "float32", (width,), "lowdim", names=_names(ft.get("names"), width),
                    source_dtype=ft["dtype"] if ft["dtype"] != "float32" else None,
                    description=f"LeRobot {key}")
                continue
            if list(ft.get("names") or [])[:1] == ["channels"]:  # (C, H, W) in some v2.0 files
                shape = (shape[1], shape[2], shape[0])
            out[name] = FeatureSpec("uint8", shape, "image",
                                    description=f"LeRobot {key} ({ft['dtype']})")
        return out

    def _mapping(self) -> dict:
        if self._map is None:
            m = {}
            for key, ft in self._info["features"].items():
                dtype, depth = ft.get("dtype"), (ft.get("info") or {}).get("video.is_depth_map")
                if key in BOOKKEEPING:
                    continue
                if dtype in ("video", "image") and not depth:
                    cam = key if key.startswith(IMAGE_PREFIX) else \
                        IMAGE_PREFIX + key.split('.')[-1]
                    m[cam] = (key, dtype)
                elif dtype in NUMERIC and (key.startswith("observation.") or key == "action"
                                           or key.startswith("action.")):
                    m[key] = (key, "lowdim")
            self._map = m
        return self._map

    # -- planning ------------------------------------------------------------------------------
    def episodes(self) -> list[dict]:
        """Episode metadata rows in episode_index order."""
        if self._episodes is None:
            if self.version == "v3.0":
                files = sorted(self._path("meta/episodes").glob("chunk-*/file-*.parquet"))
                if not files:
                    raise SourceFormatError("no episodes parquet files",
                                            file=self._path("meta/episodes"))
                rows = [r for p in files for r in _read_parquet(p).to_pylist()]
            else:
                rows = _read_jsonl(self._path(V2_EPISODES))
            where = self._path("meta/episodes" if self.version == "v3.0" else V2_EPISODES)
            rows = _checked_rows(rows, {"episode_index": int, "length": int}, where)
            self._episodes = sorted(rows, key=lambda r: r["episode_index"])
        return self._episodes

    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            tasks, splits, plan = self._tasks(), self._splits(), []
            for row in self.episodes():
                ep = int(row["episode_index"])
                table, path = self._frames(row, ["frame_index", "task_index"])
                n = table.num_rows
                if n != int(row["length"]):
                    raise SourceFormatError(f"episode metadata says length {row['length']}, data "
                                            f"has {n} rows", file=path, episode=ep, key="length")
                labels = [int(v) for v in _column(table, "task_index", path, ep).to_pylist()]
                unknown = sorted(set(labels) - set(tasks))
                if unknown:
                    raise SourceFormatError(f"task_index {unknown} not in the tasks table",
                                            file=path, episode=ep, key="task_index")
                plan.append(EpisodeInfo(length=n, source_id=f"episode_{ep:06d}",
                                        split=splits.get(ep, "train"),
                                        segments=segments_from_runs(labels, tasks),
                                        metadata={"episode_index": ep}))
            self._plan = plan
        return self._plan

    def _tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            return _tasks_v3(self._path("meta/tasks.parquet"))
        rows = _checked_rows(_read_jsonl(self._path(V2_TASKS)), {"task_index": int, "task": str},
                             self._path(V2_TASKS))
        return {r["task_index"]: r["task"] for r in rows}

    def _splits(self) -> dict[int, str]:
        out = {}
        for split, rng in (self._info.get("splits") or {}).items():
            m = re.fullmatch(r"(\d+):(\d+)", str(rng))
            if not m:
                raise SourceFormatError(f"split range {rng!r} is not 'a:b'",
                                        file=self._path("meta/info.json"), key=f"splits.{split}")
            for ep in range(int(m.group(1)), int(m.group(2))):
                out[ep] = SPLIT_NAMES.get(split, split)
        return out

    def _file(self, template: str, row: dict, key: str | None = None) -> Path:
        """A data (key None) or video file of an episode, from info.json's path template
        (expanded by :func:`safe_format`; refused outside the root unless ``allow_outside``)."""
        ep = int(row["episode_index"])
        info_file = self._path("meta/info.json")
        if template not in self._info:
            raise SourceFormatError("key missing", file=info_file, key=template)
        if self.version != "v3.0":
            chunk = ep // int(self._info.get("chunks_size", 1000))
            values = dict(episode_chunk=chunk, episode_index=ep, video_key=key)
        else:
            col = "data/" if key is None else f"videos/{key}/"
            try:
                values = dict(chunk_index=int(row[col + "chunk_index"]),
                              file_index=int(row[col + "file_index"]), video_key=key)
            except KeyError as e:
                raise SourceFormatError(f"episode row lacks {e}", file=self._path("meta/episodes"),
                                        episode=ep, key=key or "data") from None
        rel = safe_format(self._info[template], values, file=info_file, key=template)
        return inside(self.root, rel, allow_outside=self.allow_outside, file=info_file,
                      key=template)

    def _frames(self, row: dict, columns: list[str] | None = None) -> tuple[pa.Table, Path]:
        """This episode's rows of its data file, in frame_index order."""
        ep = int(row["episode_index"])
        path = self._file("data_path", row)
        if self.version == "v3.0":
            cols = None if columns is None else sorted(set(columns) | {"episode_index"})
            table = _read_parquet(path, ep, columns=cols, filters=[("episode_index", "=", ep)])
        else:
            table = _read_parquet(path, ep, columns=columns)
        frame_index = _column(table, "frame_index", path, ep).to_numpy()
        return table.take(np.argsort(frame_index, kind="stable")), path

    # -- reading -------------------------------------------------------------------------------
    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        return self._read(i, lo, hi, encoded=False)

    def encoded_images(self) -> dict[str, str]:
        """Image (not video) features, whose embedded JPEG bytes ``read_encoded`` hands over."""
        return {name: "rgb" for name, (_, kind) in self._mapping().items() if kind == "image"
                and self.features()[name].shape[-1] in (1, 3)}

    def read_encoded(self, i: int, lo: int = 0, hi: int | None = None) -> dict:
        """As :meth:`read`, but an image feature whose frames are all JPEG comes as their bytes
        (:class:`~vladata.episode.EncodedFrames`); PNG frames are decoded."""
        return self._read(i, lo, hi, encoded=True)

    def _read(self, i: int, lo: int, hi: int | None, *, encoded: bool) -> dict:
        row, info = self.episodes()[i], self.plan()[i]
        hi = info.length if hi is None else hi
        ep = int(row["episode_index"])
        table, path = self._frames(row)
        table = table.slice(lo, hi - lo)
        feats, out = self.features(), {}
        for name, (key, kind) in self._mapping().items():
            col = _column(table, "timestamp" if kind == "video" else key, path, ep)
            if kind == "lowdim":
                out[name] = _to_numpy(col, hi - lo, feats[name].shape[0], path, ep, key, lo)
                continue
            if kind == "image" and encoded and name in self.encoded_images():
                items = [v.get("bytes") if isinstance(v, dict) else v for v in col.to_pylist()]
                if all(d and image_format(d) == "jpeg" for d in items):
                    out[name] = EncodedFrames(items, feats[name].shape, file=path, episode=ep,
                                              key=key, first=lo)
                    continue
            if kind == "image":
                out[name] = self._images(col, path, ep, key, lo)
            else:
                start = float(row.get(f"videos/{key}/from_timestamp", 0.0))
                times = start + col.to_numpy().astype(np.float64)
                out[name] = decode_video_frames(self._file("video_path", row, key), times,
                                                episode=ep, key=key, lo=lo)
            if out[name].shape[1:] != feats[name].shape:
                raise SourceFormatError(f"frames are {out[name].shape[1:]}, info.json says "
                                        f"{feats[name].shape}", file=path, episode=ep, key=key)
        return out

    def _images(self, col: pa.ChunkedArray, path: Path, ep: int, key: str, lo: int) -> np.ndarray:
        """Image features: {bytes, path} structs of PNG/JPEG bytes -> uint8 (n, H, W, 3)."""
        frames = []
        for t, v in enumerate(col.to_pylist()):
            data = v.get("bytes") if isinstance(v, dict) else v
            fmt = image_format(data) if data else None
            if fmt is None:
                raise SourceFormatError("image is not embedded PNG or JPEG bytes", file=path,
                                        episode=ep, key=key, frame=lo + t)
            try:
                img = decode_image(data, fmt)
            except IMAGE_ERRORS as e:
                raise SourceFormatError(f"corrupt {fmt} image ({type(e).__name__}: {e})",
                                        file=path, episode=ep, key=key, frame=lo + t) from None
            if frames and img.shape != frames[0].shape:
                raise SourceFormatError(f"image shape {img.shape} differs from {frames[0].shape}",
                                        file=path, episode=ep, key=key, frame=lo + t)
            frames.append(img)
        return np.stack(frames)

    def describe(self) -> dict:
        feats = self.features()
        mapped = {k for k, _ in self._mapping().values()}
        return {"format": "lerobot", "codebase_version": self.version,
                "robot_type": self._info.get("robot_type"), "fps": self.fps,
                **gripper_facts("unknown"),  # LeRobot datasets do not record a gripper convention
                "action_names": list(feats["action"].names or ()) if "action" in feats else [],
                "state_names": list(feats[STATE].names or ())
                if STATE in feats else [],
                "renamed": {n: k for n, (k, _) in self._mapping().items() if n != k},
                "unmapped_features": sorted(k for k in self._info["features"]
                                            if k not in mapped and k not in BOOKKEEPING),
                "language": "per-frame task_index -> one segment per run of the same task",
                "video_decode": f"PyAV; frame j = the frame within {TOLERANCE_S} s of "
                                "from_timestamp + timestamp[j]"}


def _names(names: object, n: int) -> tuple[str, ...] | None:
    """LeRobot names: a list, or a dict like {"motors": [...]}; None when they do not fit."""
    if isinstance(names, dict):
        names = [x for v in names.values() if isinstance(v, list) for x in v]
    if isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names):
        return tuple(names)
    return None
