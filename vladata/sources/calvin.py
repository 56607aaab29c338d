"""CALVIN play data -> canonical episodes.

A CALVIN split root (``task_D_D/``, ``calvin_debug_dataset/``, ...) holds ``training/`` and
``validation/``, each with one ``episode_%07d.npz`` per 30 Hz frame (global, non-contiguous frame
ids), ``ep_start_end_ids.npy`` (teleop segments, both ends inclusive), ``scene_info.npy``
(training only, pickled), ``statistics.yaml`` and ``lang_annotations/auto_lang_ann.npy`` (pickled;
language on ~64-frame windows that overlap and need not line up with the segments).

Mapping to the canonical store:

- each row of ``ep_start_end_ids`` is an episode (training first, then validation), ``split`` is
  ``train`` / ``validation``; frames are stored once;
- each language annotation becomes a segment of the episode holding its start frame, with the
  frame offsets inside that episode; an annotation that runs past its episode's last frame is
  clipped there and one outside every episode is skipped -- both counted in the summary;
- low-dim arrays (float64 in the files) are stored as float32 (recorded as ``source_dtype``).

Pickles are read with :mod:`vladata.safe_pickle`; nothing in the dataset is executed.
"""

from __future__ import annotations

import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vladata.episode import EpisodeInfo, FeatureSpec, Segment, cast_exact
from vladata.errors import SourceFormatError
from vladata.safe_pickle import load_pickled_npy
from vladata.sources.npz import read_npz
from vladata.store.layout import IMAGE_PREFIX, STATE

SPLITS = {"training": "train", "validation": "validation"}
FPS = 30.0

ROBOT_OBS_NAMES = ("tcp_pos_x", "tcp_pos_y", "tcp_pos_z", "tcp_euler_x", "tcp_euler_y",
                   "tcp_euler_z", "gripper_width", *(f"joint_{i}" for i in range(1, 8)),
                   "gripper_action")
SCENE_OBS_NAMES = ("sliding_door", "drawer", "button", "switch", "lightbulb", "green_light",
                   *(f"{block}_block_{c}" for block in ("red", "blue", "pink")
                     for c in ("x", "y", "z", "euler_x", "euler_y", "euler_z")))
REL_ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ABS_ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


@dataclass(frozen=True)
class Key:
    """One npz key: the canonical feature it becomes and what a frame of it must look like."""

    npz: str
    feature: str
    kind: str
    dtype: str
    shape: tuple[int, ...] | None  # None: image size read from the data (checked for all frames)
    channels: int | None = None
    names: tuple[str, ...] | None = None
    default: bool = True


KEYS = (
    Key("rgb_static", IMAGE_PREFIX + "rgb_static", "image", "uint8", None, 3),
    Key("rgb_gripper", IMAGE_PREFIX + "rgb_gripper", "image", "uint8", None, 3),
    Key("robot_obs", STATE, "lowdim", "float32", (15,), names=ROBOT_OBS_NAMES),
    Key("scene_obs", "observation.scene_state", "lowdim", "float32", (24,), names=SCENE_OBS_NAMES),
    Key("rel_actions", "action", "lowdim", "float32", (7,), names=REL_ACTION_NAMES),
    Key("actions", "action.absolute", "lowdim", "float32", (7,), names=ABS_ACTION_NAMES),
    Key("depth_static", "observation.depth.depth_static", "depth", "float32", None, default=False),
    Key("depth_gripper", "observation.depth.depth_gripper", "depth", "float32", None, default=False),
    Key("rgb_tactile", IMAGE_PREFIX + "rgb_tactile", "image", "uint8", None, 6, default=False),
    Key("depth_tactile", "observation.depth.depth_tactile", "depth", "float32", None, 2,
        default=False),
)
KEYS_BY_NPZ = {k.npz: k for k in KEYS}
DEFAULT_KEYS = tuple(k.npz for k in KEYS if k.default)


def frame_path(split_dir: Path, frame_id: int) -> Path:
    return split_dir / f"episode_{frame_id:07d}.npz"


