"""Small TFDS/RLDS datasets in the exact encoding Open X-Embodiment ships (for demos and tests).

``write_sample(dir, dataset="droid", episodes=4)`` writes a TFDS dataset version directory::

    dir/
      dataset_info.json   name, version, fileFormat "tfrecord", splits with shardLengths and
                          filepathTemplate "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
      features.json       the FeaturesDict / Dataset / Tensor / Scalar / Image / Text tree
      <name>-<split>.tfrecord-00000-of-00002 ...   one tf.train.Example per episode

with the features of the real dataset (:data:`SCHEMAS`, from the OXE features.json files;
images are made small) and values that exercise each dataset's conventions: RT-1's relative
gripper commands, bridge's ``open_gripper`` bool, taco's -1/+1 gripper, language_table's int32
code-point instruction, DROID's float64 fields. Records are serialized as TFDS does (see
:mod:`vladata.sources.oxe.decode`). ``example_unlisted`` is a dataset the standardisation table
does not know, with zlib/bytes-encoded tensors and a PNG camera without ``encodingFormat``.
"""

from __future__ import annotations

import copy
import io
import json
import zlib
from pathlib import Path

import numpy as np
import simplejpeg

from vladata.sources.oxe.example_proto import Example
from vladata.sources.oxe.tfds import shard_name
from vladata.sources.oxe.tfrecord import write_records

# -- schema vocabulary ----------------------------------------------------------------------------
# A schema is nested dicts ending in leaves: ("tensor", shape, dtype, encoding), ("image", shape,
# dtype, format), ("text",). A Scalar is a tensor of shape ().


def tensor(*shape: int, dtype: str = "float32", encoding: str = "none") -> tuple:
    return ("tensor", tuple(shape), dtype, encoding)


def image(h: int, w: int, c: int = 3, fmt: str = "jpeg", dtype: str = "uint8") -> tuple:
    return ("image", (h, w, c), dtype, fmt)


TEXT = ("text",)
BOOL, F32 = tensor(dtype="bool"), tensor()

SCHEMAS: dict[str, dict] = {
    "fractal20220817_data": {"version": "0.1.0", "steps": {
        "action": {"base_displacement_vector": tensor(2),
                   "base_displacement_vertical_rotation": tensor(1),
                   "gripper_closedness_action": tensor(1), "rotation_delta": tensor(3),
                   "terminate_episode": tensor(3, dtype="int32"), "world_vector": tensor(3)},
        "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "observation": {"base_pose_tool_reached": tensor(7), "gripper_closed": tensor(1),
                        "height_to_bottom": tensor(1), "image": image(32, 40),
                        "natural_language_embedding": tensor(512),
                        "natural_language_instruction": TEXT, "orientation_box": tensor(2, 3),
                        "vector_to_go": tensor(3), "workspace_bounds": tensor(3, 3)},
        "reward": F32}},
    "bridge": {"version": "0.1.0", "steps": {
        "action": {"open_gripper": BOOL, "rotation_delta": tensor(3),
                   "terminate_episode": F32, "world_vector": tensor(3)},
        "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "observation": {"image": image(24, 32), "natural_language_embedding": tensor(512),
                        "natural_language_instruction": TEXT, "state": tensor(7)},
        "reward": F32}},
    "bridge_dataset": {"version": "1.0.0", "steps": {
        "action": tensor(7), "discount": F32, "is_first": BOOL, "is_last": BOOL,
        "is_terminal": BOOL, "language_embedding": tensor(512), "language_instruction": TEXT,
        "observation": {"image_0": image(16, 16), "image_1": image(16, 16),
                        "image_2": image(16, 16), "image_3": image(16, 16), "state": tensor(7)},
        "reward": F32},
        "episode_metadata": {"file_path": TEXT, "has_image_0": BOOL, "has_language": BOOL}},
    "taco_play": {"version": "0.1.0", "steps": {
        "action": {"actions": tensor(7), "rel_actions_gripper": tensor(7),
                   "rel_actions_world": tensor(7), "terminate_episode": F32},
        "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "observation": {"depth_gripper": tensor(12, 12), "depth_static": tensor(15, 20),
                        "natural_language_embedding": tensor(512),
                        "natural_language_instruction": TEXT, "rgb_gripper": image(12, 12),
                        "rgb_static": image(15, 20), "robot_obs": tensor(15),
                        "structured_language_instruction": TEXT},
        "reward": F32}},
    "language_table": {"version": "0.1.0", "steps": {
        "action": tensor(2), "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "observation": {"effector_target_translation": tensor(2),
                        "effector_translation": tensor(2),
                        "instruction": tensor(512, dtype="int32"), "rgb": image(18, 32)},
        "reward": F32}},
    "droid": {"version": "1.0.1", "steps": {
        "action": tensor(7, dtype="float64"),
        "action_dict": {"cartesian_position": tensor(6, dtype="float64"),
                        "cartesian_velocity": tensor(6, dtype="float64"),
                        "gripper_position": tensor(1, dtype="float64"),
                        "gripper_velocity": tensor(1, dtype="float64"),
                        "joint_position": tensor(7, dtype="float64"),
                        "joint_velocity": tensor(7, dtype="float64")},
        "discount": F32, "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "language_instruction": TEXT, "language_instruction_2": TEXT,
        "language_instruction_3": TEXT,
        "observation": {"cartesian_position": tensor(6, dtype="float64"),
                        "exterior_image_1_left": image(18, 32),
                        "exterior_image_2_left": image(18, 32),
                        "gripper_position": tensor(1, dtype="float64"),
                        "joint_position": tensor(7, dtype="float64"),
                        "wrist_image_left": image(18, 32)},
        "reward": F32},
        "episode_metadata": {"file_path": TEXT, "recording_folderpath": TEXT}},
    "example_unlisted": {"version": "1.0.0", "steps": {
        "action": tensor(4), "is_first": BOOL, "is_last": BOOL, "is_terminal": BOOL,
        "language_instruction": TEXT,
        "observation": {"cam": image(10, 12, fmt="png"), "gray": image(10, 12, 1, fmt=""),
                        "depth_png": image(10, 12, 1, fmt="png", dtype="uint16"),
                        "packed": tensor(3, 2, dtype="float32", encoding="zlib"),
                        "raw_bytes": tensor(5, dtype="int16", encoding="bytes"),
                        "counter": tensor(dtype="int32"), "level": tensor(2, dtype="uint8"),
                        "precise": tensor(dtype="float64")},
        "reward": F32},
        "episode_metadata": {"file_path": TEXT, "episode_id": tensor(dtype="int64")}},
}

