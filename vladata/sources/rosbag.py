"""ROS bags (ROS1 ``.bag``, ROS2 sqlite3 and MCAP) -> canonical episodes, via a mapping file.

Read with the pure-Python ``rosbags`` library (no ROS installation). ``SRC`` is one bag (a ROS1
``.bag`` file or a ROS2 bag directory with ``metadata.yaml``) or a folder of them; each bag is one
episode, in natural name order. A mapping file (:mod:`vladata.sources.mapping`, ``format:
rosbag``) names the topic and message field of every feature and the control rate ``fps``.

**Resampling rule (nearest earlier message).** Times are the bag's record timestamps (ns).
Control ticks are ``t_k = t0 + floor(k * 1e9 / fps)`` ns for k = 0, 1, ... while ``t_k <= t_end``,
where ``t0`` is the first time at which *every* mapped feature topic has a message (the latest of
the topics' first timestamps) and ``t_end`` is the last message time on any mapped topic. The value
of a feature at tick ``t_k`` is taken from the latest message on its topic with
``timestamp <= t_k`` (ties: the one recorded last). Nothing is interpolated and no message from
the future is used. A language topic is resampled the same way but does not move ``t0``;
ticks before its first message have no instruction.

Message values: ``field`` is a dotted attribute path (``position``, ``pose.position``); the value
may be a number, an array, or a message whose numeric fields are flattened in declaration order
(``header`` and ``layout`` skipped); ``index`` then picks elements. Images: ``sensor_msgs/Image``
with encoding rgb8, bgr8, rgba8, bgra8, mono8 (grey -> 3 channels), for depth features 32FC1
(metres) or 16UC1 / mono16 (millimetres -> metres); ``sensor_msgs/CompressedImage`` JPEG or PNG
(format found from the magic bytes; image_transport encodes colour as BGR, so a standard decode
gives RGB).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import yaml

from vladata.episode import EpisodeInfo, FeatureSpec, cast_exact, segments_from_runs
from vladata.errors import SourceFormatError, VladataError
from vladata.images import decode_image, image_format
from vladata.sources.boundary import DECODER_ERRORS, IMAGE_ERRORS, raised_in
from vladata.sources.mapping import FeatureMap, Mapping, gripper_facts, load_mapping
from vladata.sources.paths import inside
from vladata.store.layout import STATE

RULE = ("nearest earlier message: ticks t_k = t0 + floor(k*1e9/fps) ns while t_k <= t_end; t0 = "
        "latest first-message time over the mapped feature topics, t_end = last message time on "
        "any of them; the value at t_k is the latest message with bag timestamp <= t_k")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
COLOR_ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False), "bgra8": (4, True),
                   "mono8": (1, False), "8UC1": (1, False), "8UC3": (3, True)}
DEPTH_ENCODINGS = {"32FC1": ("f4", 1.0), "16UC1": ("u2", 1e-3), "mono16": ("u2", 1e-3)}
SKIP_FIELDS = ("header", "layout")
BAG_PACKAGES = ("rosbags", "apsw", "lz4", "zstandard", "ruamel", "yaml")


def natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def is_bag(p: Path) -> bool:
    return (p.is_file() and p.suffix == ".bag") or (p.is_dir() and (p / "metadata.yaml").exists())


def find_bags(src: Path) -> list[Path]:
    """One bag, or the bags directly inside a folder (ROS1 files and ROS2 directories)."""
    if is_bag(src):
        return [src]
    if not src.is_dir():
        raise SourceFormatError("not a ROS bag (.bag file or folder with metadata.yaml)", file=src)
    return sorted((p for p in src.iterdir() if is_bag(p)), key=lambda p: natural_key(p.name))


@contextmanager
def _reader(bag: Path, episode: object = None):
    """An open rosbags AnyReader; failures to open become SourceFormatError naming the bag."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    try:
        r = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        r.open()
    except _bag_errors() as e:  # rosbags raises its own unrelated error classes per storage
        if isinstance(e, VladataError) or not raised_in(e, *BAG_PACKAGES):
            raise
        raise SourceFormatError(f"unreadable bag, truncated or corrupt ({type(e).__name__}: {e})",
                                file=bag, episode=episode) from None
    try:
        yield r
    except _bag_errors() as e:  # a bad chunk / record found while iterating
        if isinstance(e, VladataError) or not raised_in(e, *BAG_PACKAGES):
            raise
        raise SourceFormatError(f"unreadable bag data ({type(e).__name__}: {e})", file=bag,
                                episode=episode) from None
    finally:
        r.close()


