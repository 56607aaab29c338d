"""The ALOHA/ACT and robomimic HDF5 layouts as mappings: declarative tables + the builders.

:class:`vladata.sources.hdf5.Hdf5Source` reads every layout through one mapping-driven reader;
this module holds what is specific to ALOHA and robomimic (see that module's docstring for the
formats): the key tables and the functions that turn a layout's first file into a
:class:`~vladata.sources.mapping.Mapping`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py

from vladata.errors import SourceFormatError
from vladata.sources.hdf5_files import dataset_in, str_keys
from vladata.sources.mapping import EpisodesMap, FeatureMap, Mapping, Part
from vladata.store.layout import IMAGE_PREFIX, STATE


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: an HDF5 ``file`` and the ``group`` in it ("" = the file's root)."""

    file: str
    group: str

    @property
    def id(self) -> str:
        return f"{Path(self.file).name}:{self.group}" if self.group else Path(self.file).name


# -- ALOHA / ACT ---------------------------------------------------------------------------------
ALOHA_FPS = 50.0
ALOHA_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
                "gripper")
ALOHA_NAMES = tuple(f"{side}_{j}" for side in ("left", "right") for j in ALOHA_JOINTS)
ALOHA_KEYS = (  # (hdf5 key, feature, required, names)
    ("observations/qpos", STATE, True, ALOHA_NAMES),
    ("observations/qvel", "observation.velocity", False, ALOHA_NAMES),
    ("observations/effort", "observation.effort", False, ALOHA_NAMES),
    ("action", "action", True, ALOHA_NAMES),
    ("base_action", "action.base", False, ("linear_vel", "angular_vel")),
)
ALOHA_IMAGES = "observations/images"
ALOHA_DECODE = {True: "JPEG (cv2.imencode of RGB arrays) decoded with channel order bgr, "
                      "returning the recorded RGB array",
                False: "raw uint8 arrays as recorded (RGB)"}
ALOHA_GRIPPER = ("entries 6 (left) and 13 (right) of state and action: 0 = closed, 1 = open "
                 "(ACT's (x - close) / (open - close) normalisation)")

# -- robomimic -----------------------------------------------------------------------------------
ROBOMIMIC_FPS = 20.0  # robosuite's default control_freq, used when env_args does not say
ROBOMIMIC_STATE = {  # proprio keys concatenated into observation.state, in this order
    "robot0_eef_pos": ("eef_x", "eef_y", "eef_z"),
    "robot0_eef_quat": ("eef_qx", "eef_qy", "eef_qz", "eef_qw"),
    "robot0_gripper_qpos": ("gripper_qpos_left", "gripper_qpos_right"),
}
ROBOMIMIC_ACTIONS = (("actions", "action"), ("actions_abs", "action.abs"))
ROBOSUITE_TYPE = 1
ROBOSUITE_GRIPPER = "1/-1"  # <closed>/<open> of the last action dimension (robosuite's gripper)
ROBOSUITE_OSC_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")


def check_compress_len(f: h5py.File, ref: EpisodeRef, n: int, n_cams: int) -> None:
    cl = f.get("compress_len")
    if cl is not None and tuple(cl.shape) != (n_cams, n):
        raise SourceFormatError(f"expected shape ({n_cams}, {n}) (cameras, frames), got "
                                f"{tuple(cl.shape)}", file=ref.file, episode=ref.id,
                                key="compress_len")


def aloha_camera_encoding(ds: h5py.Dataset) -> tuple[str, str]:
    """(encoding, channel order) of one file's camera dataset: (T, padded_len) holds cv2 JPEG
    buffers (``compress`` may be missing in older files), (T, H, W, 3) raw RGB. Recordings
    made with and without ``--compress`` can share a folder, so this is asked per file."""
    return ("jpeg", "bgr") if ds.ndim == 2 else ("raw", "rgb")


