"""Decoding a LeRobot episode's frames from its video: frame ``j`` is the video frame whose
presentation time is within :data:`TOLERANCE_S` of the wanted time (LeRobot's own rule and
tolerance); a missing frame is an error naming the file, episode, key and frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vladata.errors import SourceFormatError

TOLERANCE_S = 1e-4


def decode_video_frames(path: Path, times: np.ndarray, *, episode: object = None, key: str = "",
                        lo: int = 0) -> np.ndarray:
    """Decode the frames presented at ``times`` (seconds, ascending) -> uint8 (n, H, W, 3) RGB."""
    import av

    n = len(times)
    if n == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    if np.any(np.diff(times) <= 0):
        raise SourceFormatError("frame timestamps are not increasing", file=path,
                                episode=episode, key=key)
    out: list[np.ndarray | None] = [None] * n
    j = 0
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            if not container.streams.video:
                raise SourceFormatError("no video stream in the file", file=path, episode=episode,
                                        key=key)
            stream = container.streams.video[0]
            tb = stream.time_base
            container.seek(max(0, int((times[0] - TOLERANCE_S) / tb)), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                while j < n and times[j] < t - TOLERANCE_S:
                    _missing_frame(path, episode, key, lo + j, times[j], t)
                if j < n and abs(t - times[j]) <= TOLERANCE_S:
                    out[j] = frame.to_ndarray(format="rgb24")
                    j += 1
                if j == n:
                    break
    except FileNotFoundError:
        raise SourceFormatError("video file missing", file=path, episode=episode, key=key) from None
    except av.FFmpegError as e:
        raise SourceFormatError(f"undecodable video ({e})", file=path, episode=episode,
                                key=key) from None
    if j < n:
        _missing_frame(path, episode, key, lo + j, times[j], None)
    shapes = [a.shape for a in out]
    if len(set(shapes)) > 1:
        t = next(t for t, s in enumerate(shapes) if s != shapes[0])
        raise SourceFormatError(f"frame size {shapes[t]} differs from {shapes[0]}", file=path,
                                episode=episode, key=key, frame=lo + t)
    return np.stack(out)


def _missing_frame(path, episode, key, frame, want: float, got: float | None):
    near = f"; the next frame is at {got:.6f} s" if got is not None else "; the video ends first"
    raise SourceFormatError(f"no video frame within {TOLERANCE_S} s of {want:.6f} s{near}",
                            file=path, episode=episode, key=key, frame=frame)