def _bag_errors() -> tuple[type, ...]:
    import sqlite3

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Ros1Error
    from rosbags.rosbag2 import ReaderError as Ros2Error
    from rosbags.serde import SerdeError

    extra: tuple[type, ...] = ()
    try:
        import apsw  # rosbags' sqlite3 backend, when installed
        extra = (apsw.Error,)
    except ImportError:
        pass
    return (AnyReaderError, Ros1Error, Ros2Error, SerdeError, sqlite3.DatabaseError, *extra,
            *DECODER_ERRORS)


def check_bag_files(bag: Path) -> None:
    """Refuse a ROS2 bag whose ``metadata.yaml`` lists a storage file outside the bag folder."""
    if bag.is_file():
        return
    meta = bag / "metadata.yaml"
    try:
        doc = yaml.safe_load(meta.read_text(errors="replace"))
        info = doc["rosbag2_bagfile_information"]
        paths = [*info.get("relative_file_paths", []),
                 *(f["path"] for f in info.get("files", []) or [])]
    except (yaml.YAMLError, TypeError, KeyError, AttributeError):
        return  # not a readable metadata file: the bag reader reports it
    for p in paths:
        inside(bag, str(p), file=meta, key="relative_file_paths", what="storage file")


def _storage(bag: Path) -> str:
    if bag.is_file():
        return "ros1"
    text = (bag / "metadata.yaml").read_text(errors="replace")
    m = re.search(r"storage_identifier:\s*(\S+)", text)
    return m.group(1) if m else "unknown"


def _connections(reader, topics: list[str], bag: Path, episode) -> list:
    """Every connection of ``topics`` (a topic may have several publishers), checked present."""
    have = {c.topic for c in reader.connections}
    for t in topics:
        if t not in have:
            raise SourceFormatError(f"topic missing from the bag (it has {sorted(have)})",
                                    file=bag, episode=episode, key=t)
    return [c for c in reader.connections if c.topic in topics]


