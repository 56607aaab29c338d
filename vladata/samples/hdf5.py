"""Write small synthetic ALOHA/ACT and robomimic HDF5 files, laid out like the real ones.

Faithful (see shared/reference/formats.md, section 3):

- ALOHA: ``episode_<i>.hdf5`` per episode; root attrs ``sim`` and ``compress``; ``/observations/
  qpos|qvel|effort`` and ``/action`` created without a dtype (so float32), 14 values [left 6
  joints, left gripper in [0, 1], right 6, right gripper]; ``/observations/images/<cam>`` uint8
  (T, H, W, 3) chunked (1, H, W, 3); with ``compress`` each frame is a quality-50 JPEG made the
  way ``cv2.imencode`` makes it from the RGB array (the array's channels are taken as B, G, R;
  4:2:0), zero-padded to the longest, (T, padded_len) uint8 chunked (1, padded_len), plus
  ``/compress_len`` (n_cams, T) float32. ``simplejpeg`` with ``colorspace="BGR"`` is used for
  this: its decode of a cv2-written JPEG is bit-identical to ``cv2.imdecode`` (checked against
  opencv-python-headless 5.0.0).
- robomimic: one file, ``data`` attrs ``total`` and ``env_args`` (JSON: env_name, type, env_kwargs);
  ``data/demo_<i>`` with attrs ``num_samples``, ``model_file``, optional ``ep_meta`` (JSON with
  ``lang``); ``actions`` (N, 7) float64 in [-1, 1], ``states``, ``rewards``, ``dones``,
  ``obs/<key>`` and ``next_obs/<key>`` (float64 low-dim, uint8 HWC images); ``mask/<filter>`` as
  ``np.array(names, dtype="S")``.

Images are not channel-symmetric (red dominates, blue is low) so a swapped decode is detectable.
The writers return what they wrote, for tests to compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import simplejpeg

ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")  # recording order
ROBOMIMIC_OBS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2,
                 "robot0_joint_pos": 7, "object": 10}
ROBOMIMIC_IMAGES = ("agentview_image", "robot0_eye_in_hand_image")


def synthetic_image(h: int, w: int, t: int, k: int = 0) -> np.ndarray:
    """A smooth, channel-asymmetric uint8 (h, w, 3) frame that changes with ``t``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 170 + 50 * xx / max(w - 1, 1)            # red: high
    img[..., 1] = 60 + 8 * t + 10 * k + 30 * yy / max(h - 1, 1)  # green: encodes the frame
    img[..., 2] = 20 + 10 * np.sin(xx / 3.0)                # blue: low
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_like_cv2(img: np.ndarray, quality: int = 50) -> bytes:
    """JPEG bytes as ``cv2.imencode('.jpg', img, [IMWRITE_JPEG_QUALITY, quality])`` makes them."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="BGR",
                                  colorsubsampling="420")


def write_aloha(out: str | Path, *, episodes: int = 2, length: int | list[int] = 6,
                cameras: tuple[str, ...] = ALOHA_CAMERAS, size: tuple[int, int] = (24, 32),
                compress: bool = False, sim: bool = False, effort: bool = True,
                base_action: bool = False, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Write ``episode_<i>.hdf5`` files; returns per episode ``{hdf5 key: array written}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = [length] * episodes if isinstance(length, int) else list(length)
    written = []
    for i, T in enumerate(lengths):
        t = np.arange(T, dtype=np.float32)[:, None]
        qpos = 0.3 * np.sin(0.2 * t + np.arange(14)) + 0.01 * rng.standard_normal((T, 14))
        qpos = qpos.astype(np.float32)
        qpos[:, [6, 13]] = 0.5 + 0.5 * np.sin(0.1 * t + i)  # normalised grippers in [0, 1]
        arrays = {"observations/qpos": qpos,
                  "observations/qvel": np.gradient(qpos, axis=0).astype(np.float32) * 50,
                  "action": np.roll(qpos, -1, axis=0)}
        if effort:
            arrays["observations/effort"] = rng.standard_normal((T, 14)).astype(np.float32)
        if base_action:
            arrays["base_action"] = rng.standard_normal((T, 2)).astype(np.float32)
        images = {c: np.stack([synthetic_image(*size, s, k) for s in range(T)])
                  for k, c in enumerate(cameras)}
        with h5py.File(out / f"episode_{i}.hdf5", "w") as root:
            root.attrs["sim"] = sim
            root.attrs["compress"] = compress
            obs = root.create_group("observations")
            image = obs.create_group("images")
            if compress:
                enc = {c: [np.frombuffer(encode_like_cv2(f), np.uint8) for f in images[c]]
                       for c in cameras}
                lens = np.array([[len(b) for b in enc[c]] for c in cameras])
                padded = int(lens.max())
                for c in cameras:
                    ds = image.create_dataset(c, (T, padded), dtype="uint8", chunks=(1, padded))
                    buf = np.zeros((T, padded), np.uint8)
                    for s, b in enumerate(enc[c]):
                        buf[s, :len(b)] = b
                    ds[...] = buf
                # ACT passes no dtype: h5py's default f4
                root.create_dataset("compress_len", (len(cameras), T), dtype="f4")[...] = lens
            else:
                for c in cameras:
                    h, w = size
                    ds = image.create_dataset(c, (T, h, w, 3), dtype="uint8", chunks=(1, h, w, 3))
                    ds[...] = images[c]
            for key, a in arrays.items():
                root.create_dataset(key, a.shape, dtype="f4")[...] = a  # ACT passes no dtype: f4
        arrays.update({f"observations/images/{c}": images[c] for c in cameras})
        written.append(arrays)
    return written


def write_robomimic(path: str | Path, *, demos: int = 12, lengths: list[int] | None = None,
                    image_size: int = 12, valid: tuple[int, ...] = (2, 10), language: bool = False,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Write one robomimic ``.hdf5``; returns ``{demo name: {key: array written}}``.

    Demos are ``demo_0 .. demo_<demos-1>`` (so ``demo_10`` exists for numeric-order tests);
    ``mask/valid`` holds the demos in ``valid``, ``mask/train`` the others, ``mask/20_percent`` the
    first two.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = lengths or [3 + (i * 5) % 4 for i in range(demos)]
    names = [f"demo_{i}" for i in range(demos)]
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {
        "robots": ["Panda"], "control_freq": 20, "controller_configs": {"type": "OSC_POSE"},
        "has_renderer": False, "use_camera_obs": True, "camera_heights": image_size}}
    written = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, (name, n) in enumerate(zip(names, lengths)):
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = "<mujoco model='lift'><worldbody/></mujoco>"
            arrays = {"actions": np.clip(rng.standard_normal((n, 7)) * 0.5, -1, 1),
                      "states": rng.standard_normal((n, 32)),
                      "rewards": (np.arange(n) == n - 1).astype(np.float64),
                      "dones": (np.arange(n) == n - 1).astype(np.int64)}
            arrays["actions"][:, -1] = np.where(np.arange(n) < n // 2, -1.0, 1.0)
            for k, d in ROBOMIMIC_OBS.items():
                arrays[f"obs/{k}"] = rng.standard_normal((n, d)) + i
            for c, cam in enumerate(ROBOMIMIC_IMAGES):
                arrays[f"obs/{cam}"] = np.stack([synthetic_image(image_size, image_size, t + i, c)
                                                 for t in range(n)])
            for key, a in arrays.items():
                g.create_dataset(key, data=a)
                if key.startswith("obs/"):
                    g.create_dataset("next_" + key, data=np.concatenate([a[1:], a[-1:]]))
            if language:
                g.attrs["ep_meta"] = json.dumps({"lang": f"lift the cube ({name})", "layout_id": i})
            written[name] = arrays
        data.attrs["total"] = int(sum(lengths))
        data.attrs["env_args"] = json.dumps(env_args)
        mask = f.create_group("mask")
        mask.create_dataset("valid", data=np.array([names[i] for i in valid], dtype="S"))
        train = [n for i, n in enumerate(names) if i not in valid]
        mask.create_dataset("train", data=np.array(train, dtype="S"))
        mask.create_dataset("20_percent", data=np.array(names[:2], dtype="S"))
    return written


def write_custom(out: str | Path, *, episodes: int = 3, length: int = 5, size=(10, 14),
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A home-grown layout, the one examples/mappings/hdf5_custom.yaml describes: ``traj_<i>.h5``
    with ``/data/obs/front_bgr`` (raw, BGR order), ``/data/obs/wrist_jpeg`` (variable-length JPEG
    bytes), ``/data/robot/joint_pos`` (T, 7) float64, ``/data/robot/gripper`` (T,),
    ``/data/cmd/ee_delta`` (T, 6) + ``/data/cmd/gripper`` (T, 1) float32, attr ``instruction``.
    Returns per episode ``{"front": RGB, "wrist": RGB, key: array, "instruction": str}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for i in range(episodes):
        front = np.stack([synthetic_image(*size, t, 0) for t in range(length)])
        wrist = np.stack([synthetic_image(*size, t, 3) for t in range(length)])
        arrays = {"robot/joint_pos": rng.standard_normal((length, 7)),
                  "robot/gripper": rng.uniform(0, 0.08, length),
                  "cmd/ee_delta": rng.uniform(-1, 1, (length, 6)).astype(np.float32),
                  "cmd/gripper": (rng.uniform(size=(length, 1)) > 0.5).astype(np.float32)}
        text = f"stack the blocks ({i})"
        with h5py.File(out / f"traj_{i}.h5", "w") as f:
            g = f.create_group("data")
            g.attrs["instruction"] = text
            g.create_dataset("obs/front_bgr", data=front[..., ::-1])
            jpeg = g.create_dataset("obs/wrist_jpeg", (length,), dtype=h5py.vlen_dtype(np.uint8))
            for t in range(length):
                jpeg[t] = np.frombuffer(simplejpeg.encode_jpeg(wrist[t], quality=95), np.uint8)
            for k, a in arrays.items():
                g.create_dataset(k, data=a)
        written.append({"front": front, "wrist": wrist, "instruction": text, **arrays})
    return written


def write_sample(out: str | Path, layout: str = "aloha", **kwargs):
    """A sample of ``layout`` (``aloha``, ``aloha-compressed``, ``robomimic`` or ``custom``)."""
    out = Path(out)
    if layout == "aloha":
        return write_aloha(out, **kwargs)
    if layout == "aloha-compressed":
        return write_aloha(out, compress=True, **kwargs)
    if layout == "robomimic":
        return write_robomimic(out / "demo.hdf5", **kwargs)
    if layout == "custom":
        return write_custom(out, **kwargs)
    raise ValueError(f"unknown layout {layout!r}; known: aloha, aloha-compressed, robomimic, "
                     "custom")