def aloha_mapping(f: h5py.File, ref: EpisodeRef, facts: dict) -> Mapping:
    """ALOHA_KEYS present in the first episode plus its cameras (raw or JPEG)."""
    where = dict(file=ref.file, episode=ref.id)
    images = f.get(ALOHA_IMAGES)
    if not isinstance(images, h5py.Group) or not str_keys(images, **where):
        raise SourceFormatError("no camera datasets", key=ALOHA_IMAGES, **where)
    compress = bool(f.attrs.get("compress", False))
    cams = sorted(str_keys(images, **where))
    feats = []
    for cam in cams:
        ds = dataset_in(images, cam, **where)
        if ds.ndim not in (2, 4):
            raise SourceFormatError(f"expected (T, H, W, 3) or (T, padded_len) images, got "
                                    f"{ds.shape}", key=ds.name, **where)
        enc, order = aloha_camera_encoding(ds)  # of this file; each file says its own
        feats.append(FeatureMap(IMAGE_PREFIX + cam, (Part(key=f"{ALOHA_IMAGES}/{cam}"),),
                                dtype="uint8", encoding=enc, channel_order=order))
    for key, name, required, names in ALOHA_KEYS:
        if key in f:
            fits = dataset_in(f, key, **where).shape[1:] == (len(names),)
            feats.append(FeatureMap(name, (Part(key=key),), names=names if fits else None))
        elif required:
            raise SourceFormatError("dataset missing", key=key, **where)
    facts.update(gripper_meaning=ALOHA_GRIPPER, compress=compress, cameras=cams,
                 sim=bool(f.attrs.get("sim", False)),
                 image_decode=ALOHA_DECODE[compress])
    return Mapping(format="hdf5", fps=ALOHA_FPS, features=tuple(feats), name="aloha",
                   robot="aloha", action_space="joint position targets (14)")


def robomimic_mapping(f: h5py.File, ref: EpisodeRef, facts: dict) -> Mapping:
    """obs keys of the first demo by ROBOMIMIC_STATE / name suffix; actions; env facts."""
    where = dict(file=ref.file, episode=ref.id)
    try:
        env = json.loads(f["data"].attrs.get("env_args", "{}"))
    except ValueError:
        raise SourceFormatError("env_args is not JSON", key="data@env_args", **where) from None
    env_type = env.get("type", env.get("env_type"))
    kwargs = env.get("env_kwargs") or {}
    g = f[ref.group]
    obs = g.get("obs")
    if not isinstance(obs, h5py.Group):
        raise SourceFormatError("group missing", key=f"{ref.group}/obs", **where)
    if "actions" not in g:
        raise SourceFormatError("dataset missing", key=f"{ref.group}/actions", **where)
    images, other, state = [], [], []
    for k in sorted(str_keys(obs, **where)):
        part = (Part(key=f"obs/{k}"),)
        if k.endswith("_image"):
            images.append(FeatureMap(IMAGE_PREFIX + k[:-6], part, dtype="uint8"))
        elif k.endswith("_depth"):
            images.append(FeatureMap(f"observation.depth.{k[:-6]}", part))
        elif k not in ROBOMIMIC_STATE:
            other.append(FeatureMap(f"observation.{k}", part))
    for k, names in ROBOMIMIC_STATE.items():
        if k in obs:
            fits = dataset_in(obs, k, **where).shape[1:] == (len(names),)
            state.append((Part(key=f"obs/{k}"), names if fits else None))
    feats = images
    if state:
        names = None if any(n is None for _, n in state) else sum((n for _, n in state), ())
        feats.append(FeatureMap(STATE, tuple(p for p, _ in state), names=names))
    feats += other
    robosuite = env_type == ROBOSUITE_TYPE
    cc = kwargs.get("controller_configs")
    controller = cc.get("type", "unknown") if isinstance(cc, dict) else "unknown"
    for key, name in ROBOMIMIC_ACTIONS:
        if key in g:
            shape = dataset_in(g, key, **where).shape
            osc = robosuite and controller == "OSC_POSE" and shape[1:] == (7,)
            names = ROBOSUITE_OSC_NAMES if osc and key == "actions" else None
            feats.append(FeatureMap(name, (Part(key=key),), names=names))
    if robosuite:
        facts["gripper_meaning"] = "last action dimension: -1 = open, +1 = closed (robosuite)"
    facts.update(env_name=env.get("env_name", "unknown"), env_type=env_type, controller=controller,
                 fps_from="env_args.env_kwargs.control_freq" if kwargs.get("control_freq")
                 else "robosuite default control_freq (20 Hz)",
                 splits="mask/valid -> validation, otherwise train")
    robots = kwargs.get("robots", "")
    return Mapping(format="hdf5", fps=float(kwargs.get("control_freq") or ROBOMIMIC_FPS),
                   features=tuple(feats), name="robomimic",
                   robot=",".join(robots) if isinstance(robots, list) else str(robots),
                   gripper=ROBOSUITE_GRIPPER if robosuite else "unknown",
                   action_space=(f"{controller} actions normalised to [-1, 1]" if robosuite
                                 else "unknown"),
                   episodes=EpisodesMap(files=Path(ref.file).name, group="data/demo_*"))
