"""Decoding one serialized RLDS episode (a ``tf.train.Example``) with its ``features.json``.

TFDS serialisation (``example_serializer.py``), as read here:

- nested dicts are flattened with ``/``; every step of ``steps`` is stacked, so a step leaf of
  static shape S holds ``T * prod(S)`` values and T is the length of ``steps/is_first``;
- bool and integers are stored in ``int64_list`` (uint64 bit-cast), float16/32/64 in
  ``float_list`` -- so float64 arrives as float32 and is returned as float32;
- Text, images (JPEG/PNG bytes) and ``Tensor(encoding='bytes'|'zlib')`` hold one ``bytes_list``
  entry per step (``ndarray.tobytes()``, zlib-compressed for ``zlib``);
- images are decoded by their magic bytes (``FFD8`` JPEG with simplejpeg, ``89504E47`` PNG with
  Pillow), whatever ``encodingFormat`` says or omits.

Every check raises :class:`~vladata.sources.oxe.tfrecord.RecordError` naming the shard, the
record and the key. :func:`check` runs every check that does not need pixels, so a planned
record can only fail later on undecodable image bytes.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import simplejpeg
from google.protobuf.message import DecodeError

from vladata.episode import cast_exact
from vladata.sources.oxe.example_proto import Example
from vladata.sources.oxe.tfds import Leaf
from vladata.sources.oxe.tfrecord import RecordError

JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8", b"\x89PNG"
_FLOATS = ("float16", "bfloat16", "float32", "float64")


class FeatureMismatchError(RecordError):
    """A record does not match ``features.json`` (missing key, wrong number of values, ...)."""


class Record:
    """One parsed episode record: its feature map and where it came from (for errors)."""

    def __init__(self, data: bytes, file: object, record: int):
        self.file, self.record = file, record
        try:
            self.features = Example.FromString(data).features.feature
        except DecodeError as e:
            raise FeatureMismatchError(f"not a serialized tf.train.Example ({e})", file=file,
                                       record=record) from None

    def error(self, message: str, key: str | None = None) -> FeatureMismatchError:
        return FeatureMismatchError(message, file=self.file, record=self.record, key=key)

    def values(self, leaf: Leaf):
        """The repeated values of ``leaf``'s list, checking the list kind fits the dtype."""
        if leaf.key not in self.features:
            raise self.error("key missing from the record (features.json declares it)", leaf.key)
        feat = self.features[leaf.key]
        kind = feat.WhichOneof("kind")
        want = ("bytes_list" if leaf.is_bytes or leaf.dtype == "str" else
                "float_list" if leaf.dtype in _FLOATS else "int64_list")
        if kind is None:  # an empty Feature(): TFDS writes these only for empty lists
            return ()
        if kind != want:
            raise self.error(f"stored as {kind}, but features.json's {leaf.kind} of dtype "
                             f"{leaf.dtype} is serialized as {want}", leaf.key)
        return getattr(feat, kind).value

    # -- structure --------------------------------------------------------------------------
    def length(self, leaves: list[Leaf]) -> int:
        """T, the number of steps: the length of ``steps/is_first`` (or of the first step leaf)."""
        step = [lf for lf in leaves if lf.in_steps]
        if not step:
            raise self.error("features.json has no 'steps' Dataset: not an RLDS dataset")
        first = next((lf for lf in step if lf.key == "steps/is_first"), None)
        first = first or next((lf for lf in step if lf.is_bytes or lf.size > 0), step[0])
        n = len(self.values(first))
        if first.is_bytes:
            return n
        if first.size <= 0:
            raise self.error("cannot tell the number of steps: no steps/is_first and no leaf of "
                             "static shape", first.key)
        if n % first.size:
            raise self.error(f"{n} values is not a whole number of steps of shape {first.shape}",
                             first.key)
        return n // first.size

    def check(self, leaves: list[Leaf], T: int) -> None:
        """Raise unless every leaf holds the number of values its shape and T call for."""
        for lf in leaves:
            vals = self.values(lf)
            steps = T if lf.in_steps else 1
            if lf.is_bytes:
                per = lf.size if lf.kind == "text" and lf.shape else 1  # string Tensor
                if per < 0 or len(vals) != steps * per:
                    raise self.error((f"expected {steps * per} entries ({per} per step, T={T} "
                                      "from steps/is_first)" if lf.in_steps else
                                      f"expected {per} entry for the episode") +
                                     f", got {len(vals)}", lf.key)
                if lf.kind == "image":
                    for t, buf in enumerate(vals):
                        if not (buf[:2] == JPEG_MAGIC or buf[:4] == PNG_MAGIC):
                            raise self.error(f"step {t}: neither JPEG nor PNG (starts with "
                                             f"{bytes(buf[:4]).hex()})", lf.key)
                elif lf.kind == "tensor":
                    self.encoded_tensor(lf, vals)  # decodes and checks every step's size
            elif lf.size >= 0:
                want = steps * lf.size
                if len(vals) != want:
                    raise self.error(f"expected {want} values ({steps} step(s) x shape {lf.shape}"
                                     f"{', T from steps/is_first' if lf.in_steps else ''}), got "
                                     f"{len(vals)}", lf.key)
            elif lf.in_steps:
                raise self.error(f"step tensors of dynamic shape {lf.shape} are not supported",
                                 lf.key)

    # -- values -----------------------------------------------------------------------------
    def tensor(self, lf: Leaf, T: int) -> np.ndarray:
        """A numeric leaf as ``(T, *shape)`` (step leaves) or ``shape`` (episode leaves).

        float* -> float32 (as stored); bool -> bool; integers -> their declared dtype.
        """
        vals = self.values(lf)
        if lf.encoding in ("bytes", "zlib"):
            out = self.encoded_tensor(lf, vals)
            return out if lf.in_steps else out[0]
        if lf.dtype in _FLOATS:
            arr = np.array(vals, dtype=np.float32)
        else:
            arr = np.array(vals, dtype=np.int64)
            if lf.dtype == "uint64":
                arr = arr.view(np.uint64)
            elif lf.dtype != "int64":  # -> bool, int8, uint16, ...: only values the dtype holds
                steps = (T, *lf.shape) if lf.in_steps else None  # errors name the step
                arr = cast_exact(arr.reshape(steps) if steps else arr, lf.dtype,
                                 file=f"{self.file}, record {self.record}", key=lf.key,
                                 first=0 if steps else None).reshape(-1)
        if lf.in_steps:
            return arr.reshape(T, *lf.shape)
        return arr.reshape(lf.shape) if lf.size >= 0 else arr

    def encoded_tensor(self, lf: Leaf, vals) -> np.ndarray:
        """``Tensor(encoding='bytes'|'zlib')``: one ``tobytes()`` payload per step."""
        dt = np.dtype(lf.dtype)
        want = lf.size * dt.itemsize
        out = np.empty((len(vals), *lf.shape), dt)
        for t, buf in enumerate(vals):
            if lf.encoding == "zlib":
                try:
                    buf = zlib.decompress(buf)
                except zlib.error as e:
                    raise self.error(f"step {t}: zlib payload does not decompress ({e})",
                                     lf.key) from None
            if len(buf) != want:
                raise self.error(f"step {t}: {len(buf)} bytes, expected {want} ({lf.dtype} "
                                 f"x shape {lf.shape})", lf.key)
            out[t] = np.frombuffer(buf, dt).reshape(lf.shape)
        return out

    def texts(self, lf: Leaf) -> list[str]:
        """A Text leaf's strings (one per step, or the episode's one)."""
        out = []
        for t, b in enumerate(self.values(lf)):
            try:
                out.append(bytes(b).decode("utf-8"))
            except UnicodeDecodeError as e:
                raise self.error(f"entry {t} is not UTF-8 ({e})", lf.key) from None
        return out

    def images(self, lf: Leaf, lo: int, hi: int) -> np.ndarray:
        """Steps ``lo..hi-1`` of an image leaf, decoded to ``(hi-lo, H, W, C)``."""
        vals = self.values(lf)
        out = np.empty((hi - lo, *lf.shape), lf.dtype)
        for t in range(lo, hi):
            try:
                decode_image(vals[t], out[t - lo])
            except ValueError as e:
                raise self.error(f"step {t}: {e}", lf.key) from None
        return out