#: The cameras' real sizes in the OXE releases (the schemas above use small ones).
REAL_IMAGE_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "fractal20220817_data": {"image": (256, 320)},
    "bridge": {"image": (480, 640)},
    "bridge_dataset": {f"image_{i}": (256, 256) for i in range(4)},
    "taco_play": {"rgb_static": (150, 200), "rgb_gripper": (84, 84)},
    "language_table": {"rgb": (360, 640)},
    "droid": {k: (180, 320) for k in ("exterior_image_1_left", "exterior_image_2_left",
                                      "wrist_image_left")},
}


def schema_for(dataset: str, real_sizes: bool = False) -> dict:
    """``SCHEMAS[dataset]``, with the cameras at their real size if ``real_sizes``."""
    if dataset not in SCHEMAS:
        raise ValueError(f"no sample schema for {dataset!r}; known: {sorted(SCHEMAS)}")
    schema = copy.deepcopy(SCHEMAS[dataset])
    for key, (h, w) in (REAL_IMAGE_SIZES.get(dataset, {}) if real_sizes else {}).items():
        obs = schema["steps"]["observation"]
        _, (_, _, c), dtype, fmt = obs[key]
        obs[key] = image(h, w, c, fmt, dtype)
    return schema


_CLASS = "tensorflow_datasets.core.features."


def _feature_json(node) -> dict:
    if isinstance(node, dict):
        return {"pythonClassName": _CLASS + "features_dict.FeaturesDict",
                "featuresDict": {"features": {k: _feature_json(v) for k, v in node.items()}}}
    if node[0] == "text":
        return {"pythonClassName": _CLASS + "text_feature.Text", "text": {},
                "description": "Text."}
    if node[0] == "image":
        spec = {"shape": {"dimensions": [str(d) for d in node[1]]}, "dtype": node[2]}
        if node[3]:
            spec["encodingFormat"] = node[3]
        return {"pythonClassName": _CLASS + "image_feature.Image", "image": spec,
                "description": "Camera."}
    _, shape, dtype, enc = node
    cls = "scalar.Scalar" if shape == () else "tensor_feature.Tensor"
    return {"pythonClassName": _CLASS + cls, "description": "Values.",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {},
                       "dtype": dtype, "encoding": enc}}


def features_json(schema: dict) -> dict:
    """The features.json tree of a schema (``steps`` as an RLDS Dataset)."""
    top = {"steps": {"pythonClassName": _CLASS + "dataset_feature.Dataset",
                     "sequence": {"feature": _feature_json(schema["steps"]), "length": "-1"}}}
    for k, v in schema.items():
        if k not in ("steps", "version"):
            top[k] = _feature_json(v)
    return {"pythonClassName": _CLASS + "features_dict.FeaturesDict",
            "featuresDict": {"features": top}}


