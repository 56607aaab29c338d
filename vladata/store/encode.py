"""What the writer stores for an image feature of one shard, by image codec.

``raw``/``lz4``: the pixels; ``jpeg``: JPEG bytes -- the source's own when it handed over
:class:`~vladata.episode.EncodedFrames` in the array's channel order (pass-through), else encoded
here at the given quality; ``h264``/``av1``: one packet per frame, encoded and decoded back to
measure the error (:mod:`vladata.store.video`), which :func:`record_video_quality` merges into the
store's metadata once every part is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from vladata.episode import EncodedFrames
from vladata.store import layout, video
from vladata.store.video import merge_quality


def shard_frames(frames, storage: dict, quality: int, measured: list, where: str = ""):
    """One shard's frames as the array stores them: pixels (raw/lz4), JPEG bytes or packets."""
    codec = storage["codec"]
    if codec in layout.VIDEO_CODECS:
        packets, q = video.encode_and_measure(np.asarray(frames), storage, where)
        measured.append(q)
        return packets
    if codec != "jpeg":
        return np.asarray(frames)
    bgr = storage.get("channel_order", "rgb") == "bgr"
    if isinstance(frames, EncodedFrames) and frames.channel_order == ("bgr" if bgr else "rgb"):
        return frames.items  # pass-through: validated (decoded once) by check_frames
    from vladata.images import encode_jpeg
    enc = np.empty(len(frames), dtype=object)
    for j, f in enumerate(np.asarray(frames)):
        enc[j] = encode_jpeg(np.ascontiguousarray(f[..., ::-1] if bgr else f), quality=quality)
    return enc


def record_video_quality(out: Path, storage: dict, markers: list[Path]) -> None:
    """Merge the parts' PSNR measurements into each video camera's attributes (array and store)."""
    cams = [n for n, s in storage.items() if s["codec"] in layout.VIDEO_CODECS]
    if not cams:
        return
    per = {n: [] for n in cams}
    for marker in markers:
        doc = json.loads(marker.read_text())
        for n, q in doc.get("video", {}).items():
            per[n].append({"sse": q["sse"], "values": q["values"],
                           "min_psnr": float(q["min"])})
    root = zarr.open_group(out, mode="r+")
    attrs = dict(root.attrs["vlakit"])
    feats = attrs["features"]
    for n in cams:
        q = video.merge_quality(per[n])
        record = {"mean": q["mean"], "min": q["min"]}
        feats[n]["storage"]["psnr"] = record
        arr = root[f"{layout.DATA}/{n}"]
        arr.attrs["video"] = {**arr.attrs["video"], "psnr": record}
    root.attrs["vlakit"] = attrs


__all__ = ["shard_frames", "record_video_quality", "merge_quality"]
