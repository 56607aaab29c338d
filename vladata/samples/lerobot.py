"""Write small synthetic LeRobot datasets (v3.0 and v2.1), laid out like the real ones.

Faithful (shared/reference/formats.md section 3, lerobot ``datasets/utils.py``):

- v3.0: ``meta/info.json`` (codebase_version, fps, features with dtype/shape/names/info, splits,
  data_path / video_path templates, chunks_size, file size limits), ``meta/stats.json``,
  ``meta/tasks.parquet`` as pandas writes a DataFrame indexed by task string (index column
  ``__index_level_0__`` named in the ``pandas`` schema metadata, column ``task_index``),
  ``meta/episodes/chunk-000/file-000.parquet`` (episode_index, tasks, length, data/*, videos/<key>/*
  with from/to timestamps, meta/episodes/*, dataset_from/to_index, stats/<feature>/*), several
  episodes per ``data/chunk-000/file-NNN.parquet`` and per ``videos/<key>/chunk-000/file-NNN.mp4``
  (``episodes_per_file`` of them, so episodes start mid-file).
- v2.1: per-episode ``data/chunk-000/episode_NNNNNN.parquet`` and ``videos/chunk-000/<key>/
  episode_NNNNNN.mp4``, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``,
  ``meta/episodes_stats.jsonl``.
- Data columns: fixed-size float32 lists for vectors, ``timestamp`` float32 (frame_index / fps),
  ``frame_index``, ``episode_index``, ``index`` (global), ``task_index`` int64.
- Videos: PyAV, ``codec="libsvtav1"`` (LeRobot's default: yuv420p, g=2, crf=30; lossy) or
  ``"libx264rgb"`` (crf 0, rgb24: lossless, for exact round-trip tests).

Each frame's image differs strongly from its neighbours so frame alignment can be checked even
through a lossy codec. Returns per episode ``{"task": [...], feature: array}`` of what was written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STATE_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
TASKS = ("pick up the cube", "place the cube in the bowl", "push the button")
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def frame_image(h: int, w: int, ep: int, t: int, cam: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): a colour ramp whose level jumps by 24 per frame, plus a moving bar."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 40 + (24 * t + 60 * ep) % 180
    img[..., 1] = 30 + (xx * 100) // max(w - 1, 1) + 40 * cam
    img[..., 2] = 90 + (yy * 60) // max(h - 1, 1)
    img[:, (2 * t) % w] = 250
    return img


def encode_video(path: Path, frames: np.ndarray, fps: float, codec: str = "libsvtav1") -> None:
    """Encode uint8 (T, H, W, 3) RGB frames to an mp4 with PyAV; pts = frame number at ``fps``."""
    import av
    from fractions import Fraction

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.height, s.width = frames.shape[1:3]
        if codec == "libx264rgb":
            s.pix_fmt, s.options = "rgb24", {"crf": "0", "g": "2"}
        else:
            s.pix_fmt, s.options = "yuv420p", {"crf": "30", "g": "2", "preset": "12"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _vec(a: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), a.shape[1])


def _stats(a: np.ndarray) -> dict:
    a = a.reshape(len(a), -1).astype(np.float64)
    return {"min": a.min(0).tolist(), "max": a.max(0).tolist(), "mean": a.mean(0).tolist(),
            "std": a.std(0).tolist(), "count": [len(a)]}


def _episodes(episodes: int, lengths, size, cameras, seed) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = lengths or [5 + (3 * i) % 4 for i in range(episodes)]
    out = []
    for e, n in enumerate(lengths):
        state = (np.cumsum(rng.standard_normal((n, 6)), 0) * 0.1).astype(np.float32)
        ep = {"observation.state": state,
              "action": np.concatenate([state[1:], state[-1:]]).astype(np.float32),
              "task": [TASKS[e % 3]] * (n // 2) + [TASKS[(e + 1) % 3]] * (n - n // 2)}
        for k, cam in enumerate(cameras):
            ep[f"observation.images.{cam}"] = np.stack([frame_image(*size, e, t, k)
                                                         for t in range(n)])
        out.append(ep)
    return out


def _info(version: str, fps: float, eps: list[dict], cameras, size, codec: str,
          splits: dict, image_cameras=()) -> dict:
    video_info = {"video.height": size[0], "video.width": size[1],
                  "video.codec": "av1" if codec == "libsvtav1" else "h264",
                  "video.pix_fmt": "yuv420p" if codec == "libsvtav1" else "rgb24",
                  "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                  "has_audio": False}
    feats = {f"observation.images.{c}": {"dtype": "video", "shape": [*size, 3], "info": video_info,
                                         "names": ["height", "width", "channels"]}
             for c in cameras}
    feats.update({f"observation.images.{c}": {"dtype": "image", "shape": [*size, 3],
                                              "names": ["height", "width", "channels"]}
                  for c in image_cameras})
    feats["observation.state"] = {"dtype": "float32", "shape": [6], "names": list(STATE_NAMES)}
    feats["action"] = {"dtype": "float32", "shape": [6], "names": list(STATE_NAMES)}
    feats["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dt, "shape": [1], "names": None}
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": len(eps),
            "total_frames": sum(len(e["action"]) for e in eps), "total_tasks": len(TASKS),
            "chunks_size": 1000, "fps": fps, "splits": splits, "features": feats}
    if version == "v3.0":
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=500,
                    data_path=V3_DATA, video_path=V3_VIDEO)
    else:
        info.update(total_chunks=1, total_videos=len(eps) * len(cameras), data_path=V2_DATA,
                    video_path=V2_VIDEO)
    return info


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    return b.getvalue()


def _frames_table(eps: list[dict], which: list[int], fps: float, first_index: int,
                  image_cameras=()) -> pa.Table:
    task_ids = {t: i for i, t in enumerate(TASKS)}
    cols = {"observation.state": [], "action": [], "next.reward": [], "timestamp": [],
            "frame_index": [], "episode_index": [], "index": [], "task_index": []}
    g = first_index
    for e in which:
        n = len(eps[e]["action"])
        cols["observation.state"].append(eps[e]["observation.state"])
        cols["action"].append(eps[e]["action"])
        cols["next.reward"].append(np.zeros(n, np.float32))
        cols["timestamp"].append((np.arange(n) / fps).astype(np.float32))
        cols["frame_index"].append(np.arange(n))
        cols["episode_index"].append(np.full(n, e))
        cols["index"].append(np.arange(g, g + n))
        cols["task_index"].append(np.array([task_ids[t] for t in eps[e]["task"]]))
        g += n
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    table = {k: _vec(v) if v.ndim == 2 else pa.array(v.astype(np.float32 if k in (
        "timestamp", "next.reward") else np.int64)) for k, v in arrays.items()}
    for c in image_cameras:  # HF datasets' Image feature: struct {bytes, path}
        key = f"observation.images.{c}"
        table[key] = pa.array([{"bytes": _png(img), "path": None}
                               for e in which for img in eps[e][key]],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(table)


def write_sample(out: str | Path, version: str = "v3.0", *, episodes: int = 4,
                 lengths: list[int] | None = None, fps: float = 10.0,
                 cameras: tuple[str, ...] = ("top", "wrist"), size: tuple[int, int] = (16, 16),
                 codec: str = "libsvtav1", episodes_per_file: int = 2,
                 image_cameras: tuple[str, ...] = (), seed: int = 0) -> list[dict]:
    """Write a LeRobot ``version`` ("v3.0" or "v2.1") dataset under ``out``; ``cameras`` are
    mp4 videos, ``image_cameras`` LeRobot ``image`` features (PNG bytes inside the parquet)."""
    out = Path(out)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    eps = _episodes(episodes, lengths, size, (*cameras, *image_cameras), seed)
    n_train = max(1, len(eps) - 1)
    splits = {"train": f"0:{n_train}", "val": f"{n_train}:{len(eps)}"} if len(eps) > 1 else \
        {"train": "0:1"}
    info = _info(version, fps, eps, cameras, size, codec, splits, image_cameras)
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    stats = {k: _stats(np.concatenate([e[k] for e in eps]))
             for k in ("observation.state", "action")}
    (out / "meta" / "stats.json").write_text(json.dumps(stats))
    if version == "v3.0":
        _write_v3(out, eps, fps, cameras, codec, episodes_per_file, image_cameras)
    elif version == "v2.1":
        _write_v21(out, eps, fps, cameras, codec, image_cameras)
    else:
        raise ValueError(f"unknown LeRobot version {version!r}; known: v3.0, v2.1")
    return eps


def _write_v3(out: Path, eps: list[dict], fps: float, cameras, codec: str, per_file: int,
              image_cameras=()) -> None:
    tasks = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()),
                      "__index_level_0__": pa.array(TASKS)})
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index",
                                "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "metadata": None,
                                "pandas_type": "unicode", "numpy_type": "object"}]}
    pq.write_table(tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}),
                   out / "meta" / "tasks.parquet")
    rows, g = [], 0
    groups = [list(range(a, min(a + per_file, len(eps)))) for a in range(0, len(eps), per_file)]
    for fi, which in enumerate(groups):
        table = _frames_table(eps, which, fps, g, image_cameras)
        path = out / V3_DATA.format(chunk_index=0, file_index=fi)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        t0 = 0.0
        for cam in cameras:
            key = f"observation.images.{cam}"
            encode_video(out / V3_VIDEO.format(video_key=key, chunk_index=0, file_index=fi),
                         np.concatenate([eps[e][key] for e in which]), fps, codec)
        for e in which:
            n = len(eps[e]["action"])
            row = {"episode_index": e, "tasks": sorted(set(eps[e]["task"])), "length": n,
                   "data/chunk_index": 0, "data/file_index": fi, "dataset_from_index": g,
                   "dataset_to_index": g + n, "meta/episodes/chunk_index": 0,
                   "meta/episodes/file_index": 0}
            for cam in cameras:
                p = f"videos/observation.images.{cam}/"
                row.update({p + "chunk_index": 0, p + "file_index": fi, p + "from_timestamp": t0,
                            p + "to_timestamp": t0 + n / fps})
            for k in ("observation.state", "action"):
                row.update({f"stats/{k}/{s}": v for s, v in _stats(eps[e][k]).items()})
            rows.append(row)
            t0 += n / fps
            g += n
    path = out / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _write_v21(out: Path, eps: list[dict], fps: float, cameras, codec: str,
               image_cameras=()) -> None:
    (out / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS)))
    lines, stats, g = [], [], 0
    for e, ep in enumerate(eps):
        path = out / V2_DATA.format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frames_table(eps, [e], fps, g, image_cameras), path)
        for cam in cameras:
            key = f"observation.images.{cam}"
            encode_video(out / V2_VIDEO.format(episode_chunk=0, video_key=key, episode_index=e),
                         ep[key], fps, codec)
        n = len(ep["action"])
        lines.append({"episode_index": e, "tasks": sorted(set(ep["task"])), "length": n})
        stats.append({"episode_index": e,
                      "stats": {k: _stats(ep[k]) for k in ("observation.state", "action")}})
        g += n
    (out / "meta" / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (out / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in stats))