def leaves(node: dict, prefix: str = "") -> list[tuple[str, tuple]]:
    """``(flattened key, leaf)`` in schema order."""
    out = []
    for k, v in node.items():
        key = f"{prefix}/{k}" if prefix else k
        out += leaves(v, key) if isinstance(v, dict) else [(key, v)]
    return out


# -- values ---------------------------------------------------------------------------------------

def _picture(rng: np.random.Generator, h: int, w: int, c: int, t: int) -> np.ndarray:
    """A smooth moving gradient with mild noise: compresses like a camera frame, not like noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1) + 7 * t) % 256, (y * 255 // max(h - 1, 1)),
                     ((x + y + 11 * t) * 3) % 256], axis=-1)[..., :c]
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def encode_image(arr: np.ndarray, fmt: str) -> bytes:
    if fmt in ("jpeg", "jpg"):
        space = "GRAY" if arr.shape[2] == 1 else "RGB"
        return simplejpeg.encode_jpeg(np.ascontiguousarray(arr), quality=90, colorspace=space)
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


INSTRUCTIONS = ("pick up the red block", "put the spoon in the pot",
                "push the star to the café corner", "open the drawer")


def _random_value(leaf: tuple, T: int, rng: np.random.Generator):
    kind = leaf[0]
    if kind == "text":
        return [""] * T
    if kind == "image":
        (h, w, c), fmt = leaf[1], leaf[3] or "png"
        if leaf[2] == "uint16":  # a depth map in millimetres
            return [encode_image(rng.integers(0, 65535, (h, w, c), dtype=np.uint16), "png")
                    for _ in range(T)]
        return [encode_image(_picture(rng, h, w, c, t), fmt) for t in range(T)]
    _, shape, dtype, _ = leaf
    if dtype == "bool":
        return rng.random((T, *shape)) < 0.5
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), (T, *shape)).astype(dtype)
    return rng.normal(0, 1, (T, *shape)).astype(dtype)


def generate_episode(dataset: str, T: int, rng: np.random.Generator, index: int = 0,
                     schema: dict | None = None) -> dict:
    """One episode's raw values: ``{"steps": {rel key: (T, ...) array or list}, "episode": {}}``.

    Images are the encoded bytes, text the Python strings. ``schema`` defaults to
    ``SCHEMAS[dataset]``; the values follow ``dataset``'s conventions.
    """
    schema = schema or SCHEMAS[dataset]
    steps = {k: _random_value(v, T, rng) for k, v in leaves(schema["steps"])}
    steps["is_first"] = np.arange(T) == 0
    steps["is_last"] = steps["is_terminal"] = np.arange(T) == T - 1
    instr = INSTRUCTIONS[index % len(INSTRUCTIONS)]
    two = [instr] * (T // 2) + [INSTRUCTIONS[(index + 1) % len(INSTRUCTIONS)]] * (T - T // 2)
    for k, v in leaves(schema["steps"]):
        if v == TEXT:
            steps[k] = [instr] * T
    if dataset == "fractal20220817_data":
        g = np.zeros((T, 1), np.float32)
        if index % 3 != 2:  # every third episode never commands the gripper: stays open
            g[T // 3] = 1.0
            g[min(T - 1, 2 * T // 3)] = -1.0 if index % 2 else 0.05
        steps["action/gripper_closedness_action"] = g
        steps["observation/natural_language_instruction"] = two
    elif dataset == "bridge":
        steps["action/open_gripper"] = np.arange(T) < T // 2
        if index % 4 == 3:
            steps["observation/natural_language_instruction"] = [""] * T
    elif dataset == "bridge_dataset":
        g = np.where(np.arange(T) < T // 2, 1.0, 0.0)
        g[T // 2 - 1: T // 2 + 1] = 0.5  # in between: takes the next decided value
        steps["action"][:, 6] = g
    elif dataset == "taco_play":
        steps["action/rel_actions_world"][:, 6] = np.where(np.arange(T) % 4 < 2, 1.0, -1.0)
        steps["observation/structured_language_instruction"] = [f"task_{index % 3}"] * T
    elif dataset == "language_table":
        codes = np.zeros((T, 512), np.int32)
        for t, s in enumerate(two):
            codes[t, :len(s)] = [ord(ch) for ch in s]
        steps["observation/instruction"] = codes
    elif dataset == "droid":
        steps["action_dict/gripper_position"] = rng.random((T, 1))
        steps["action"] = np.concatenate([steps["action_dict/cartesian_velocity"],
                                          steps["action_dict/gripper_position"]], axis=1)
        steps["language_instruction_2"] = [instr.upper()] * T
        steps["language_instruction_3"] = [""] * T
    elif dataset == "example_unlisted":
        steps["language_instruction"] = two
    episode = {}
    for k, v in leaves({k: v for k, v in schema.items() if k not in ("steps", "version")}):
        if v == TEXT:
            episode[k] = f"/data/{dataset}/episode_{index:05d}.h5"
        else:
            episode[k] = _random_value(v, 1, rng)[0]
    return {"steps": steps, "episode": episode}


# -- serialization --------------------------------------------------------------------------------

def _put(feature, leaf: tuple, values, n: int) -> None:
    kind = leaf[0]
    if kind == "text":
        feature.bytes_list.value.extend([s.encode("utf-8") for s in values])
    elif kind == "image":
        feature.bytes_list.value.extend(values)
    else:
        _, shape, dtype, enc = leaf
        arr = np.asarray(values, dtype).reshape(n, *shape)
        if enc == "bytes":
            feature.bytes_list.value.extend([a.tobytes() for a in arr])
        elif enc == "zlib":
            feature.bytes_list.value.extend([zlib.compress(a.tobytes()) for a in arr])
        elif np.issubdtype(arr.dtype, np.floating):
            feature.float_list.value.extend(arr.astype(np.float32).ravel().tolist())
        else:
            feature.int64_list.value.extend(arr.astype(np.int64).ravel().tolist())


def serialize_episode(schema: dict, episode: dict) -> bytes:
    """One episode as TFDS serializes it: a tf.train.Example with flattened keys."""
    ex = Example()
    fmap = ex.features.feature
    T = len(episode["steps"]["is_first"])
    for k, leaf in leaves(schema["steps"]):
        _put(fmap["steps/" + k], leaf, episode["steps"][k], T)
    for k, leaf in leaves({k: v for k, v in schema.items() if k not in ("steps", "version")}):
        v = episode["episode"][k]
        _put(fmap[k], leaf, [v], 1)
    return ex.SerializeToString()


def write_dataset(out: str | Path, name: str, schema: dict, splits: dict[str, list[dict]],
                  shards: int = 2, version: str | None = None) -> Path:
    """Write episodes per split as a TFDS dataset version directory at ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info_splits = []
    for split, eps in splits.items():
        n = max(1, min(shards, len(eps)))
        bounds = np.linspace(0, len(eps), n + 1).astype(int)
        lengths, size = [], 0
        for k in range(n):
            f = out / shard_name("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", name, split,
                                 "tfrecord", k, n)
            write_records(f, (serialize_episode(schema, e) for e in eps[bounds[k]:bounds[k + 1]]))
            lengths.append(str(bounds[k + 1] - bounds[k]))
            size += f.stat().st_size
        info_splits.append({"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                            "name": split, "numBytes": str(size), "shardLengths": lengths})
    info = {"citation": "", "description": f"vlakit sample of {name}", "fileFormat": "tfrecord",
            "moduleName": f"{name}.{name}", "name": name, "releaseNotes": {},
            "splits": info_splits, "version": version or schema.get("version", "1.0.0")}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    (out / "features.json").write_text(json.dumps(features_json(schema), indent=2))
    return out


def generate(dataset: str, episodes: int, *, seed: int = 0, steps: tuple[int, int] = (6, 12),
             schema: dict | None = None) -> list[dict]:
    """``episodes`` random episodes of ``dataset`` (see :func:`generate_episode`)."""
    schema = schema or schema_for(dataset)
    rng = np.random.default_rng(seed)
    return [generate_episode(dataset, int(rng.integers(steps[0], steps[1] + 1)), rng, i, schema)
            for i in range(episodes)]


def write_sample(out: str | Path, dataset: str = "fractal20220817_data", episodes: int = 4, *,
                 splits: dict[str, float] | None = None, shards: int = 2, seed: int = 0,
                 steps: tuple[int, int] = (6, 12), real_sizes: bool = False) -> Path:
    """Write a small ``dataset`` sample at ``out`` (a TFDS dataset version directory).

    ``splits`` gives each split's share of the episodes (default: 3/4 train, 1/4 test when
    there are at least 4 episodes); ``real_sizes`` writes the cameras at the real datasets'
    sizes (:data:`REAL_IMAGE_SIZES`) instead of small ones. Returns ``out``.
    """
    schema = schema_for(dataset, real_sizes)
    eps = generate(dataset, episodes, seed=seed, steps=steps, schema=schema)
    if splits is None:
        splits = {"train": 0.75, "test": 0.25} if episodes >= 4 else {"train": 1.0}
    cuts = np.round(np.cumsum([0, *splits.values()]) / sum(splits.values()) * episodes)
    by_split = {s: eps[int(a):int(b)] for s, a, b in zip(splits, cuts[:-1], cuts[1:])}
    return write_dataset(out, dataset, schema, by_split, shards=shards)
