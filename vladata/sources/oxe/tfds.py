"""The TFDS metadata of a dataset version directory: ``dataset_info.json`` and ``features.json``.

A TFDS dataset version directory (``<data_dir>/<name>/<version>/``) holds::

    dataset_info.json    {"name", "version", "fileFormat": "tfrecord", "splits": [{"name",
                          "shardLengths": ["12", ...], "filepathTemplate":
                          "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "numBytes"}], ...}
    features.json        the nested feature tree (FeaturesDict / Dataset / Tensor / Scalar /
                          Image / Text), protobuf-JSON, int64 as strings
    <name>-<split>.tfrecord-00000-of-00004, ...   one tf.train.Example per episode

:func:`parse_features` flattens the tree into :class:`Leaf` entries keyed exactly as the
serialized ``tf.train.Example`` is (``steps/observation/image``, ``episode_metadata/file_path``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vladata.errors import SourceFormatError
from vladata.sources.paths import inside, safe_format

DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

#: Leaf kinds. ``tensor``: numbers (Tensor, Scalar, ClassLabel); ``image``: encoded JPEG/PNG,
#: one per step; ``text``: UTF-8 strings, one per step.
LEAF_KINDS = ("tensor", "image", "text")
_NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "bfloat16", "float32", "float64"}


@dataclass(frozen=True)
class Leaf:
    """One serialized feature: its flattened key and how its values are stored.

    ``shape`` is the static shape of one step (or of the episode, for leaves outside
    ``steps``); ``-1`` marks an unknown dimension. ``encoding`` is the Tensor encoding
    (``none``, ``bytes``, ``zlib``) or, for images, the declared format (``jpeg``, ``png`` or
    ``""`` when features.json omits it: the bytes say).
    """

    key: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str = "none"
    in_steps: bool = True
    description: str = ""

    @property
    def rel(self) -> str:
        """The key inside a step (``observation/image``) or the episode key as is."""
        return self.key[len("steps/"):] if self.in_steps else self.key

    @property
    def size(self) -> int:
        """Values per step; -1 if the shape is not static."""
        return -1 if any(d < 0 for d in self.shape) else int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_bytes(self) -> bool:
        """Stored as one ``bytes_list`` entry per step (images, text, encoded tensors)."""
        return self.kind in ("image", "text") or self.encoding in ("bytes", "zlib")


@dataclass(frozen=True)
class SplitInfo:
    """One split: its name and, per shard, the file name and the number of episodes."""

    name: str
    shard_files: tuple[str, ...]
    shard_lengths: tuple[int, ...] | None  # None: dataset_info.json does not say


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset_info.json`` says that a reader needs."""

    name: str
    version: str
    file_format: str
    splits: tuple[SplitInfo, ...]
    description: str = ""


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceFormatError("missing: a TFDS dataset version directory holds "
                                "dataset_info.json, features.json and the tfrecord shards",
                                file=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceFormatError(f"invalid JSON ({e})", file=path) from None


def shard_name(template: str, dataset: str, split: str, file_format: str, i: int, n: int) -> str:
    """A shard's file name from a TFDS ``filepathTemplate`` (plain placeholders only: the
    template comes from the dataset's metadata, see :func:`~vladata.sources.paths.safe_format`)."""
    return safe_format(template, {"DATASET": dataset, "SPLIT": split, "FILEFORMAT": file_format,
                                  "SHARD_X_OF_Y": f"{i:05d}-of-{n:05d}",
                                  "SHARD_INDEX": f"{i:05d}", "NUM_SHARDS": f"{n:05d}"},
                       key="filepathTemplate")


def parse_dataset_info(src: Path, *, allow_outside: bool = False) -> DatasetInfo:
    """Read ``src/dataset_info.json``; shard files come from the template and shard lengths
    (a shard file outside ``src`` is refused unless ``allow_outside``)."""
    path = src / "dataset_info.json"
    d = _load_json(path)
    for k in ("name", "splits"):
        if k not in d:
            raise SourceFormatError(f"no {k!r} field", file=path)
    name, fmt = str(d["name"]), str(d.get("fileFormat", "tfrecord"))
    if fmt != "tfrecord":
        raise SourceFormatError(f"fileFormat {fmt!r} is not supported (only 'tfrecord'; "
                                "array_record shards need their own reader)", file=path)
    splits = []
    for s in d["splits"]:
        sname = str(s.get("name", ""))
        if not sname:
            raise SourceFormatError("a split without a name", file=path)
        lengths = s.get("shardLengths")
        try:
            lengths = tuple(int(x) for x in lengths) if lengths is not None else None
        except (TypeError, ValueError):
            raise SourceFormatError(f"split {sname!r}: shardLengths must be integers, got "
                                    f"{lengths!r}", file=path) from None
        template = s.get("filepathTemplate") or DEFAULT_TEMPLATE
        if lengths is not None:
            try:
                files = tuple(shard_name(template, name, sname, fmt, i, len(lengths))
                              for i in range(len(lengths)))
            except ValueError as e:
                raise SourceFormatError(f"split {sname!r}: {e}", file=path) from None
            for f in files:
                inside(src, f, allow_outside=allow_outside, file=path, what="shard file",
                       key=f"splits.{sname}.filepathTemplate")
        else:  # old dataset_info.json without shard lengths: list what is there
            pat = re.compile(re.escape(f"{name}-{sname}.{fmt}") + r"(-\d{5}-of-\d{5})?$")
            files = tuple(sorted(p.name for p in src.iterdir() if pat.match(p.name)))
        splits.append(SplitInfo(sname, files, lengths))
    return DatasetInfo(name=name, version=str(d.get("version", "")), file_format=fmt,
                       splits=tuple(splits), description=str(d.get("description", ""))[:2000])


_CLASSES = {"FeaturesDict": "dict", "Dataset": "dataset", "Tensor": "tensor", "Scalar": "tensor",
            "Image": "image", "Text": "text", "ClassLabel": "label"}


def parse_features(src: Path) -> list[Leaf]:
    """Read ``src/features.json`` into its leaves, in file order."""
    path = src / "features.json"
    tree = _load_json(path)
    leaves: list[Leaf] = []
    _walk(tree, "", False, leaves, path)
    keys = [lf.key for lf in leaves]
    if len(set(keys)) != len(keys):
        raise SourceFormatError("duplicate flattened keys", file=path)
    return leaves


def _walk(node: dict, key: str, in_steps: bool, out: list[Leaf], path: Path) -> None:
    cls = str(node.get("pythonClassName", ""))
    kind = _CLASSES.get(cls.rsplit(".", 1)[-1])
    where = key or "<root>"
    if kind is None:
        raise SourceFormatError(f"unsupported TFDS feature class {cls!r} (supported: "
                                f"{', '.join(sorted(_CLASSES))})", file=path, key=where)
    desc = str(node.get("description", ""))
    if kind == "dict":
        feats = node.get("featuresDict", {}).get("features")
        if not isinstance(feats, dict):
            raise SourceFormatError("FeaturesDict without featuresDict.features", file=path,
                                    key=where)
        for k, v in feats.items():
            _walk(v, f"{key}/{k}" if key else k, in_steps, out, path)
    elif kind == "dataset":
        if in_steps:
            raise SourceFormatError("a Dataset nested inside a Dataset is not supported",
                                    file=path, key=where)
        inner = node.get("sequence", {}).get("feature")
        if not isinstance(inner, dict):
            raise SourceFormatError("Dataset without sequence.feature", file=path, key=where)
        if key != "steps":
            raise SourceFormatError("only the RLDS 'steps' Dataset is supported", file=path,
                                    key=where)
        _walk(inner, key, True, out, path)
    elif kind == "text":
        out.append(Leaf(key, "text", "str", (), "none", in_steps, desc))
    elif kind == "label":
        out.append(Leaf(key, "tensor", "int64", (), "none", in_steps, desc))
    else:
        spec = node.get("image" if kind == "image" else "tensor")
        if not isinstance(spec, dict) or "dtype" not in spec:
            raise SourceFormatError(f"{cls.rsplit('.', 1)[-1]} without a "
                                    f"{'image' if kind == 'image' else 'tensor'} spec",
                                    file=path, key=where)
        dtype = str(spec["dtype"])
        if dtype not in _NUMERIC and dtype != "string":
            raise SourceFormatError(f"unsupported dtype {dtype!r}", file=path, key=where)
        try:
            shape = tuple(int(x) for x in spec.get("shape", {}).get("dimensions", []))
        except (TypeError, ValueError):
            raise SourceFormatError(f"bad shape {spec.get('shape')!r}", file=path,
                                    key=where) from None
        if kind == "image":
            fmt = str(spec.get("encodingFormat", "")).lower()
            if len(shape) != 3 or shape[0] < 0 or shape[1] < 0 or shape[2] not in (1, 3, 4):
                raise SourceFormatError(f"image shape {shape} is not a static (H, W, C) with "
                                        "C in 1, 3, 4", file=path, key=where)
            out.append(Leaf(key, "image", dtype, shape, fmt, in_steps, desc))
        elif dtype == "string":
            out.append(Leaf(key, "text", "str", shape, "none", in_steps, desc))
        else:
            enc = str(spec.get("encoding", "none")).lower() or "none"
            if enc not in ("none", "bytes", "zlib"):
                raise SourceFormatError(f"unsupported Tensor encoding {enc!r}", file=path,
                                        key=where)
            out.append(Leaf(key, "tensor", dtype, shape, enc, in_steps, desc))
