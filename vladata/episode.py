"""The canonical episode and the contract every source reader fulfils.

A source reader (``vladata.sources.<name>``) turns raw logs into this one shape:

- :class:`FeatureSpec` -- what one per-frame feature looks like (dtype, per-frame shape, names).
- :class:`Segment` -- a language annotation over frames ``start..end`` (inclusive) of an episode.
- :class:`EpisodeInfo` -- what is known of an episode before its frames are read: its length,
  split, source id and language segments. The writer plans the store from these.
- :class:`Episode` -- an :class:`EpisodeInfo` plus its frames: feature name -> array with a
  leading time axis T.
- :class:`Source` -- the protocol: ``features()``, ``plan()``, ``read(i, lo, hi)``. It must be
  picklable (paths and settings only) because conversion workers receive it.
- :class:`EncodedFrames` -- image frames handed over still encoded (JPEG bytes + the frame
  shape), by the optional ``read_encoded(i, lo, hi)`` of a source whose logs hold JPEGs: the
  writer stores those bytes unchanged for ``image_codec="jpeg"`` (pass-through); anything
  needing pixels (``np.asarray``, statistics, other codecs) decodes them.

Feature names follow LeRobot's dotted convention: ``observation.images.<camera>`` (uint8 HxWx3),
``observation.depth.<camera>`` (float32 HxW), ``observation.state``, ``action`` (the control the
policy learns, A=7 end-effector deltas + gripper where the source has them) and any
``action.<variant>`` the source keeps beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from vladata.errors import SourceFormatError

#: Feature kinds. ``image``: uint8 (H, W, C); ``depth``: float32 (H, W); ``lowdim``: a vector.
KINDS = ("image", "depth", "lowdim", "other")


@dataclass(frozen=True)
class FeatureSpec:
    """One per-frame feature of a store: ``dtype`` and ``shape`` of a single frame."""

    dtype: str
    shape: tuple[int, ...]
    kind: str = "lowdim"
    names: tuple[str, ...] | None = None
    source_dtype: str | None = None  # what the raw data held, when it was cast (float64 -> float32)
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.kind not in KINDS:
            raise ValueError(f"feature kind {self.kind!r} is not one of {KINDS}")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
            if self.kind == "lowdim" and len(self.shape) == 1 and len(self.names) != self.shape[0]:
                raise ValueError(f"{len(self.names)} names for a feature of shape {self.shape}")

    def to_dict(self) -> dict:
        d = {"dtype": self.dtype, "shape": list(self.shape), "kind": self.kind}
        if self.names is not None:
            d["names"] = list(self.names)
        if self.source_dtype is not None:
            d["source_dtype"] = self.source_dtype
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(dtype=d["dtype"], shape=tuple(d["shape"]), kind=d.get("kind", "lowdim"),
                   names=tuple(d["names"]) if d.get("names") is not None else None,
                   source_dtype=d.get("source_dtype"), description=d.get("description", ""))


@dataclass
class Segment:
    """A language annotation: frames ``start..end`` (both inclusive, offsets within the episode)."""

    start: int
    end: int
    instruction: str
    task: str = ""
    embedding: np.ndarray | None = None  # float32 (E,), e.g. CALVIN's 384-d MiniLM embedding


@dataclass
class EpisodeInfo:
    """An episode as planned: everything but its frames."""

    length: int
    source_id: str
    split: str = "train"
    segments: list[Segment] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # small JSON-able extras (scene, file path, ...)


@dataclass
class Episode:
    """An episode with its frames: ``frames[name]`` has shape ``(length, *spec.shape)``.

    Kept as the public in-memory view of a source (``vladata.Episode``, :func:`iter_episodes`):
    :meth:`validate` runs :func:`check_frames`, the one frame validator the writer also applies
    to each block it reads, so a whole episode and a streamed block are checked alike.
    """

    info: EpisodeInfo
    frames: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        return self.info.length

    def validate(self, features: dict[str, FeatureSpec], *, file: object = None) -> None:
        """Raise :class:`SourceFormatError` if a frame array disagrees with its spec; cast the
        ones that hold another dtype where every value is exactly representable."""
        self.frames = check_frames(self.frames, features, self.length, file=file,
                                   episode=self.info.source_id)


def cast_exact(arr: np.ndarray, dtype: str | np.dtype, *, file: object = None,
               episode: object = None, key: str | None = None, frame: int | None = None,
               first: int | None = None) -> np.ndarray:
    """``arr`` as ``dtype``, refusing every cast that would change a value silently.

    Allowed: the same dtype; bool or integers to any dtype that holds every value exactly (an
    integer type whose range holds them, a float type in which each converts back unchanged,
    bool for 0/1); float to a narrower float (float64 -> float32, the store's documented
    precision, recorded as ``source_dtype``) unless a finite value overflows. Refused: floats to
    integers or bool (a float64 image in [0, 1] would become zeros: its scale is a convention
    the data does not state), strings, objects, anything else non-numeric. The error
    names the file, episode, key and the frame given (or, when ``first`` is given, ``first`` +
    the row of the first bad value: ``arr`` then has a leading time axis).
    """
    dtype = np.dtype(dtype)
    a = np.asarray(arr)
    if a.dtype == dtype:
        return a
    if frame is None and first is not None and a.ndim:
        frame = first  # a dtype refused: its first frame is already wrong
    where = dict(file=file, episode=episode, key=key, frame=frame)
    if a.dtype.kind not in "biuf" or dtype.kind not in "biuf":
        raise SourceFormatError(f"source holds {a.dtype}, expected {dtype} (numbers)", **where)
    if a.dtype.kind == "f" and dtype.kind in "biu":
        raise SourceFormatError(f"source holds {a.dtype}, expected {dtype}: floats are not cast "
                                "to integers (rounding changes values; a [0, 1] image would "
                                "become zeros)", **where)
    with np.errstate(all="ignore"):
        out = a.astype(dtype)
        if dtype.kind == "f" and a.dtype.kind == "f":
            bad = np.isinf(out) & np.isfinite(a)
            what = "overflows"
        elif dtype.kind == "b":
            bad = (a != 0) & (a != 1)
            what = "is not 0 or 1"
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            bad = (a < info.min) | (a > info.max)
            what = "is out of range"
        else:  # bool or integers -> a float type
            bad = out.astype(a.dtype) != a
            what = "is not exactly representable"
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape) if a.ndim else ()
        if first is not None and idx:
            where["frame"] = first + int(idx[0])
        raise SourceFormatError(f"value {a[idx].item()!r} ({a.dtype}) {what} as {dtype}; values "
                                "are cast only when exact", **where)
    return out


def check_frames(frames: dict[str, np.ndarray], features: dict[str, FeatureSpec], n: int, *,
                 file: object = None, episode: object = None, first: int = 0
                 ) -> dict[str, np.ndarray]:
    """The one frame validator (sources and the store writer): every feature present with
    ``n`` frames of its spec's shape, cast exactly to its dtype (:func:`cast_exact`); the
    frames returned are what the store gets. ``first`` is the frame number of row 0."""
    out = dict(frames)
    for name, spec in features.items():
        arr = frames.get(name)
        if arr is None:
            raise SourceFormatError("feature missing from the frames read", file=file,
                                    episode=episode, key=name)
        want = (n, *spec.shape)
        got = tuple(np.shape(arr))
        if isinstance(arr, EncodedFrames):
            if spec.kind != "image" or spec.dtype != "uint8" or got != want:
                raise SourceFormatError(f"encoded frames of shape {got} for a {spec.kind} "
                                        f"feature of {spec.dtype} {want}", file=file,
                                        episode=episode, key=name)
            arr.validate(keep=False)  # every frame decoded: bad bytes are an error naming it
            continue
        if got[:1] != want[:1] if spec.dtype == "object" else got != want:
            raise SourceFormatError(f"expected shape {want}, got {got}", file=file,
                                    episode=episode, key=name)
        if spec.dtype != "object":
            out[name] = cast_exact(arr, spec.dtype, file=file, episode=episode, key=name,
                                   first=first)
    return out


class EncodedFrames:
    """``n`` image frames of shape ``frame_shape`` as the source encoded them (one JPEG each).

    Array-like: ``shape`` is ``(n, *frame_shape)``, ``dtype`` uint8, ``len()`` n, and
    ``np.asarray(frames)`` decodes them (once; the pixels are kept). ``items[j]`` are frame j's
    bytes, untouched. ``channel_order`` says what a standard (RGB) decoder gives: ``"rgb"``, or
    ``"bgr"`` when the encoder was handed swapped channels (ALOHA's cv2 JPEGs): the store then
    records it and its readers swap back. ``file``, ``episode``, ``key`` and ``first`` (the frame
    number of item 0 in its episode) name the frames in errors. :meth:`validate` decodes every
    frame once and raises :class:`SourceFormatError` naming the frame that does not decode to
    ``frame_shape``; :func:`check_frames` calls it without keeping the pixels (a pass-through
    conversion never needs them; image statistics decode them again).
    """

    dtype = np.dtype(np.uint8)
    encoding = "jpeg"

    def __init__(self, items, frame_shape, *, channel_order: str = "rgb", file: object = None,
                 episode: object = None, key: str | None = None, first: int = 0):
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.items = [bytes(b) for b in items]
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.channel_order = channel_order
        self.where = [dict(file=file, episode=episode, key=key, frame=first + j)
                      for j in range(len(self.items))]
        self._pixels: np.ndarray | None = None
        self._valid = False

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.items), *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    def __len__(self) -> int:
        return len(self.items)

    def __array__(self, dtype=None, copy=None):
        px = self.validate(keep=True)
        return px if dtype is None else px.astype(dtype)

    def validate(self, *, keep: bool = True) -> np.ndarray | None:
        """Decode every frame into uint8 ``shape``; -> the pixels if ``keep`` (kept for later
        ``np.asarray``), else None (each frame's header checked and its whole stream decoded by
        :func:`~vladata.images.check_jpeg`, without full-size pixels)."""
        if self._pixels is not None or self._valid and not keep:
            return self._pixels
        from vladata.images import ImageDecodeError, check_jpeg, decode_jpeg
        out = np.empty(self.shape, np.uint8) if keep else None
        for j, data in enumerate(self.items):
            try:
                if keep:
                    decode_jpeg(data, out[j], channels=self.frame_shape[-1],
                                bgr=self.channel_order == "bgr")
                else:  # the whole stream decoded, no full-size pixels made (check_jpeg)
                    check_jpeg(data, self.frame_shape)
            except ImageDecodeError as e:
                raise SourceFormatError(f"JPEG frame does not decode to {self.frame_shape}: "
                                        f"{e}", **self.where[j]) from None
        self._valid = True
        if keep:
            self._pixels = out
        return self._pixels

    @classmethod
    def concat(cls, parts: list["EncodedFrames"]) -> "EncodedFrames":
        """The frames of ``parts`` one after the other (they must agree on shape and order)."""
        first = parts[0]
        for p in parts[1:]:
            if p.frame_shape != first.frame_shape or p.channel_order != first.channel_order:
                raise SourceFormatError(f"encoded frames of {p.frame_shape}/{p.channel_order} "
                                        f"follow {first.frame_shape}/{first.channel_order}",
                                        **(p.where[0] if p.where else {}))
        out = cls([], first.frame_shape, channel_order=first.channel_order)
        out.items = [b for p in parts for b in p.items]
        out.where = [w for p in parts for w in p.where]
        out._valid = all(p._valid for p in parts)  # pixels are not carried: decoded on demand
        return out


def concat_frames(parts: list) -> np.ndarray | EncodedFrames:
    """Frame arrays of consecutive row ranges joined on axis 0 (:class:`EncodedFrames` stay
    encoded when every part is; mixed parts are decoded)."""
    if all(isinstance(p, EncodedFrames) for p in parts):
        return EncodedFrames.concat(parts)
    return np.concatenate([np.asarray(p) for p in parts])


@runtime_checkable
class Source(Protocol):
    """What the store writer needs of a raw dataset.

    ``plan()`` lists every episode in store order; ``read(i, lo, hi)`` returns frames
    ``lo..hi-1`` of planned episode ``i`` as ``{feature: array}``, exactly matching
    ``features()``. Reading a sub-range lets conversion workers split the store at shard
    boundaries, which need not fall on episode boundaries; a source that can only read whole
    episodes reads the whole one and slices.

    Optional, for sources whose logs hold JPEG frames: ``encoded_images()`` -> ``{feature:
    channel_order}`` names the image features ``read_encoded(i, lo, hi)`` may hand over as
    :class:`EncodedFrames` (the rest of its result is as ``read``'s; frames the source holds
    in another form may still come as pixel arrays). ``np.asarray`` of what ``read_encoded``
    gives equals ``read``'s pixels (the conformance suite checks it). The writer uses it for
    ``image_codec="jpeg"`` to store the source's bytes unchanged.
    """

    name: str
    fps: float

    def features(self) -> dict[str, FeatureSpec]: ...

    def plan(self) -> list[EpisodeInfo]: ...

    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...  # JSON-able facts recorded in the store (gripper convention, ...)


def segments_from_runs(labels: list, texts: dict | None = None, task: str = "") -> list[Segment]:
    """One segment per run of equal consecutive labels (None/"" labels make no segment).

    ``texts`` maps a label to its instruction (e.g. LeRobot task_index -> task string); without it
    the label is the instruction.
    """
    out: list[Segment] = []
    start = 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[start]:
            lab = labels[start]
            text = texts[lab] if texts is not None and lab in texts else lab
            if lab is not None and text not in (None, ""):
                out.append(Segment(start=start, end=t - 1, instruction=str(text),
                                   task=task or str(text)))
            start = t
    return out


def iter_episodes(source: Source) -> Iterator[Episode]:
    """Every planned episode of ``source`` with its frames, in store order."""
    features = source.features()
    for i, info in enumerate(source.plan()):
        ep = Episode(info, source.read(i))
        ep.validate(features)
        yield ep