def ticks(t0: int, fps: float, lo: int, hi: int) -> np.ndarray:
    """Tick times in ns of control steps lo..hi-1: t0 + floor(k * 1e9 / fps), exact integers."""
    f = Fraction(fps).limit_denominator(1_000_000)
    step_num, step_den = 10**9 * f.denominator, f.numerator
    return np.array([t0 + (k * step_num) // step_den for k in range(lo, hi)], np.int64)


def tick_count(t0: int, t_end: int, fps: float) -> int:
    """How many ticks t0 + floor(k * 1e9 / fps) are <= t_end."""
    if t_end < t0:
        return 0
    f = Fraction(fps).limit_denominator(1_000_000)
    k = ((t_end - t0) * f.numerator) // (10**9 * f.denominator)
    while t0 + ((k + 1) * 10**9 * f.denominator) // f.numerator <= t_end:
        k += 1
    return int(k) + 1


def nearest_earlier(messages: Iterable[tuple[str, int, object]], tick_times: Sequence[int]
                    ) -> Iterator[dict[str, tuple[int, object]]]:
    """The resampling rule as a generator stage.

    ``messages`` are ``(topic, timestamp, payload)`` in timestamp order; for each tick time
    (ascending) yield ``{topic: (message number, payload)}`` of the latest message with
    ``timestamp <= tick`` (topics without such a message are absent).
    """
    latest: dict[str, tuple[int, object]] = {}
    j, n = 0, len(tick_times)
    for num, (topic, ts, payload) in enumerate(messages):
        while j < n and tick_times[j] < ts:
            yield dict(latest)
            j += 1
        if j == n:
            return
        latest[topic] = (num, payload)
    for _ in range(j, n):
        yield dict(latest)


@dataclass
class RosbagSource:
    """Bags under ``path`` converted with the mapping in ``mapping_file`` (module docstring)."""

    path: str
    mapping_file: str
    name: str = ""
    fps: float = 0.0
    _mapping: Mapping | None = field(default=None, repr=False)
    _plan: list[EpisodeInfo] | None = field(default=None, repr=False)
    _features: dict[str, FeatureSpec] | None = field(default=None, repr=False)
    _types: dict[str, str] = field(default_factory=dict, repr=False)
    allow_outside: bool = False  # read storage files a ROS2 metadata.yaml places outside the bag

    def __post_init__(self):
        self._mapping = m = load_mapping(self.mapping_file)
        if m.format != "rosbag":
            raise SourceFormatError(f"mapping is for format {m.format!r}, not rosbag",
                                    file=self.mapping_file)
        self.name = self.name or m.name
        self.fps = float(self.fps or m.fps)
        if not find_bags(Path(self.path)):
            raise SourceFormatError("no ROS bags found", file=self.path)
        if not self.allow_outside:
            for bag in find_bags(Path(self.path)):
                check_bag_files(bag)

    def bags(self) -> list[Path]:
        return find_bags(Path(self.path))

    # -- planning ------------------------------------------------------------------------------
    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            self._plan = [self._plan_bag(bag) for bag in self.bags()]
        return self._plan

    def _plan_bag(self, bag: Path) -> EpisodeInfo:
        topics = self._mapping.sources()
        first, last = {}, {}
        with _reader(bag, bag.name) as r:
            conns = _connections(r, topics, bag, bag.name)
            for c, ts, _ in r.messages(connections=conns):
                first.setdefault(c.topic, ts)
                last[c.topic] = ts
            self._types.update({c.topic: c.msgtype for c in conns})
        for t in topics:
            if t not in first:
                raise SourceFormatError("topic has no messages", file=bag, episode=bag.name, key=t)
        t0, t_end = max(first.values()), max(last.values())
        n = tick_count(t0, t_end, self.fps)
        info = EpisodeInfo(length=n, source_id=bag.name, split=self._mapping.split,
                           metadata={"bag": bag.name, "storage": _storage(bag),
                                     "t0_ns": int(t0), "t_end_ns": int(t_end)})
        lang = self._mapping.language
        if lang is not None and lang.instruction:
            info.segments = segments_from_runs([lang.instruction] * n, task=lang.task)
        elif lang is not None and lang.topic:
            labels = []
            for msgs in self._resampled(bag, info, 0, n, [lang.topic]):
                msg = msgs.get(lang.topic)
                labels.append(None if msg is None else str(
                    _field(msg, lang.field or "data", bag, info.source_id, lang.topic)))
            info.segments = segments_from_runs(labels, task=lang.task)
        return info

    # -- features ------------------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        """Shapes from the first message of each topic in the first bag."""
        if self._features is None:
            bag, firsts, types = self.bags()[0], {}, {}
            with _reader(bag, bag.name) as r:
                conns = _connections(r, self._mapping.sources(), bag, bag.name)
                for c, _, raw in r.messages(connections=conns):
                    if c.topic not in firsts:
                        firsts[c.topic] = r.deserialize(raw, c.msgtype)
                        types[c.topic] = c.msgtype
                    if len(firsts) == len({c.topic for c in conns}):
                        break
            for t in self._mapping.sources():
                if t not in firsts:
                    raise SourceFormatError("topic has no messages", file=bag, episode=bag.name,
                                            key=t)
            feats = {}
            for fm in self._mapping.features:
                v = _value(fm, {p.topic: firsts.get(p.topic) for p in fm.parts}, bag, bag.name,
                           None)
                if fm.kind == "lowdim" and fm.names is not None and len(fm.names) != v.shape[0]:
                    raise SourceFormatError(f"{len(fm.names)} names for {v.shape[0]} values",
                                            file=bag, episode=bag.name, key=fm.name)
                where = " + ".join(p.topic + (f".{p.field}" if p.field else "") for p in fm.parts)
                kinds = ", ".join(sorted({types[p.topic] for p in fm.parts}))
                feats[fm.name] = FeatureSpec(v.dtype, v.shape, fm.kind, names=fm.names,
                                             description=f"{where} ({kinds})")
            self._features = feats
        return self._features

    # -- reading -------------------------------------------------------------------------------
    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        info, bag = self.plan()[i], self.bags()[i]
        hi = info.length if hi is None else hi
        feats = self.features()
        out = {n: np.empty((hi - lo, *s.shape), s.dtype) for n, s in feats.items()}
        for j, msgs in enumerate(self._resampled(bag, info, lo, hi, self._mapping.sources())):
            for fm in self._mapping.features:
                v = _value(fm, msgs, bag, info.source_id, lo + j)
                if v.shape != feats[fm.name].shape:
                    raise SourceFormatError(f"value shape {v.shape}, expected "
                                            f"{feats[fm.name].shape}", file=bag,
                                            episode=info.source_id, key=fm.name, frame=lo + j)
                out[fm.name][j] = v
        return out

    def _resampled(self, bag: Path, info: EpisodeInfo, lo: int, hi: int, topics: list[str]
                   ) -> Iterator[dict[str, object]]:
        """Per tick lo..hi-1: {topic: deserialized latest message at or before the tick}."""
        tk = ticks(info.metadata["t0_ns"], self.fps, lo, hi)  # (n,) ns
        if not len(tk):
            return
        cache: dict[str, tuple[int, object]] = {}  # topic -> (message number, message)
        with _reader(bag, info.source_id) as r:
            conns = _connections(r, topics, bag, info.source_id)
            stream = ((c.topic, ts, (raw, c.msgtype))
                      for c, ts, raw in r.messages(connections=conns, stop=int(tk[-1]) + 1))
            for latest in nearest_earlier(stream, tk):
                for topic, (num, (raw, msgtype)) in latest.items():
                    if cache.get(topic, (None,))[0] != num:  # each message is decoded once
                        cache[topic] = (num, r.deserialize(raw, msgtype))
                yield {t: cache[t][1] for t in latest}

    def describe(self) -> dict:
        m = self._mapping
        self.plan()
        feats = self.features()
        return {"format": "rosbag", "path": str(Path(self.path).resolve()), "fps": self.fps,
                "resampling": RULE, "time": "bag record timestamps (ns)",
                "topics": dict(sorted(self._types.items())), **gripper_facts(m.gripper),
                "action_space": m.action_space, "robot": m.robot,
                "action_names": list(feats["action"].names or ()),
                "state_names": list(feats[STATE].names or ())
                if STATE in feats else [],
                "mapping": m.to_dict()}


def _value(fm: FeatureMap, msgs: dict, bag: Path, episode, frame) -> np.ndarray:
    """One feature's value at one tick from the messages of its parts' topics."""
    vals = []
    for p in fm.parts:
        if msgs.get(p.topic) is None:  # not reachable for ticks >= t0; kept as a guard
            raise SourceFormatError("no message at or before this tick", file=bag,
                                    episode=episode, key=p.topic, frame=frame)
        vals.append(_extract(msgs[p.topic], fm, p, bag, episode, frame))
    return vals[0] if fm.kind != "lowdim" else np.concatenate(vals).astype(fm.dtype)


def _field(msg: object, path: str, bag: Path, episode, topic: str) -> object:
    v = msg
    for name in path.split("."):
        if not hasattr(v, name):
            have = [f for f in getattr(v, "__dataclass_fields__", {}) if f != "__msgtype__"]
            raise SourceFormatError(f"message has no field {name!r} (fields: {have})", file=bag,
                                    episode=episode, key=f"{topic}.{path}")
        v = getattr(v, name)
    return v


def _flatten(v: object) -> list[float]:
    if isinstance(v, np.ndarray):
        return v.reshape(-1).tolist() if v.dtype.kind in "fiub" else []
    if isinstance(v, (bool, int, float, np.number)):
        return [float(v)]
    if isinstance(v, (list, tuple)):
        return [x for e in v for x in _flatten(e)]
    if hasattr(v, "__dataclass_fields__"):
        return [x for k in v.__dataclass_fields__ if k not in SKIP_FIELDS and k != "__msgtype__"
                for x in _flatten(getattr(v, k))]
    return []  # strings and other non-numeric values


def _extract(msg: object, fm: FeatureMap, part, bag: Path, episode, frame) -> np.ndarray:
    where = dict(file=bag, episode=episode, key=part.topic, frame=frame)
    if part.field:
        msg = _field(msg, part.field, bag, episode, part.topic)
    if fm.kind != "lowdim":
        return _image(msg, fm, where)
    vals = np.asarray(_flatten(msg), np.float64)
    if vals.size == 0:
        raise SourceFormatError(f"field {part.field or '(message)'} holds no numbers", **where)
    if part.index is not None:
        if max(part.index) >= vals.size:
            raise SourceFormatError(f"index {max(part.index)} out of range for {vals.size} "
                                    "values", **where)
        vals = vals[list(part.index)]
    return cast_exact(vals, fm.dtype, **where)


def _image(msg: object, fm: FeatureMap, where: dict) -> np.ndarray:
    t = getattr(msg, "__msgtype__", "")
    if t == "sensor_msgs/msg/CompressedImage":
        data = bytes(np.asarray(msg.data, np.uint8))
        fmt = image_format(data)
        if fmt is None:
            raise SourceFormatError("compressed image is neither JPEG nor PNG (format "
                                    f"{msg.format!r})", **where)
        if fm.kind == "depth":
            raise SourceFormatError("depth from CompressedImage is not supported; record raw "
                                    "Image", **where)
        try:
            return decode_image(data, fmt, fm.channel_order)
        except IMAGE_ERRORS as e:
            raise SourceFormatError(f"corrupt {fmt} image ({e})", **where) from None
    if t != "sensor_msgs/msg/Image":
        raise SourceFormatError(f"expected {' or '.join(IMAGE_TYPES)}, got {t}", **where)
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), msg.encoding
    buf = np.asarray(msg.data, np.uint8)
    if buf.size < h * step:
        raise SourceFormatError(f"image data has {buf.size} bytes, expected {h * step}", **where)
    if fm.kind == "depth":  # bytes per pixel (0: an encoding refused below)
        per = np.dtype(DEPTH_ENCODINGS[enc][0]).itemsize if enc in DEPTH_ENCODINGS else 0
    else:
        per = COLOR_ENCODINGS[enc][0] if enc in COLOR_ENCODINGS else 0
    if step < w * per:
        raise SourceFormatError(f"row step {step} is shorter than width {w} x {per} bytes",
                                **where)
    rows = buf[:h * step].reshape(h, step)
    if fm.kind == "depth":
        if enc not in DEPTH_ENCODINGS:
            raise SourceFormatError(f"depth encoding {enc!r} not supported "
                                    f"({list(DEPTH_ENCODINGS)})", **where)
        code, scale = DEPTH_ENCODINGS[enc]
        dt = np.dtype(code).newbyteorder(">" if msg.is_bigendian else "<")
        return (rows[:, :w * dt.itemsize].copy().view(dt).astype(np.float32) * scale).reshape(h, w)
    if enc not in COLOR_ENCODINGS:
        raise SourceFormatError(f"image encoding {enc!r} not supported "
                                f"({list(COLOR_ENCODINGS)})", **where)
    ch, bgr = COLOR_ENCODINGS[enc]
    img = rows[:, :w * ch].reshape(h, w, ch)
    img = np.repeat(img, 3, axis=2) if ch == 1 else img[..., :3]
    if bgr != (fm.channel_order == "bgr"):
        img = img[..., ::-1]
    return np.ascontiguousarray(img)
