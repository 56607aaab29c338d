"""Video storage of image features (``image_codec`` ``h264`` / ``av1``): encode, decode, layout.

**Layout.** A video camera is stored like a JPEG one (:mod:`vladata.store.layout`): a 1-d
vlen-bytes array ``data/<camera>`` of one-element chunks in shards of ``IMAGE_SHARD`` (64) rows,
written by :mod:`vladata.store.shard_writer`. Element ``r`` is the compressed packet of frame ``r``.
Each shard is an independent video stream: rows ``[64k, 64k + 64)`` (the last shard may be
shorter) encoded in row order, episodes back to back, with

- a keyframe every ``gop`` frames, at rows ``64k + j*gop``; ``gop`` divides 64, every GOP is
  closed (H.264 IDR frames; AV1 key frames), so a GOP decodes on its own;
- no B-frames (x264 ``bframes=0``; SVT-AV1 emits shown frames in order): packet ``j`` is frame
  ``j`` in decode and in display order, one packet per frame;
- in-band stream headers (H.264 SPS/PPS before every IDR, Annex B start codes; the AV1
  sequence header OBU in every key frame packet), so no extradata is needed: the packets of a
  shard from any keyframe, concatenated, are a raw H.264 elementary stream (``ffmpeg -f h264
  -i -``) or an AV1 low-overhead OBU stream (``ffmpeg -f obu -i -``);
- yuv420p, BT.601 limited range (the swscale defaults both ways); frames are uint8 RGB
  ``(H, W, 3)`` with even H and W.

To read frame ``r`` with plain tools: open ``data/<camera>/c/<r // 64>``; its last
``64 * 16 + 4`` bytes are the index, ``(64, 2)`` little-endian uint64 ``(offset, nbytes)`` per
chunk, then the index's CRC32C; chunk ``j`` at ``offset`` is ``uint32 count (=1) | uint32
length | packet | uint32 CRC32C of the preceding bytes``. Decode the packets of chunks
``(j // gop) * gop .. j`` with a decoder of the codec (``attributes["video"]["decoder"]``).
``tests/vladata/test_codecs.py`` does exactly this with plain PyAV.

**Metadata.** The array's ``zarr.json`` attributes hold ``{"encoding": <codec>, "frame_shape":
[H, W, 3], "video": {...}}`` and the store's feature ``storage`` the same settings: ``codec``,
``encoder``, ``decoder``, ``gop``, ``crf``, ``preset``, ``pix_fmt``, and after conversion
``psnr`` -- ``{"mean": dB over all frames (from the total squared error), "min": dB of the
worst frame}`` measured by decoding every shard right after encoding it.

**Reading.** :class:`VideoRows` decodes rows in the loader workers, from the keyframe at or
before the first row, with one decoder per camera per process kept between reads: a read that
continues where the last one stopped (same shard, not before its keyframe) decodes no frame
twice. Packets are always CRC32C-checked (a few hundred bytes each), and a packet that fails
its CRC or does not decode is a :class:`ShardFormatError` naming the shard file.
"""

from __future__ import annotations

import fractions
import math
import os

import numpy as np

from vladata.store.shard_reader import ArrayReader, ShardFormatError

VIDEO_CODECS = ("h264", "av1")
#: codec -> (encoder, decoder, default gop, default crf, preset)
CODECS = {"h264": ("libx264", "h264", 16, 23, "fast"),
          "av1": ("libsvtav1", "libdav1d", 16, 30, "8")}
PIX_FMT = "yuv420p"


def settings(codec: str, frame_shape, *, gop: int | None = None, crf: int | None = None,
             shard_frames: int = 64) -> dict:
    """The encoder settings of one camera (recorded in its storage); raises ValueError if unfit."""
    if codec not in CODECS:
        raise ValueError(f"video codec {codec!r} is not one of {VIDEO_CODECS}")
    encoder, decoder, gop0, crf0, preset = CODECS[codec]
    gop = gop0 if gop is None else int(gop)
    crf = crf0 if crf is None else int(crf)
    if gop < 1 or shard_frames % gop:
        raise ValueError(f"--gop {gop} must divide the {shard_frames}-frame shard (1, 2, 4, 8, "
                         "16, 32 or 64): GOPs are closed and never straddle shards")
    top = 51 if codec == "h264" else 63
    if not 0 <= crf <= top:
        raise ValueError(f"--crf {crf} is outside 0..{top} for {codec}")
    h, w, *c = frame_shape
    if c != [3] or h % 2 or w % 2:
        raise ValueError(f"video codecs store RGB frames of even height and width (yuv420p); "
                         f"this camera's frames are {tuple(frame_shape)}: use --image-codec jpeg")
    return {"codec": codec, "encoder": encoder, "decoder": decoder, "gop": gop, "crf": crf,
            "preset": preset, "pix_fmt": PIX_FMT}