def decode_image(buf: bytes, out: np.ndarray) -> None:
    """Decode a JPEG or PNG (told apart by magic bytes) into ``out`` (H, W, C), checking size."""
    h, w, c = out.shape
    if buf[:2] == JPEG_MAGIC:
        if out.dtype != np.uint8:
            raise ValueError(f"a JPEG cannot hold {out.dtype} pixels")
        try:
            jh, jw, _, _ = simplejpeg.decode_jpeg_header(buf)
        except ValueError as e:
            raise ValueError(f"undecodable JPEG ({e})") from None
        if (jh, jw) != (h, w):
            raise ValueError(f"JPEG is {jh}x{jw}, features.json says {h}x{w}")
        space = {1: "GRAY", 3: "RGB", 4: "RGBA"}[c]
        simplejpeg.decode_jpeg(buf, colorspace=space, buffer=out)
    elif buf[:4] == PNG_MAGIC:
        from PIL import Image
        try:
            with Image.open(io.BytesIO(buf)) as im:
                im.load()
                mode = {(1, "uint8"): "L", (3, "uint8"): "RGB",
                        (4, "uint8"): "RGBA"}.get((c, out.dtype.name))
                if mode is not None and im.mode != mode:
                    im = im.convert(mode)
                arr = np.asarray(im)
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"undecodable PNG ({e})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape != out.shape:
            raise ValueError(f"PNG is {arr.shape}, features.json says {out.shape}")
        out[...] = arr
    else:
        raise ValueError(f"neither JPEG nor PNG (starts with {bytes(buf[:4]).hex()})")
