"""HDF5 robot logs -> canonical episodes: ALOHA/ACT, robomimic, or any layout via a mapping file.

All three layouts are read by one mapping-driven reader (:class:`Hdf5Source`); ALOHA and robomimic
are mappings built from the declarative tables below plus what the first file holds (its
cameras, its observation keys), with layout-specific planning (episode order, splits, language).

**ALOHA / ACT** (``layout="aloha"``): a folder of ``episode_<i>.hdf5`` (natural order), one
episode per file, 50 Hz. ``/observations/qpos|qvel|effort`` and ``/action`` are (T, 14) float32:
[left 6 joints, left gripper, right 6 joints, right gripper]; the grippers are normalised by
ACT's ``*_GRIPPER_POSITION_NORMALIZE_FN`` = (x - close) / (open - close), so 0 = closed and
1 = open. ``/observations/images/<cam>`` is uint8 (T, 480, 640, 3) as recorded (RGB), or, when the
root attribute ``compress`` is set, (T, padded_len) uint8 holding ``cv2.imencode('.jpg')`` bytes
zero-padded to a common length, with ``/compress_len`` (n_cams, T). cv2 encodes the RGB array as
if it were BGR, so a standard (RGB) decoder returns R and B swapped; this reader decodes with
channel order ``bgr`` (the same pixels ``cv2.imdecode`` returns), which is the array that was
recorded. ``compress_len``'s rows follow the recording config's camera order, which the file
does not record, so it is checked for shape only and the padded buffer is decoded whole (the
decoder stops at the JPEG end marker), as ACT's own loader does. Mobile ALOHA's ``/base_action``
(T, 2) becomes ``action.base``.

**robomimic** (``layout="robomimic"``): one file; ``data/demo_<N>`` in numeric order (demo_10
after demo_2); ``obs/<key>``: ``*_image`` -> ``observation.images.<cam>``, ``*_depth`` ->
``observation.depth.<cam>``, the proprio keys of :data:`ROBOMIMIC_STATE` -> ``observation.state``
(concatenated), any other low-dim key -> ``observation.<key>``; ``actions`` -> ``action`` (float64
in the file, stored float32), ``actions_abs`` -> ``action.abs``. ``mask/<filter>`` lists demo
names: a demo in ``mask/valid`` gets split ``validation``, else ``train``; every filter holding a
demo is kept in its metadata. The ``ep_meta`` attribute's ``lang`` (robocasa) becomes a segment
over the whole demo. fps is ``env_args.env_kwargs.control_freq`` (robosuite's default 20 when
absent). The gripper convention is robosuite's (-1 = open, +1 = closed on the last action
dimension) when ``env_args.type`` is robosuite (1), else ``unknown``.

**mapping** (``layout="mapping"``): a YAML mapping file (:mod:`vladata.sources.mapping`) names the
episode files/groups and which key becomes which feature.

Errors name the file, the episode (file or demo) and the key.
"""

from __future__ import annotations

import glob
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from vladata.episode import (EncodedFrames, EpisodeInfo, FeatureSpec, Segment, cast_exact,
                             segments_from_runs)
from vladata.errors import SourceFormatError
from vladata.images import decode_image, image_format
from vladata.sources.boundary import IMAGE_ERRORS
from vladata.sources.hdf5_files import (dataset_at, find_groups, natural_key, open_file,
                                        outside_references, str_keys)
from vladata.sources.hdf5_layouts import (ALOHA_DECODE, EpisodeRef, aloha_camera_encoding,
                                          aloha_mapping, check_compress_len, robomimic_mapping)
from vladata.sources.mapping import EpisodesMap, FeatureMap, Mapping, gripper_facts, load_mapping
from vladata.sources.paths import inside
from vladata.store.layout import STATE

LAYOUTS = ("aloha", "robomimic", "mapping")

def _text(v: object, file: object, episode: object, key: str) -> str:
    """An HDF5 string value (bytes or str) as str; bytes that are not UTF-8 are refused."""
    try:
        return v.decode() if isinstance(v, bytes) else str(v)
    except UnicodeDecodeError as e:
        raise SourceFormatError(f"text is not UTF-8 ({e})", file=file, episode=episode,
                                key=key) from None


