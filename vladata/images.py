"""JPEG encode (for the writer) and decode (in loader workers) with simplejpeg (libjpeg-turbo).

JPEG is the optional, smaller image storage of a store (``image_codec="jpeg"``): quality 90 with
4:2:0 chroma subsampling by default. Decoding runs in the loader's worker processes, straight into
the batch buffer when one is given.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

from vladata.errors import VladataError


class ImageDecodeError(VladataError, ValueError):
    """Bytes that should hold a JPEG frame do not decode to the expected image."""


def encode_jpeg(frame: np.ndarray, quality: int = 90, *, subsampling: str = "420") -> bytes:
    """Encode one uint8 (H, W, 3) RGB frame (or (H, W) / (H, W, 1) grey) as JPEG bytes."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"encode_jpeg needs uint8 pixels, got {frame.dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3):
        raise ValueError(f"encode_jpeg needs a (H, W, 3) or (H, W) frame, got shape {frame.shape}")
    colorspace = "GRAY" if frame.shape[2] == 1 else "RGB"
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=int(quality),
                                  colorspace=colorspace,
                                  colorsubsampling="Gray" if colorspace == "GRAY" else subsampling)


def decode_jpeg(data: bytes, out: np.ndarray | None = None, *, channels: int = 3,
                where: str = "") -> np.ndarray:
    """Decode JPEG bytes to uint8 (H, W, channels); into ``out`` (C-contiguous) when given.

    ``where`` names the frame in error messages (array and row).
    """
    if not data:
        raise ImageDecodeError(f"{where or 'frame'}: no JPEG bytes (the frame was never written)")
    colorspace = "GRAY" if channels == 1 else "RGB"
    try:
        if out is not None:
            h, w = _header(data)
            if out.shape != (h, w, channels) or not out.flags.c_contiguous:
                raise ImageDecodeError(f"{where or 'frame'}: JPEG of {h}x{w} does not fit the "
                                       f"expected frame shape {tuple(out.shape)}")
            img = simplejpeg.decode_jpeg(data, colorspace=colorspace, buffer=out)
        else:
            img = simplejpeg.decode_jpeg(data, colorspace=colorspace)
    except ValueError as e:
        if isinstance(e, ImageDecodeError):
            raise
        raise ImageDecodeError(f"{where or 'frame'}: not a decodable JPEG ({e})") from e
    if channels == 1 and img.ndim == 2:
        img = img[..., None]
    return img


def _header(data: bytes) -> tuple[int, int]:
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    return int(h), int(w)


__all__ = ["encode_jpeg", "decode_jpeg", "ImageDecodeError"]
