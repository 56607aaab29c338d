"""Write small synthetic ROS bags (ROS1 ``.bag``, ROS2 sqlite3, ROS2 MCAP) with real message types.

Written with the ``rosbags`` writers and typestores (ROS1 Noetic / ROS2 Humble definitions), so
the files are what ``rosbag record`` / ``ros2 bag record`` produce: ROS1 LZ4-chunked bags, ROS2
bag directories (``metadata.yaml`` + ``.db3`` or ``.mcap``) with CDR messages. Topics run at
different, jittered rates and start at different times, so resampling is exercised:

================================= ============================== ==== ========================
topic                             type                           Hz   feature (sample mapping)
================================= ============================== ==== ========================
/camera/front/image_raw           sensor_msgs/Image rgb8         15   observation.images.front
/camera/wrist/image_raw           sensor_msgs/Image bgr8         10   observation.images.wrist
/camera/side/image_raw/compressed sensor_msgs/CompressedImage    10   observation.images.side
/joint_states                     sensor_msgs/JointState (7)     50   observation.state[0:7]
/gripper/state                    std_msgs/Float32               25   observation.state[7]
/arm/command                      std_msgs/Float64MultiArray (7) 20   action
/instruction                      std_msgs/String                --   language (2 messages)
================================= ============================== ==== ========================

The bgr8 camera stores the BGR-ordered bytes of the RGB truth; the compressed camera is JPEG
encoded from BGR as image_transport does. :func:`write_sample` returns, per bag, ``{topic:
(timestamps_ns, values)}`` (images as RGB truth) and writes ``mapping.yaml`` (:data:`MAPPING`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import simplejpeg
import yaml

STORAGES = ("ros1", "sqlite3", "mcap")
JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
INSTRUCTIONS = ("pick up the red block", "put it in the bowl")
T0_NS = 1_700_000_000 * 10**9
MAPPING = {
    "version": 1, "format": "rosbag", "name": "sample_arm", "fps": 10, "robot": "panda",
    "gripper": "0/1",  # action[6]: 0 = close, 1 = open
    "action_space": "end-effector delta xyz, rpy + gripper",
    "language": {"topic": "/instruction"},
    "features": {
        "observation.images.front": {"topic": "/camera/front/image_raw"},
        "observation.images.wrist": {"topic": "/camera/wrist/image_raw"},
        "observation.images.side": {"topic": "/camera/side/image_raw/compressed"},
        "observation.state": {"parts": [
            {"topic": "/joint_states", "field": "position", "index": "0:7"},
            {"topic": "/gripper/state", "field": "data"}],
            "names": [*JOINTS, "gripper"]},
        "action": {"topic": "/arm/command", "field": "data",
                   "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]},
    },
}


def typestore(storage: str):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if storage == "ros1" else Stores.ROS2_HUMBLE)


def header(ts, storage: str, t_ns: int, frame: str = "base"):
    stamp = ts.types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
    H = ts.types["std_msgs/msg/Header"]
    if storage == "ros1":
        return H(seq=0, stamp=stamp, frame_id=frame)
    return H(stamp=stamp, frame_id=frame)


def image_msg(ts, storage: str, t_ns: int, rgb: np.ndarray, encoding: str = "rgb8"):
    """sensor_msgs/Image from an RGB truth array (rgb8, bgr8, mono8 (first channel), rgba8)."""
    h, w = rgb.shape[:2]
    data = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., :1],
            "rgba8": np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)}[encoding]
    ch = data.shape[2]
    return ts.types["sensor_msgs/msg/Image"](
        header=header(ts, storage, t_ns, "camera"), height=h, width=w, encoding=encoding,
        is_bigendian=0, step=w * ch, data=np.ascontiguousarray(data).reshape(-1))


def compressed_msg(ts, storage: str, t_ns: int, rgb: np.ndarray, fmt: str = "jpeg"):
    """sensor_msgs/CompressedImage as image_transport writes it (colour JPEG from bgr8)."""
    if fmt == "jpeg":
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=95, colorspace="RGB")
        label = "bgr8; jpeg compressed bgr8"
    else:
        import io
        from PIL import Image

        b = io.BytesIO()
        Image.fromarray(rgb).save(b, format="PNG")
        data, label = b.getvalue(), "bgr8; png compressed bgr8"
    return ts.types["sensor_msgs/msg/CompressedImage"](
        header=header(ts, storage, t_ns, "camera"), format=label,
        data=np.frombuffer(data, np.uint8).copy())


def simple_msg(ts, msgtype: str, value):
    """std_msgs Float32 / Float64 / String / Float64MultiArray from a value."""
    T = ts.types[msgtype]
    if msgtype == "std_msgs/msg/Float64MultiArray":
        layout = ts.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        return T(layout=layout, data=np.asarray(value, np.float64))
    return T(data=value)


def write_bag(path: Path, storage: str, topics: dict[str, str], messages: list[tuple]) -> Path:
    """Write ``messages`` = [(topic, t_ns, msg)] (any order) to a bag of ``storage`` kind."""
    ts = typestore(storage)
    messages = sorted(messages, key=lambda m: m[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    if storage == "ros1":
        from rosbags.rosbag1 import Writer

        w = Writer(path)
        w.set_compression(Writer.CompressionFormat.LZ4)
        ser = ts.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        w = Writer(path, version=8, storage_plugin=plugin)
        ser = ts.serialize_cdr
    with w:
        conns = {t: w.add_connection(t, mt, typestore=ts) for t, mt in topics.items()}
        for topic, t_ns, msg in messages:
            w.write(conns[topic], int(t_ns), ser(msg, topics[topic]))
    return path


def _times(rng, start_s: float, rate: float, end_s: float) -> np.ndarray:
    """Jittered message times (ns) from start_s at ~rate Hz until end_s."""
    n = int((end_s - start_s) * rate) + 1
    t = start_s + np.arange(n) / rate + rng.uniform(-0.2, 0.2, n) / rate
    t[0] = start_s
    return T0_NS + np.unique(np.round(t[t <= end_s] * 1e9).astype(np.int64))


def _camera(h: int, w: int, k: int, cam: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 200 - (k * 13) % 80
    img[..., 1] = 40 + (xx * 120) // max(w - 1, 1) + 20 * cam
    img[..., 2] = 20 + (yy * 40) // max(h - 1, 1)
    return img


def write_episode(path: Path, storage: str, *, duration_s: float = 1.2, size=(12, 16),
                  seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """One sample bag (topics of the module docstring); returns ``{topic: (t_ns, values)}``."""
    ts = typestore(storage)
    rng = np.random.default_rng(seed)
    truth, msgs = {}, []
    spec = {  # topic: (type, rate, start_s)
        "/camera/front/image_raw": ("sensor_msgs/msg/Image", 15, 0.05),
        "/camera/wrist/image_raw": ("sensor_msgs/msg/Image", 10, 0.12),
        "/camera/side/image_raw/compressed": ("sensor_msgs/msg/CompressedImage", 10, 0.0),
        "/joint_states": ("sensor_msgs/msg/JointState", 50, 0.0),
        "/gripper/state": ("std_msgs/msg/Float32", 25, 0.02),
        "/arm/command": ("std_msgs/msg/Float64MultiArray", 20, 0.08),
    }
    for cam, (topic, (mt, rate, start)) in enumerate(spec.items()):
        times = _times(rng, start, rate, duration_s)
        vals = []
        for k, t in enumerate(times):
            if mt.endswith("Image"):
                v = _camera(*size, k, cam)
                msg = (compressed_msg(ts, storage, t, v) if "Compressed" in mt else
                       image_msg(ts, storage, t, v, "bgr8" if "wrist" in topic else "rgb8"))
            elif mt.endswith("JointState"):
                v = np.sin(0.5 * k * 0.02 + np.arange(7)) + seed
                msg = ts.types[mt](header=header(ts, storage, t), name=list(JOINTS), position=v,
                                   velocity=np.cos(v), effort=np.zeros(7))
            elif mt.endswith("Float32"):
                v = np.float32(0.04 * (1 + np.sin(0.3 * k)))
                msg = simple_msg(ts, mt, float(v))
            else:
                v = rng.uniform(-1, 1, 7)
                msg = simple_msg(ts, mt, v)
            vals.append(v)
            msgs.append((topic, t, msg))
        truth[topic] = (times, vals)
    lang_t = T0_NS + np.array([0, int(duration_s * 0.5e9)], np.int64)
    for t, text in zip(lang_t, INSTRUCTIONS):
        msgs.append(("/instruction", t, simple_msg(ts, "std_msgs/msg/String", text)))
    truth["/instruction"] = (lang_t, list(INSTRUCTIONS))
    topics = {t: s[0] for t, s in spec.items()} | {"/instruction": "std_msgs/msg/String"}
    write_bag(path, storage, topics, msgs)
    return truth


def bag_path(out: Path, storage: str, i: int) -> Path:
    return out / (f"episode_{i}.bag" if storage == "ros1" else f"episode_{i}")


def write_sample(out: str | Path, storage: str = "ros1", *, episodes: int = 2,
                 duration_s: float = 1.2, size=(12, 16), seed: int = 0) -> list[dict]:
    """Write ``episodes`` bags of ``storage`` kind plus ``mapping.yaml`` under ``out``."""
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; known: {', '.join(STORAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth = [write_episode(bag_path(out, storage, i), storage, duration_s=duration_s, size=size,
                           seed=seed + i) for i in range(episodes)]
    (out / "mapping.yaml").write_text(yaml.safe_dump(MAPPING, sort_keys=False))
    return truth