@dataclass
class Hdf5Source:
    """HDF5 logs of one layout (``aloha``, ``robomimic`` or ``mapping``); see the module docstring.

    ``path`` is a folder of episode files or one file; ``mapping_file`` is required for
    ``layout="mapping"``; ``instruction`` labels every episode that has no language of its own.
    """

    path: str
    layout: str = "mapping"
    mapping_file: str | None = None
    instruction: str | None = None
    fps: float | None = None
    name: str = ""
    _mapping: Mapping | None = field(default=None, repr=False)
    _refs: list[EpisodeRef] | None = field(default=None, repr=False)
    _plan: list[EpisodeInfo] | None = field(default=None, repr=False)
    _features: dict[str, FeatureSpec] | None = field(default=None, repr=False)
    _facts: dict = field(default_factory=dict, repr=False)  # layout facts for describe()
    _shapes: dict = field(default_factory=dict, repr=False)  # (feature, key) -> frame shape
    allow_outside: bool = False  # read external links / storage that leave the dataset folder
    _checked: set = field(default_factory=set, repr=False)  # files whose references were checked

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        if self.layout == "mapping":
            if self.mapping_file is None:
                raise ValueError("layout 'mapping' needs a mapping file (--map mapping.yaml)")
            self._mapping = load_mapping(self.mapping_file)
            if self._mapping.format != "hdf5":
                raise SourceFormatError(f"mapping is for format {self._mapping.format!r}, not hdf5",
                                        file=self.mapping_file)
        if not Path(self.path).exists():
            raise SourceFormatError("path does not exist", file=self.path)
        mapping = self.mapping()
        self.name = self.name or (self.layout if self.layout != "mapping" else mapping.name)
        self.fps = float(self.fps or mapping.fps)

    # -- files ---------------------------------------------------------------------------------
    def root(self) -> Path:
        """The dataset: the folder given, or the folder of the one file given."""
        p = Path(self.path)
        return p if p.is_dir() else p.parent

    @contextmanager
    def _open(self, path: str | Path, episode: object = None) -> Iterator[h5py.File]:
        """:func:`open_file`, refusing (once per file) a file whose external links, external
        storage or virtual sources lie outside the dataset, unless ``allow_outside``."""
        with open_file(Path(path), episode) as f:
            if not self.allow_outside and str(path) not in self._checked:
                bad = outside_references(f, self.root())
                if bad:
                    name, target = bad[0]
                    raise SourceFormatError(
                        f"refers to {target!r}, outside the dataset {str(self.root())!r}; it is "
                        "not read unless you pass --allow-outside", file=path, episode=episode,
                        key=name)
                self._checked.add(str(path))
            yield f

    # -- the mapping and the episodes ---------------------------------------------------------
    def mapping(self) -> Mapping:
        if self._mapping is None:
            refs = self.episode_refs()
            if not refs:
                raise SourceFormatError(f"no {self.layout} episodes found", file=self.path)
            with self._open(refs[0].file, refs[0].id) as f:
                build = aloha_mapping if self.layout == "aloha" else robomimic_mapping
                self._mapping = build(f, refs[0], self._facts)
        return self._mapping

    def episode_refs(self) -> list[EpisodeRef]:
        if self._refs is None:
            root = Path(self.path)
            if self.layout == "robomimic":
                if not root.is_file():
                    raise SourceFormatError("robomimic datasets are one .hdf5 file", file=root)
                with self._open(root) as f:
                    if not isinstance(f.get("data"), h5py.Group):
                        raise SourceFormatError("group missing", file=root, key="data")
                    demos = [k for k in str_keys(f["data"], root) if re.fullmatch(r"demo_\d+", k)]
                demos.sort(key=natural_key)
                self._refs = [EpisodeRef(str(root), f"data/{d}") for d in demos]
            else:
                eps = (EpisodesMap("episode_*.hdf5") if self.layout == "aloha"
                       else self._mapping.episodes)
                files = [root] if root.is_file() else sorted(
                    (p for p in self._glob(root, eps.files) if p.is_file()),
                    key=lambda p: natural_key(p.name))
                refs = []
                for p in files:
                    if eps.group is None:
                        refs.append(EpisodeRef(str(p), ""))
                    else:
                        with self._open(p) as f:
                            refs += [EpisodeRef(str(p), g) for g in find_groups(f, eps.group, p)]
                self._refs = refs
        return self._refs

    def _glob(self, root: Path, pattern: str) -> list[Path]:
        """Files matching the mapping's ``episodes.files``: inside ``root`` unless allowed."""
        where = dict(file=self.mapping_file, key="episodes.files")
        if not self.allow_outside:
            inside(root, pattern, file=self.mapping_file, key="episodes.files", what="glob")
            files = list(root.glob(pattern))
        else:  # any pattern, absolute or with .. (pathlib's glob takes neither)
            files = [Path(p) for p in glob.glob(os.path.join(root, pattern))]
        for p in files:
            if not self.allow_outside:
                inside(root, p, what="episode file", **where)
        return files

    # -- planning ------------------------------------------------------------------------------
    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            feats, m = self.features(), self.mapping()
            masks = self._robomimic_masks() if self.layout == "robomimic" else {}
            plan = []
            for ref in self.episode_refs():
                with self._open(ref.file, ref.id) as f:
                    n = self._check_episode(f, ref, feats)
                    info = EpisodeInfo(length=n, source_id=ref.id, split=m.split,
                                       metadata={"file": Path(ref.file).name, "group": ref.group})
                    info.segments = self._language(f, ref, n)
                    if self.layout == "robomimic":
                        self._robomimic_episode(f, ref, info, masks)
                    if self.layout == "aloha":
                        info.metadata["compress"] = self._compressed(f, ref)
                plan.append(info)
            if self.layout == "aloha":
                kinds = {info.metadata["compress"] for info in plan}
                self._facts["compress"] = kinds.pop() if len(kinds) == 1 else "per file"
                if self._facts["compress"] == "per file":
                    self._facts["image_decode"] = (
                        f"per file (episode metadata 'compress'): {ALOHA_DECODE[True]}; or "
                        f"{ALOHA_DECODE[False]}")
            self._plan = plan
        return self._plan

    def _check_episode(self, f: h5py.File, ref: EpisodeRef, feats: dict[str, FeatureSpec]) -> int:
        """Every mapped key exists with a common length and the first episode's frame shape."""
        n = None
        for fm in self.mapping().features:
            for part in fm.parts:
                ds = dataset_at(f, ref.group, part.key, Path(ref.file), ref.id)
                where = dict(file=ref.file, episode=ref.id, key=ds.name.lstrip("/"))
                if ds.ndim == 0:
                    raise SourceFormatError("expected a per-frame dataset (T, ...), got a scalar",
                                            **where)
                if n is None:
                    n = int(ds.shape[0])
                elif ds.shape[0] != n:
                    raise SourceFormatError(f"has {ds.shape[0]} frames, other keys have {n}",
                                            **where)
                if fm.kind == "image" and self._file_map(f, ref, fm).encoding != "raw":
                    want = self._shapes.setdefault((fm.name, part.key, "encoded"), ds.shape[1:])
                    ok = ds.ndim == 1 + len(want)  # buffers: (T,) vlen or (T, padded_len)
                elif fm.kind == "image":
                    want = feats[fm.name].shape
                    ok = ds.shape[1:] == want
                else:
                    want = self._shapes.setdefault((fm.name, part.key), ds.shape[1:])
                    ok = ds.shape[1:] == want
                if not ok:
                    raise SourceFormatError(f"frame shape {ds.shape[1:]}, expected {want} as in "
                                            "the first episode", **where)
        if self.layout == "aloha" and self._compressed(f, ref):
            check_compress_len(f, ref, n, len(self._facts["cameras"]))
        return int(n or 0)

    def _file_map(self, f: h5py.File, ref: EpisodeRef, fm: FeatureMap) -> FeatureMap:
        """``fm`` as this file stores it: an ALOHA camera's encoding is the file's own."""
        if self.layout != "aloha" or fm.kind != "image":
            return fm
        enc, order = aloha_camera_encoding(dataset_at(f, ref.group, fm.parts[0].key,
                                                    Path(ref.file), ref.id))
        return replace(fm, encoding=enc, channel_order=order)

    def _compressed(self, f: h5py.File, ref: EpisodeRef) -> bool:
        """Whether this ALOHA file holds JPEG-compressed cameras."""
        return any(self._file_map(f, ref, fm).encoding != "raw"
                   for fm in self.mapping().features if fm.kind == "image")

    def _language(self, f: h5py.File, ref: EpisodeRef, n: int) -> list[Segment]:
        lang = self.mapping().language
        segs: list[Segment] = []
        if lang is not None and lang.attr is not None:
            node = f[ref.group] if ref.group else f
            v = node.attrs.get(lang.attr)
            if v is None:
                raise SourceFormatError("language attribute missing", file=ref.file, episode=ref.id,
                                        key=f"{ref.group}@{lang.attr}")
            v = _text(v, ref.file, ref.id, f"{ref.group}@{lang.attr}")
            segs = [Segment(0, n - 1, v, lang.task or v)] if v and n else []
        elif lang is not None and lang.key is not None:
            ds = dataset_at(f, ref.group, lang.key, Path(ref.file), ref.id)
            vals = [_text(v, ref.file, ref.id, lang.key) for v in np.atleast_1d(ds[()])]
            if len(vals) != n:
                raise SourceFormatError(f"{len(vals)} language entries for {n} frames",
                                        file=ref.file, episode=ref.id, key=lang.key)
            segs = segments_from_runs(vals, task=lang.task)
        elif lang is not None and lang.instruction:
            segs = [Segment(0, n - 1, lang.instruction, lang.task or lang.instruction)] if n else []
        if not segs and self.instruction and n:
            segs = [Segment(0, n - 1, self.instruction, self.instruction)]
        return segs

    def _robomimic_masks(self) -> dict[str, set[str]]:
        with self._open(self.path) as f:
            g = f.get("mask")
            if not isinstance(g, h5py.Group):
                return {}
            return {k: {_text(v, self.path, None, f"mask/{k}") for v in np.atleast_1d(g[k][()])}
                    for k in str_keys(g, self.path) if isinstance(g[k], h5py.Dataset)}

    def _robomimic_episode(self, f, ref: EpisodeRef, info: EpisodeInfo, masks) -> None:
        demo = ref.group.split("/")[-1]
        filters = sorted(k for k, names in masks.items() if demo in names)
        info.split = "validation" if demo in masks.get("valid", ()) else "train"
        info.metadata.update(demo=demo, filters=filters)
        g = f[ref.group]
        ns = g.attrs.get("num_samples")
        if ns is not None and int(ns) != info.length:
            raise SourceFormatError(f"attribute num_samples = {int(ns)} but actions has "
                                    f"{info.length} rows", file=ref.file, episode=ref.id,
                                    key=f"{ref.group}@num_samples")
        meta = g.attrs.get("ep_meta")
        if meta is not None:
            try:
                lang = json.loads(meta).get("lang")
            except (ValueError, AttributeError):
                raise SourceFormatError("ep_meta is not a JSON object", file=ref.file,
                                        episode=ref.id, key=f"{ref.group}@ep_meta") from None
            if lang:
                info.segments = [Segment(0, info.length - 1, str(lang), str(lang))]

    # -- features and reading ------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        if self._features is None:
            ref = self.episode_refs()[0]
            feats = {}
            with self._open(ref.file, ref.id) as f:
                for fm in self.mapping().features:
                    first = self._read_feature(f, ref, fm, 0, 1)
                    dss = [dataset_at(f, ref.group, p.key, Path(ref.file), ref.id)
                           for p in fm.parts]
                    src = str(dss[0].dtype) if fm.kind != "image" else "uint8"
                    names = fm.names
                    if names is not None and fm.kind == "lowdim" and len(names) != first.shape[1]:
                        raise SourceFormatError(f"{len(names)} names for {first.shape[1]} values",
                                                file=ref.file, episode=ref.id, key=fm.name)
                    feats[fm.name] = FeatureSpec(
                        dtype=first.dtype, shape=first.shape[1:], kind=fm.kind, names=names,
                        source_dtype=src if src != first.dtype.name else None,
                        description=" + ".join(p.key for p in fm.parts))
            self._features = feats
        return self._features

    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        return self._read(i, lo, hi, encoded=False)

    def encoded_images(self) -> dict[str, str]:
        """JPEG cameras (as the first episode's file stores them) and their channel order."""
        ref = self.episode_refs()[0]
        with self._open(ref.file, ref.id) as f:
            maps = [self._file_map(f, ref, fm) for fm in self.mapping().features
                    if fm.kind == "image"]
        return {fm.name: fm.channel_order for fm in maps if fm.encoding == "jpeg"}

    def read_encoded(self, i: int, lo: int = 0, hi: int | None = None) -> dict:
        """As :meth:`read`, but JPEG cameras come as their bytes (the cell's zero padding after
        the JPEG's end marker dropped): :class:`~vladata.episode.EncodedFrames`."""
        return self._read(i, lo, hi, encoded=True)

    def _read(self, i: int, lo: int, hi: int | None, *, encoded: bool) -> dict:
        ref, info = self.episode_refs()[i], self.plan()[i]
        hi = info.length if hi is None else hi
        with self._open(ref.file, ref.id) as f:
            return {fm.name: self._read_feature(f, ref, fm, lo, hi, encoded=encoded)
                    for fm in self.mapping().features}

    def _read_feature(self, f, ref: EpisodeRef, fm: FeatureMap, lo: int, hi: int, *,
                      encoded: bool = False) -> np.ndarray:
        fm = self._file_map(f, ref, fm)
        arrays = []
        for part in fm.parts:
            ds = dataset_at(f, ref.group, part.key, Path(ref.file), ref.id)
            where = dict(file=ref.file, episode=ref.id, key=ds.name.lstrip("/"))
            try:
                a = ds[lo:hi]
            except (OSError, ValueError, TypeError) as e:
                raise SourceFormatError(f"unreadable data ({e})", **where) from None
            if fm.kind == "image" and encoded and fm.encoding == "jpeg" and a.ndim == 2:
                return EncodedFrames([b.tobytes().rstrip(b"\0") for b in a],
                                     self.features()[fm.name].shape, first=lo,
                                     channel_order=fm.channel_order, **where)
            if fm.kind == "image":
                return _image_frames(a, fm, lo, where)
            if fm.kind == "depth":
                a = a[..., 0] if a.ndim == 4 and a.shape[-1] == 1 else a
                if a.ndim != 3:
                    raise SourceFormatError(f"expected depth (T, H, W), got {a.shape}", **where)
                return cast_exact(a, np.float32, first=lo, **where)
            if a.dtype.kind not in "fiub":
                raise SourceFormatError(f"expected numbers, got dtype {a.dtype}", **where)
            a = a.reshape(len(a), -1)
            if part.index is not None:
                if max(part.index) >= a.shape[1]:
                    raise SourceFormatError(f"index {max(part.index)} out of range for "
                                            f"{a.shape[1]} values", **where)
                a = a[:, list(part.index)]
            arrays.append(cast_exact(a, fm.dtype, first=lo, **where))
        return np.concatenate(arrays, axis=1)

    def describe(self) -> dict:
        m = self.mapping()
        feats = self.features()
        d = {"layout": self.layout, "path": str(Path(self.path).resolve()), "fps": self.fps,
             **gripper_facts(m.gripper, self._facts.get("gripper_meaning")),
             "action_space": m.action_space, "robot": m.robot,
             "cameras": [k.split(".", 2)[2] for k, s in feats.items() if s.kind == "image"],
             "action_names": list(feats["action"].names or ()),
             "state_names": list(feats[STATE].names or ())
             if STATE in feats else [],
             "mapping": m.to_dict()}
        d.update({k: v for k, v in self._facts.items() if k not in ("cameras", "gripper_meaning")})
        return d


def _image_frames(a: np.ndarray, fm: FeatureMap, lo: int, where: dict) -> np.ndarray:
    """(T, H, W, 3) raw or (T, L) encoded buffers -> uint8 (T, H, W, 3) RGB."""
    if fm.encoding == "raw":
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise SourceFormatError(f"expected uint8 (T, H, W, 3), got {a.dtype} {a.shape}",
                                    **where)
        return np.ascontiguousarray(a[..., ::-1]) if fm.channel_order == "bgr" else a
    out = []
    for t, buf in enumerate(a):
        data = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
        if image_format(data) != fm.encoding:
            raise SourceFormatError(f"frame is not a {fm.encoding} image (magic bytes "
                                    f"{data[:4].hex()})", frame=lo + t, **where)
        try:
            img = decode_image(data, fm.encoding, fm.channel_order)
        except IMAGE_ERRORS as e:
            raise SourceFormatError(f"corrupt {fm.encoding} image ({e})", frame=lo + t,
                                    **where) from None
        if out and img.shape != out[0].shape:
            raise SourceFormatError(f"image shape {img.shape} differs from {out[0].shape}",
                                    frame=lo + t, **where)
        out.append(img)
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