def _encoder(s: dict, h: int, w: int):
    import av
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner on stderr otherwise
    ctx = av.CodecContext.create(s["encoder"], "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, s["pix_fmt"]
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.framerate = 30
    ctx.gop_size = s["gop"]
    ctx.thread_count = 1
    if s["codec"] == "h264":
        ctx.options = {"crf": str(s["crf"]), "preset": s["preset"],
                       "x264-params": f"bframes=0:keyint={s['gop']}:min-keyint={s['gop']}:"
                                      "scenecut=0:open-gop=0:threads=1"}
    else:
        ctx.options = {"crf": str(s["crf"]), "preset": s["preset"],
                       "svtav1-params": f"keyint={s['gop']}:scd=0:lp=1"}
    return ctx


def encode_shard(frames: np.ndarray, s: dict, where: str = "") -> list[bytes]:
    """One shard's frames (n, H, W, 3) uint8 -> n packets (closed GOPs of ``s["gop"]``)."""
    import av
    frames = np.asarray(frames)
    n, h, w = frames.shape[:3]
    ctx = _encoder(s, h, w)
    packets = []
    for i in range(n):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
        vf.pts = i
        packets += ctx.encode(vf)
    packets += ctx.encode(None)
    pts = [p.pts for p in packets]
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    if pts != list(range(n)) or keys[:1] != [0] or any(k % s["gop"] for k in keys) \
            or len(keys) != -(-n // s["gop"]):
        raise ValueError(f"{where}: {s['encoder']} did not emit one in-order packet per frame "
                         f"with keyframes every {s['gop']} frames (pts {pts[:8]}..., keyframes "
                         f"{keys[:8]}...)")
    return [bytes(p) for p in packets]


def _decoder(s: dict):
    import av
    ctx = av.CodecContext.create(s["decoder"], "r")
    ctx.thread_count = 1
    return ctx


def decode_packets(packets: list[bytes], s: dict, out: np.ndarray, *, first: int = 0,
                   where: str = "", ctx=None) -> bool:
    """Decode ``packets`` (starting at a keyframe) into ``out`` (rows ``first..``), RGB uint8.

    ``out`` holds the frames of ``packets[first:]``; earlier packets are decoded and dropped.
    Returns whether the decoder had to be drained (it then needs a keyframe to go on).
    """
    import av
    ctx = ctx or _decoder(s)
    got, drained = 0, False
    try:
        for j, data in enumerate(packets):
            pkt = av.Packet(data)
            pkt.pts = j
            for fr in ctx.decode(pkt):
                got = _keep(fr, out, first, got, where)
        if got < len(packets) - first:
            for fr in ctx.decode(None):
                got = _keep(fr, out, first, got, where)
            ctx.flush_buffers()
            drained = True
    except av.error.FFmpegError as e:
        raise ShardFormatError(f"{where}: a video packet does not decode ({e})") from None
    if got != len(packets) - first:
        raise ShardFormatError(f"{where}: {len(packets)} packets decoded to {got + first} "
                               "frames (a damaged packet)")
    return drained


def _keep(fr, out: np.ndarray, first: int, got: int, where: str) -> int:
    j = fr.pts
    if j is None or j < first:
        return got
    if j - first != got:
        raise ShardFormatError(f"{where}: the decoder returned frame {j} after {got + first} "
                               "(a damaged packet)")
    img = fr.to_ndarray(format="rgb24", threads=1)  # threaded swscale halves per-core throughput
    if img.shape != out.shape[1:]:
        raise ShardFormatError(f"{where}: frame of {img.shape}, expected {out.shape[1:]}")
    out[got] = img
    return got + 1


def psnr(sse: float, values: int) -> float:
    """PSNR in dB of uint8 pixels from their summed squared error (inf if exact)."""
    return float("inf") if sse == 0 else 10 * math.log10(255.0 ** 2 * values / sse)


def encode_and_measure(frames, s: dict, where: str = "") -> tuple[list[bytes], dict]:
    """Encode one shard and decode it back: -> (packets, {"sse", "values", "min_psnr"})."""
    frames = np.asarray(frames)
    packets = encode_shard(frames, s, where)
    back = np.empty_like(frames)
    decode_packets(packets, s, back, where=where)
    err = (back.astype(np.int32) - frames).reshape(len(frames), -1)
    sse = (err.astype(np.int64) ** 2).sum(axis=1)
    per = err.shape[1]
    return packets, {"sse": float(sse.sum()), "values": int(sse.size * per),
                     "min_psnr": min(psnr(float(x), per) for x in sse)}


def merge_quality(parts: list[dict]) -> dict:
    """The ``psnr`` record of a camera from its per-shard (or per-part) measurements."""
    sse = sum(p["sse"] for p in parts)
    values = sum(p["values"] for p in parts)
    worst = min(p["min_psnr"] for p in parts)
    return {"mean": _finite(psnr(sse, values)), "min": _finite(worst),
            "sse": sse, "values": values}


def _finite(x: float) -> float | str:
    return "inf" if math.isinf(x) else round(x, 3)


class VideoRows:
    """Rows of a video array (``data/<camera>``) decoded to RGB, with a kept decoder (see module)."""

    def __init__(self, arr: ArrayReader):
        if arr.attrs.get("encoding") not in VIDEO_CODECS or not arr.vlen:
            raise ShardFormatError(f"{arr.path}: not a video array (attributes "
                                   f"{sorted(arr.attrs)})")
        self.arr = arr
        self.settings = arr.attrs["video"]
        self.gop = int(self.settings["gop"])
        self.shard = arr.rows_per_shard
        self._ctx, self._next = None, None  # the kept decoder and the row it would decode next

    def __getstate__(self):
        return {**self.__dict__, "_ctx": None, "_next": None}

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Decode rows ``lo..hi-1`` into ``out`` ((hi-lo, H, W, 3) uint8)."""
        a = lo
        while a < hi:
            k = a // self.shard
            b = min(hi, (k + 1) * self.shard)
            self._decode(k, a, b, out[a - lo:b - lo])
            a = b
        return out

    def read(self, lo: int, hi: int) -> np.ndarray:
        frame = tuple(self.arr.attrs["frame_shape"])
        return self.read_into(lo, hi, np.empty((hi - lo, *frame), np.uint8))

    def _decode(self, k: int, a: int, b: int, out: np.ndarray) -> None:
        key = k * self.shard + (a - k * self.shard) // self.gop * self.gop
        start = self._next if self._next is not None and key <= self._next <= a else key
        if start == key:
            if self._ctx is None:
                self._ctx = _decoder(self.settings)
            else:
                self._ctx.flush_buffers()  # a fresh start at a keyframe
        packets = self._packets(start, b, k)
        self._next = None
        drained = decode_packets(packets, self.settings, out, first=a - start, ctx=self._ctx,
                                 where=self.arr._file(k))
        self._next = b if b % self.shard and not drained else None

    def _packets(self, a: int, b: int, k: int) -> list[bytes]:
        verify = self.arr.verify
        self.arr.verify = True  # packets are small: always check their CRC32C
        try:
            items = self.arr.read_items(a, b)
        finally:
            self.arr.verify = verify
        if not all(items):
            raise ShardFormatError(f"{self.arr._file(k)}: a video packet of rows {a}..{b} is "
                                   "empty (the frame was never written)")
        return items


def verify_array(arr: ArrayReader) -> list[str]:
    """``vladata verify`` of a video array: its settings and PSNR are recorded, every shard
    decodes to one frame per packet (packet CRCs are checked as they are read)."""
    s = arr.attrs.get("video") or {}
    missing = [k for k in ("codec", "decoder", "gop", "crf", "pix_fmt", "psnr") if k not in s]
    if missing:
        return [f"{arr.path}: video settings lack {missing} (zarr.json attributes['video'])"]
    rows = VideoRows(arr)
    frame = tuple(arr.attrs["frame_shape"])
    out = np.empty((rows.shard, *frame), np.uint8)
    for lo in range(0, arr.shape[0], rows.shard):
        hi = min(lo + rows.shard, arr.shape[0])
        rows.read_into(lo, hi, out[:hi - lo])
    return []


__all__ = ["verify_array", "VIDEO_CODECS", "CODECS", "settings", "encode_shard", "decode_packets",
           "encode_and_measure", "merge_quality", "psnr", "VideoRows"]
