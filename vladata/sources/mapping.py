"""Mapping files: a declarative YAML description of a custom log -> canonical features.

A mapping names, for each canonical feature, where its values come from: a ROS topic (and a
field of the message) for ``vladata convert rosbag``, or an HDF5 dataset key for
``vladata convert hdf5 --layout mapping``. No code is needed for a new robot::

    version: 1
    format: rosbag                 # rosbag | hdf5
    name: my_arm                   # recorded as the store's source name
    fps: 10                        # control rate (rosbag: resampled to it; hdf5: the log's rate)
    robot: franka                  # optional embodiment name
    gripper: "0/1"                 # optional: "<closed>/<open>" values of the LAST action
                                   #   dimension (0 = closed, 1 = open); default "unknown"
    action_space: "joint position targets"   # optional, free text recorded in the store
    split: train                   # optional split of every episode (default train)
    episodes:                      # hdf5 only
      files: "*.hdf5"              #   episode files under SRC (glob; natural order)
      group: null                  #   or a group pattern ("data/demo_*"): one episode per group
    language:                      # optional; one of instruction / topic / key / attr
      instruction: "pick up the cube"
    features:
      observation.images.front: {topic: /camera/front/image_raw}
      observation.state:
        parts:
          - {topic: /joint_states, field: position, index: "0:7"}
          - {topic: /gripper/state, field: data}
        names: [j1, j2, j3, j4, j5, j6, j7, gripper]
      action: {topic: /arm/command, field: data}

A feature is either one part written inline (``{topic: ..., field: ...}``) or ``parts:`` whose
values are concatenated in order. Image features (``observation.images.<cam>``) take exactly one
part. For HDF5 images ``encoding`` is ``raw`` (uint8 (T, H, W, 3)), ``jpeg`` or ``png`` (one
encoded buffer per frame, zero padding after the image allowed), and ``channel_order`` says in
which order the data holds the colours *as its decoder returns them*: ``rgb`` (default) or
``bgr`` (then channels are swapped to RGB; ALOHA's cv2-written JPEGs of RGB arrays are ``jpeg`` +
``bgr``). For ROS topics the message type and its ``encoding`` field decide the decoding and
``channel_order: bgr`` swaps afterwards (for a stream whose label is wrong). Depth features
(``observation.depth.<cam>``) are float32 (H, W). Low-dim values are cast to ``dtype`` (default
float32); ``index`` picks elements (a list of ints or ``"a:b"``).

Language: ``instruction`` is one sentence for every whole episode; ``topic`` (+ ``field``,
default ``data``) or ``key`` (a per-frame string dataset) give per-frame text whose runs of the
same value become segments; ``attr`` names an HDF5 attribute of the episode group (whole episode).

:func:`load_mapping` parses with ``yaml.safe_load`` and validates once, listing every error in a
single :class:`MappingError`. This module also holds the small helpers both mapping-driven readers
share: image decoding with an explicit channel order and runs of labels -> segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vladata.errors import ConfigError
from vladata.store.layout import IMAGE_PREFIX

VERSION = 1
FORMATS = ("rosbag", "hdf5")
ENCODINGS = ("raw", "jpeg", "png")
CHANNEL_ORDERS = ("rgb", "bgr")
FEATURE_RE = re.compile(r"^(observation\.(images|depth)\.[A-Za-z0-9_]+|observation\.[A-Za-z0-9_]+"
                        r"|action(\.[A-Za-z0-9_]+)?)$")
TOP_KEYS = {"version", "format", "name", "fps", "robot", "gripper", "action_space", "split",
            "episodes", "language", "features"}
PART_KEYS = {"topic", "key", "field", "index"}
FEATURE_KEYS = {"parts", "names", "dtype", "encoding", "channel_order"}
LANGUAGE_KEYS = {"instruction", "task", "topic", "key", "attr", "field"}


class MappingError(ConfigError):
    """A mapping file has one or more errors; all are listed, each with where it is."""

    def __init__(self, errors: list[str], file: object = None):
        self.file = file
        prefix = f"{file}: " if file is not None else ""
        super().__init__([prefix + e for e in errors])


@dataclass(frozen=True)
class Part:
    """One source of values: a topic (+ message field) or an HDF5 key, optionally indexed."""

    topic: str | None = None
    key: str | None = None
    field: str | None = None
    index: tuple[int, ...] | None = None

    @property
    def source(self) -> str:
        return self.topic if self.topic is not None else self.key

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("topic", "key", "field") if getattr(self, k) is not None}
        if self.index is not None:
            d["index"] = list(self.index)
        return d


@dataclass(frozen=True)
class FeatureMap:
    """How one canonical feature is assembled from its parts."""

    name: str
    parts: tuple[Part, ...]
    names: tuple[str, ...] | None = None
    dtype: str = "float32"
    encoding: str = "raw"
    channel_order: str = "rgb"

    @property
    def kind(self) -> str:
        if self.name.startswith(IMAGE_PREFIX):
            return "image"
        if self.name.startswith("observation.depth."):
            return "depth"
        return "lowdim"

    def to_dict(self) -> dict:
        d = {"parts": [p.to_dict() for p in self.parts], "dtype": self.dtype}
        if self.names is not None:
            d["names"] = list(self.names)
        if self.encoding != "raw":
            d["encoding"] = self.encoding
        if self.channel_order != "rgb":
            d["channel_order"] = self.channel_order
        return d


@dataclass(frozen=True)
class LanguageMap:
    instruction: str | None = None
    task: str = ""
    topic: str | None = None
    key: str | None = None
    attr: str | None = None
    field: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass(frozen=True)
class EpisodesMap:
    files: str = "*.hdf5"
    group: str | None = None

    def to_dict(self) -> dict:
        return {"files": self.files, "group": self.group}


@dataclass(frozen=True)
class Mapping:
    """A validated mapping file (see the module docstring for the YAML it comes from)."""

    format: str
    fps: float
    features: tuple[FeatureMap, ...]
    name: str = "custom"
    robot: str = ""
    gripper: str = "unknown"
    action_space: str = "unknown"
    split: str = "train"
    episodes: EpisodesMap = field(default_factory=EpisodesMap)
    language: LanguageMap | None = None
    version: int = VERSION

    def feature(self, name: str) -> FeatureMap:
        return next(f for f in self.features if f.name == name)

    def sources(self) -> list[str]:
        """Every topic / key the features read, in first-use order (language not included)."""
        out: list[str] = []
        for f in self.features:
            for p in f.parts:
                if p.source not in out:
                    out.append(p.source)
        return out

    def to_dict(self) -> dict:
        d = {"version": self.version, "format": self.format, "name": self.name, "fps": self.fps,
             "robot": self.robot, "gripper": self.gripper, "action_space": self.action_space,
             "split": self.split, "features": {f.name: f.to_dict() for f in self.features}}
        if self.format == "hdf5":
            d["episodes"] = self.episodes.to_dict()
        if self.language is not None:
            d["language"] = self.language.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: object, *, file: object = None) -> "Mapping":
        return parse_mapping(d, file=file)


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a YAML mapping file; raises :class:`MappingError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MappingError([f"not UTF-8 text ({e})"], file=path) from None
    except OSError as e:
        raise MappingError([f"cannot read the mapping file ({e.strerror or e})"],
                           file=path) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MappingError([f"invalid YAML: {e}"], file=path) from None
    return parse_mapping(doc, file=path)


def parse_mapping(doc: object, *, file: object = None) -> Mapping:
    """Validate a mapping document (a dict from YAML); every error is collected before raising."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        raise MappingError([f"expected a mapping (YAML dict) at the top, got {type(doc).__name__}"],
                           file=file)
    for k in sorted(set(doc) - TOP_KEYS, key=str):
        errors.append(f"{k}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    version = doc.get("version", VERSION)
    if version != VERSION:
        errors.append(f"version: this reader knows version {VERSION}, got {version!r}")
    fmt = doc.get("format")
    if fmt not in FORMATS:
        errors.append(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    fps = doc.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        errors.append(f"fps: expected a positive number (Hz), got {fps!r}")
    gripper = doc.get("gripper", "unknown")
    if gripper is not None and gripper != "unknown" and parse_gripper(gripper) is None:
        errors.append(f"gripper: expected \"<closed>/<open>\" values of the last action dimension "
                      f"(e.g. \"0/1\" or \"-1/1\") or \"unknown\", got {gripper!r}")
    strings = {}
    for k, default in (("name", "custom"), ("robot", ""), ("gripper", "unknown"),
                       ("action_space", "unknown"), ("split", "train")):
        v = doc.get(k, default)
        if v is None:
            v = default
        if not isinstance(v, str):
            errors.append(f"{k}: expected a string, got {v!r}")
        strings[k] = str(v)
    episodes = _parse_episodes(doc.get("episodes"), fmt, errors)
    language = _parse_language(doc.get("language"), fmt, errors)
    features = _parse_features(doc.get("features"), fmt, errors)
    if errors:
        raise MappingError(errors, file=file)
    return Mapping(format=fmt, fps=float(fps), features=features, episodes=episodes,
                   language=language, version=VERSION, **strings)


def _parse_episodes(d: object, fmt: object, errors: list[str]) -> EpisodesMap:
    if d is None:
        return EpisodesMap()
    if fmt == "rosbag":
        errors.append("episodes: only for format hdf5 (a rosbag episode is one bag)")
        return EpisodesMap()
    if not isinstance(d, dict):
        errors.append(f"episodes: expected a dict with files/group, got {d!r}")
        return EpisodesMap()
    for k in sorted(set(d) - {"files", "group"}, key=str):
        errors.append(f"episodes.{k}: unknown key (known: files, group)")
    files, group = d.get("files", "*.hdf5"), d.get("group")
    if not isinstance(files, str) or not files:
        errors.append(f"episodes.files: expected a glob pattern, got {files!r}")
    if group is not None and (not isinstance(group, str) or not group):
        errors.append(f"episodes.group: expected a group pattern or null, got {group!r}")
    return EpisodesMap(files=str(files), group=group if isinstance(group, str) else None)


def _parse_language(d: object, fmt: object, errors: list[str]) -> LanguageMap | None:
    if d is None:
        return None
    if isinstance(d, str):
        d = {"instruction": d}
    if not isinstance(d, dict):
        errors.append(f"language: expected a dict (instruction / topic / key / attr), got {d!r}")
        return None
    for k in sorted(set(d) - LANGUAGE_KEYS, key=str):
        errors.append(f"language.{k}: unknown key (known: {', '.join(sorted(LANGUAGE_KEYS))})")
    given = [k for k in ("instruction", "topic", "key", "attr") if d.get(k) is not None]
    if len(given) != 1:
        errors.append(f"language: give exactly one of instruction, topic, key, attr (got "
                      f"{', '.join(given) or 'none'})")
    allowed = {"rosbag": ("instruction", "topic"), "hdf5": ("instruction", "key", "attr")}
    for k in given:
        if fmt in allowed and k not in allowed[fmt]:
            errors.append(f"language.{k}: not available for format {fmt} (use "
                          f"{' or '.join(allowed[fmt])})")
        if not isinstance(d[k], str) or not d[k]:
            errors.append(f"language.{k}: expected a non-empty string, got {d[k]!r}")
    for k in ("task", "field"):
        if d.get(k) is not None and not isinstance(d[k], str):
            errors.append(f"language.{k}: expected a string, got {d[k]!r}")
    if d.get("field") is not None and d.get("topic") is None:
        errors.append("language.field: only with language.topic")
    return LanguageMap(**{k: d.get(k) for k in ("instruction", "topic", "key", "attr", "field")},
                       task=str(d.get("task") or ""))


def _parse_features(d: object, fmt: object, errors: list[str]) -> tuple[FeatureMap, ...]:
    if not isinstance(d, dict) or not d:
        errors.append("features: expected a non-empty dict of feature name -> source")
        return ()
    out = []
    for name, spec in d.items():
        where = f"features.{name}"
        if not isinstance(name, str) or not FEATURE_RE.match(name):
            errors.append(f"{where}: not a canonical feature name (observation.images.<camera>, "
                          "observation.state, observation.<name>, action, action.<variant>)")
            continue
        fm = _parse_feature(name, spec, fmt, where, errors)
        if fm is not None:
            out.append(fm)
    if "action" not in d:
        errors.append("features.action: missing (the control the policy learns is required)")
    return tuple(out)


def _parse_feature(name: str, spec: object, fmt: object, where: str,
                   errors: list[str]) -> FeatureMap | None:
    if isinstance(spec, str):
        spec = {"topic" if fmt == "rosbag" else "key": spec}
    if not isinstance(spec, dict):
        errors.append(f"{where}: expected a dict (a part, or parts: [...]), got {spec!r}")
        return None
    if "parts" in spec:
        raw_parts, opts = spec["parts"], {k: v for k, v in spec.items() if k != "parts"}
        bad = set(opts) - FEATURE_KEYS
        if not isinstance(raw_parts, list) or not raw_parts:
            errors.append(f"{where}.parts: expected a non-empty list of parts")
            raw_parts = []
    else:
        raw_parts = [{k: v for k, v in spec.items() if k in PART_KEYS}]
        opts = {k: v for k, v in spec.items() if k not in PART_KEYS}
        bad = set(opts) - FEATURE_KEYS
    for k in sorted(bad, key=str):
        known = ", ".join(sorted(FEATURE_KEYS | PART_KEYS))
        errors.append(f"{where}.{k}: unknown key (known: {known})")
    parts = []
    for j, p in enumerate(raw_parts):
        pw = f"{where}.parts[{j}]" if "parts" in spec else where
        part = _parse_part(p, fmt, pw, errors)
        if part is not None:
            parts.append(part)
    fm = FeatureMap(name=name, parts=tuple(parts))
    kind = fm.kind
    names = opts.get("names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        errors.append(f"{where}.names: expected a list of strings, got {names!r}")
        names = None
    encoding = opts.get("encoding", "raw")
    order = opts.get("channel_order", "rgb")
    dtype = opts.get("dtype", "uint8" if kind == "image" else "float32")
    if kind == "image":
        if len(raw_parts) != 1:
            errors.append(f"{where}: an image feature takes exactly one part")
        if any(p.index is not None for p in parts):
            errors.append(f"{where}.index: not allowed for an image feature")
        if names is not None:
            errors.append(f"{where}.names: not allowed for an image feature")
        if dtype != "uint8":
            errors.append(f"{where}.dtype: images are uint8, got {dtype!r}")
            dtype = "uint8"
        if encoding not in ENCODINGS:
            errors.append(f"{where}.encoding: expected one of {', '.join(ENCODINGS)}, "
                          f"got {encoding!r}")
        if fmt == "rosbag" and "encoding" in opts:
            errors.append(f"{where}.encoding: for rosbag the message type and its encoding field "
                          "decide; remove it")
        if order not in CHANNEL_ORDERS:
            errors.append(f"{where}.channel_order: expected rgb or bgr, got {order!r}")
    else:
        for k in ("encoding", "channel_order"):
            if k in opts:
                errors.append(f"{where}.{k}: only for image features")
        try:
            if not isinstance(dtype, str) or np.dtype(dtype).kind not in "fiub":
                raise TypeError
        except TypeError:
            errors.append(f"{where}.dtype: expected a numeric dtype name, got {dtype!r}")
            dtype = "float32"
        if names is not None and all(p.index is not None for p in parts) and parts:
            n = sum(len(p.index) for p in parts)
            if n != len(names):
                errors.append(f"{where}.names: {len(names)} names for {n} indexed values")
    return FeatureMap(name=name, parts=tuple(parts), names=tuple(names) if names else None,
                      dtype=np.dtype(dtype).name,
                      encoding=str(encoding), channel_order=str(order))


def _parse_part(p: object, fmt: object, where: str, errors: list[str]) -> Part | None:
    if not isinstance(p, dict):
        errors.append(f"{where}: expected a dict with {'topic' if fmt == 'rosbag' else 'key'}, "
                      f"got {p!r}")
        return None
    for k in sorted(set(p) - PART_KEYS, key=str):
        errors.append(f"{where}.{k}: unknown key (known: {', '.join(sorted(PART_KEYS))})")
    need, other = ("topic", "key") if fmt == "rosbag" else ("key", "topic")
    if fmt in FORMATS:
        if not isinstance(p.get(need), str) or not p.get(need):
            errors.append(f"{where}.{need}: required for format {fmt} (a non-empty string)")
        if p.get(other) is not None:
            errors.append(f"{where}.{other}: not used by format {fmt} (use {need})")
    fld = p.get("field")
    if fld is not None:
        if fmt == "hdf5":
            errors.append(f"{where}.field: not used by format hdf5 (the key names the dataset)")
        elif not isinstance(fld, str) or not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", fld):
            errors.append(f"{where}.field: expected a dotted message field path, got {fld!r}")
    index = _parse_index(p.get("index"), f"{where}.index", errors)
    return Part(topic=p.get("topic") if isinstance(p.get("topic"), str) else None,
                key=p.get("key") if isinstance(p.get("key"), str) else None,
                field=fld if isinstance(fld, str) else None, index=index)


def _parse_index(v: object, where: str, errors: list[str]) -> tuple[int, ...] | None:
    if v is None:
        return None
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", v)
        if not m or int(m.group(2)) <= int(m.group(1)):
            errors.append(f"{where}: expected \"a:b\" with 0 <= a < b, got {v!r}")
            return None
        return tuple(range(int(m.group(1)), int(m.group(2))))
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return (v,)
    if (isinstance(v, list) and v
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)):
        return tuple(v)
    errors.append(f"{where}: expected a non-negative int, a list of them, or \"a:b\", got {v!r}")
    return None


# -- helpers shared by the mapping-driven readers ----------------------------------------------

def parse_gripper(text: object) -> tuple[float, float] | None:
    """``"<closed>/<open>"`` -> (closed, open), or None if it is not that form."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*", str(text))
    if not m or float(m.group(1)) == float(m.group(2)):
        return None
    return float(m.group(1)), float(m.group(2))


def gripper_facts(convention: str, meaning: str | None = None) -> dict:
    """The describe() entries of a gripper convention: ``gripper`` is ``"<closed>/<open>"`` of
    the last action dimension (what the store's action normalisation reads) or None when unknown
    or not a single last dimension; ``gripper_meaning`` says it in words, "unknown" if unknown."""
    known = parse_gripper(convention) if convention != "unknown" else None
    if meaning is None:
        meaning = (f"last action dimension: {known[0]:g} = closed, {known[1]:g} = open" if known
                   else "unknown")
    return {"gripper": convention if known else None, "gripper_meaning": meaning}