def _as_ranges(arr: np.ndarray, file: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise SourceFormatError(f"expected an integer array of shape (n, 2), got {arr.dtype} "
                                f"{arr.shape}", file=file)
    if np.any(arr[:, 1] < arr[:, 0]):
        raise SourceFormatError("a segment ends before it starts", file=file)
    return arr.astype(np.int64)


@dataclass
class CalvinSource:
    """Reads a CALVIN split root; see the module docstring for the mapping."""

    root: str
    keys: tuple[str, ...] = DEFAULT_KEYS
    splits: tuple[str, ...] = ("training", "validation")
    name: str = "calvin"
    fps: float = FPS
    _plan: list[EpisodeInfo] | None = field(default=None, repr=False)
    _features: dict[str, FeatureSpec] | None = field(default=None, repr=False)
    _skipped: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self):
        unknown = [k for k in self.keys if k not in KEYS_BY_NPZ]
        if unknown:
            raise ValueError(f"unknown CALVIN keys {unknown}; known: {sorted(KEYS_BY_NPZ)}")
        root = Path(self.root)
        if not root.is_dir():
            raise SourceFormatError("CALVIN root is not a directory", file=root)
        present = tuple(s for s in self.splits if (root / s).is_dir())
        if not present:
            raise SourceFormatError(f"expected a CALVIN split root with {' and/or '.join(self.splits)}"
                                    " folders", file=root)
        self.splits = present

    # -- planning ------------------------------------------------------------------------------
    def plan(self) -> list[EpisodeInfo]:
        if self._plan is None:
            self._skipped = []
            self._plan = [ep for split in self.splits for ep in self._plan_split(split)]
        return self._plan

    def _plan_split(self, split: str) -> list[EpisodeInfo]:
        d = Path(self.root) / split
        ids_file = d / "ep_start_end_ids.npy"
        try:
            ranges = _as_ranges(np.load(ids_file, allow_pickle=False), ids_file)
        except FileNotFoundError:
            raise SourceFormatError("missing ep_start_end_ids.npy", file=ids_file) from None
        except (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError) as e:
            if isinstance(e, SourceFormatError):  # numpy's header parser raises the others
                raise
            raise SourceFormatError(f"unreadable ({type(e).__name__}: {e})",
                                    file=ids_file) from None
        ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
        for s, e in ranges:  # both ends must exist (a damaged id must not plan 10^12 frames)
            for f in (s, e):
                if f < 0 or not frame_path(d, int(f)).is_file():
                    raise SourceFormatError(f"frame file missing for frame {f}, which {ids_file}"
                                            " lists", file=frame_path(d, int(f)),
                                            episode=f"{split}/{s}-{e}")
        scenes = self._scene_info(d)
        episodes = [EpisodeInfo(length=int(e - s + 1), source_id=f"{split}/{s}-{e}",
                                split=SPLITS.get(split, split),
                                metadata={"frame_ids": [int(s), int(e)],
                                          "scene": _scene_of(scenes, s)})
                    for s, e in ranges]
        for seg_ep, seg in self._annotations(d, ranges):
            episodes[seg_ep].segments.append(seg)
        for ep in episodes:
            ep.segments.sort(key=lambda g: (g.start, g.end))
        return episodes

    def _scene_info(self, d: Path) -> dict:
        p = d / "scene_info.npy"
        if not p.exists():
            return {}
        info = load_pickled_npy(p)
        if not isinstance(info, dict):
            raise SourceFormatError(f"expected a pickled dict, got {type(info).__name__}", file=p)
        try:
            return {str(k): (int(v[0]), int(v[1])) for k, v in info.items()}
        except (TypeError, ValueError, IndexError, KeyError):
            raise SourceFormatError("expected {scene: (first frame, last frame)}", file=p) from None

    def _annotations(self, d: Path, ranges: np.ndarray):
        p = d / "lang_annotations" / "auto_lang_ann.npy"
        if not p.exists():
            self._skipped.append(f"{p}: no language annotations")
            return
        ann = load_pickled_npy(p)
        try:
            lang, idx = ann["language"], ann["info"]["indx"]
            texts, tasks = lang["ann"], lang["task"]
            emb = cast_exact(lang["emb"], np.float32, file=p, key="language.emb")
            idx = [(int(s), int(e)) for s, e in idx]
            n = len(idx)
            if not (len(texts) == len(tasks) == len(emb) == n):
                raise SourceFormatError(f"annotation lists disagree in length: indx {n}, ann "
                                        f"{len(texts)}, task {len(tasks)}, emb {len(emb)}", file=p)
            emb = emb.reshape(n, -1)  # (N, 1, 384) -> (N, 384)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, SourceFormatError):
                raise
            raise SourceFormatError(f"expected {{'language': {{'ann','task','emb'}}, 'info': "
                                    f"{{'indx': [(start, end), ...]}}}} ({type(e).__name__}: {e})",
                                    file=p) from None
        if n == 0:
            return
        starts = ranges[:, 0]
        for j, (s, e) in enumerate(idx):
            if e < s:
                raise SourceFormatError(f"annotation {j} ends at frame {e}, before it starts at "
                                        f"frame {s}", file=p, key="info.indx")
            k = int(np.searchsorted(starts, s, side="right")) - 1
            if k < 0 or s > ranges[k, 1]:
                self._skipped.append(f"{p}: annotation {j} ({s}-{e}) lies outside every episode")
                continue
            if e > ranges[k, 1]:
                self._skipped.append(f"{p}: annotation {j} ({s}-{e}) clipped at its episode's "
                                     f"last frame {ranges[k, 1]}")
                e = int(ranges[k, 1])
            yield k, Segment(start=s - int(starts[k]), end=e - int(starts[k]),
                             instruction=str(texts[j]), task=str(tasks[j]), embedding=emb[j])

    def skipped(self) -> list[str]:
        self.plan()
        return list(self._skipped)

    # -- features ------------------------------------------------------------------------------
    def features(self) -> dict[str, FeatureSpec]:
        if self._features is None:
            first = self._first_frame()
            feats = {}
            for k in (KEYS_BY_NPZ[n] for n in self.keys):
                if k.npz not in first:
                    raise SourceFormatError("key missing from the first frame", key=k.npz,
                                            file=self._first_frame_path())
                shape = k.shape or tuple(first[k.npz].shape)
                feats[k.feature] = FeatureSpec(dtype=k.dtype, shape=shape, kind=k.kind,
                                               names=k.names, source_dtype=str(first[k.npz].dtype),
                                               description=f"CALVIN {k.npz}")
            self._features = feats
        return self._features

    def _first_frame_path(self) -> Path:
        plan = self.plan()
        if not plan:
            raise SourceFormatError("no episodes in ep_start_end_ids.npy", file=self.root)
        split, ids = plan[0].source_id.split("/")[0], plan[0].metadata["frame_ids"]
        return frame_path(Path(self.root) / split, ids[0])

    def _first_frame(self) -> dict[str, np.ndarray]:
        p = self._first_frame_path()
        return _load_frame(p, self.keys, None, self.plan()[0].source_id)

    # -- reading -------------------------------------------------------------------------------
    def read(self, i: int, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        info = self.plan()[i]
        hi = info.length if hi is None else hi
        split = info.source_id.split("/")[0]
        d = Path(self.root) / split
        first_id = info.metadata["frame_ids"][0]
        feats = self.features()
        out = {name: np.empty((hi - lo, *spec.shape), spec.dtype) for name, spec in feats.items()}
        expected = {k: feats[KEYS_BY_NPZ[k].feature].shape for k in self.keys}
        # per key, the dtypes stored as they come: the store's own, and float64 -> float32 (its
        # only failure, an overflow to inf, is looked for once per call below)
        direct = {k: {np.dtype(feats[KEYS_BY_NPZ[k].feature].dtype)} for k in self.keys}
        for k in self.keys:
            spec = feats[KEYS_BY_NPZ[k].feature]
            if spec.dtype == "float32" and spec.source_dtype == "float64":
                direct[k].add(np.dtype("float64"))
        with np.errstate(over="ignore"):
            for t in range(lo, hi):
                path = frame_path(d, first_id + t)
                frame = _load_frame(path, self.keys, expected, info.source_id)
                for k in self.keys:
                    name, v = KEYS_BY_NPZ[k].feature, frame[k]
                    out[name][t - lo] = v if v.dtype in direct[k] else cast_exact(
                        v, feats[name].dtype, file=path, episode=info.source_id, key=k, frame=t)
        for k in self.keys:  # an inf: was it one in the file (kept) or an overflow (refused)?
            arr = out[KEYS_BY_NPZ[k].feature]
            if arr.dtype.kind == "f" and len(direct[k]) > 1 and np.isinf(arr).any():
                for t in np.flatnonzero(np.isinf(arr.reshape(len(arr), -1)).any(axis=1)):
                    path = frame_path(d, first_id + lo + int(t))
                    cast_exact(_load_frame(path, [k], None, info.source_id)[k], arr.dtype,
                               file=path, episode=info.source_id, key=k, frame=lo + int(t))
        return out

    def describe(self) -> dict:
        d = {"dataset": "calvin", "root": str(Path(self.root).resolve()), "splits": list(self.splits),
             "keys": list(self.keys),
             "action": "rel_actions: clipped TCP deltas scaled to [-1,1] (xyz x50, euler x20)",
             "action.absolute": "actions: absolute target TCP pose (xyz m, euler xyz rad, gripper)",
             "gripper": "-1/1", "gripper_meaning": "-1 = close, +1 = open"}
        stats_file = Path(self.root) / "training" / "statistics.yaml"
        if stats_file.exists():
            try:
                d["statistics_yaml"] = yaml.safe_load(stats_file.read_text())
            except yaml.YAMLError as e:
                raise SourceFormatError(f"invalid YAML ({e})", file=stats_file) from None
        return d


def _scene_of(scenes: dict, frame_id: int) -> str | None:
    for name, (a, b) in scenes.items():
        if a <= frame_id <= b:
            return name
    return None


def _load_frame(path: Path, keys, expected: dict | None, episode: str) -> dict[str, np.ndarray]:
    """Read ``keys`` of one CALVIN frame file, checking presence and (if given) shapes."""
    try:
        out = read_npz(path, keys)
    except FileNotFoundError:
        raise SourceFormatError("frame file missing: the episode's frames are incomplete",
                                file=path, episode=episode) from None
    except KeyError as e:
        raise SourceFormatError("key missing from the frame file", file=path, episode=episode,
                                key=e.args[0]) from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise SourceFormatError(f"unreadable frame file, truncated or corrupt ({type(e).__name__}:"
                                f" {e})", file=path, episode=episode) from None
    if expected is not None:
        for k in keys:
            if tuple(out[k].shape) != tuple(expected[k]):
                raise SourceFormatError(f"expected shape {tuple(expected[k])}, got "
                                        f"{tuple(out[k].shape)}", file=path, episode=episode, key=k)
    return out

