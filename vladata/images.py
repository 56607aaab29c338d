"""Image codecs: JPEG encode (for the writer) and decode (in loader workers) with simplejpeg
(libjpeg-turbo), and decoding the JPEG/PNG frames source logs carry.

JPEG is the optional, smaller image storage of a store (``image_codec="jpeg"``): quality 90 with
4:2:0 chroma subsampling by default. Decoding runs in the loader's worker processes, straight into
the batch buffer when one is given.
"""

from __future__ import annotations

import io

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
                where: str = "", bgr: bool = False) -> np.ndarray:
    """Decode JPEG bytes to uint8 (H, W, channels); into ``out`` (C-contiguous) when given.

    ``where`` names the frame in error messages (array and row). ``bgr``: the JPEG was encoded
    from channel-swapped pixels (a store's ``channel_order: bgr``): swap them back.
    """
    if not data:
        raise ImageDecodeError(f"{where or 'frame'}: no JPEG bytes (the frame was never written)")
    colorspace = "GRAY" if channels == 1 else ("BGR" if bgr else "RGB")
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


def check_jpeg(data: bytes, shape: tuple[int, ...], *, where: str = "") -> None:
    """Validate JPEG bytes for frames of ``shape`` (H, W, channels) without keeping pixels: the
    header must give H x W, and the whole entropy-coded stream is decoded (strict: a corrupt or
    truncated stream is an error) at 1/8 scale, which skips the full-size inverse DCT and colour
    upsampling that only produce pixels (a pass-through conversion never needs them)."""
    if not data:
        raise ImageDecodeError(f"{where or 'frame'}: no JPEG bytes (the frame was never written)")
    try:
        h, w = _header(data)
        if (h, w) != tuple(shape[:2]):
            raise ImageDecodeError(f"{where or 'frame'}: JPEG of {h}x{w} does not fit the "
                                   f"expected frame shape {tuple(shape)}")
        simplejpeg.decode_jpeg(data, colorspace="GRAY" if shape[-1] == 1 else "RGB",
                               min_height=1, min_width=1, min_factor=8, strict=True)
    except ValueError as e:
        if isinstance(e, ImageDecodeError):
            raise
        raise ImageDecodeError(f"{where or 'frame'}: not a decodable JPEG ({e})") from e


def _header(data: bytes) -> tuple[int, int]:
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    return int(h), int(w)


__all__ = ["encode_jpeg", "decode_jpeg", "check_jpeg", "ImageDecodeError"]


def decode_image(buf: bytes | np.ndarray, encoding: str, channel_order: str = "rgb") -> np.ndarray:
    """Decode one JPEG/PNG buffer to uint8 (H, W, 3) in RGB, given the data's channel order.

    ``channel_order="bgr"`` means the colours come out of a standard decoder swapped (the
    encoder was handed a BGR-ordered array as RGB, or an RGB array as BGR as cv2 does), so the
    result is swapped back. Trailing zero padding after a JPEG's end marker is ignored, as
    ALOHA's padded buffers need.
    """
    data = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    if encoding == "jpeg":
        img = simplejpeg.decode_jpeg(data, colorspace="BGR" if channel_order == "bgr" else "RGB")
        return np.ascontiguousarray(img)
    if encoding == "png":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            img = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return np.ascontiguousarray(img[..., ::-1]) if channel_order == "bgr" else img


def image_format(data: bytes) -> str | None:
    """``jpeg`` / ``png`` from the magic bytes, or None."""
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:4] == b"\x89PNG":
        return "png"
    return None
