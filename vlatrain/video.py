"""Episode videos: camera frames side by side under a one-line caption, written as MP4 (PyAV)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CAPTION_HEIGHT = 16


def compose(obs: dict[str, np.ndarray], cameras: tuple[str, ...], caption: str) -> np.ndarray:
    """One video frame (uint8 HxWx3, even sides): the cameras side by side, the caption above."""
    from PIL import Image, ImageDraw
    row = np.concatenate([obs[f"observation.images.{c}"] for c in cameras], axis=1)
    h, w = row.shape[:2]
    canvas = Image.new("RGB", (w + w % 2, h + CAPTION_HEIGHT + (h + CAPTION_HEIGHT) % 2))
    canvas.paste(Image.fromarray(row), (0, CAPTION_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 2), caption, fill=(255, 255, 255))
    return np.asarray(canvas)


def write_episode(path: str | os.PathLike, frames: list[dict], cameras: tuple[str, ...],
                  caption: str, fps: float = 30.0) -> str:
    """Write ``frames`` (observations) as an H.264 MP4 at ``path``; returns the path.

    Written to a temporary name and renamed, so a video that exists is complete.
    """
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    first = compose(frames[0], cameras, caption)
    with av.open(str(tmp), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        for obs in frames:
            img = compose(obs, cameras, caption)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return str(path)
