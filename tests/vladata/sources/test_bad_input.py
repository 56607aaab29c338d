"""Bad input, per source, through the CLI: a non-zero exit with a message naming the file (and
episode / key where there is one), no complete-looking output, nothing outside the output
changed. Also what must convert: --allow-outside, mixed ALOHA recordings, OXE without optional
keys (issue 11, items 5, 6, 8, 10)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import VladataError
from vladata.sources.calvin import frame_path


def _tree(root: Path, out: Path) -> dict[str, str]:
    """Every file under ``root`` but outside ``out``, with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and out not in p.parents}


def _complete(out: Path) -> bool:
    try:
        vladata.open(out)
        return True
    except VladataError:
        return False


def refused(root: Path, args: list[str], out: Path, *names: str) -> str:
    """Run ``vladata convert ARGS``; assert the clean failure the module docstring describes."""
    before = _tree(root, out)
    r = CliRunner().invoke(cli, ["convert", *args, str(out)])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # a message, not a traceback
    for name in names:
        assert name in r.output, (name, r.output)
    assert not (out.exists() and _complete(out))
    assert _tree(root, out) == before
    return r.output


def converted(args: list[str], out: Path) -> str:
    r = CliRunner().invoke(cli, ["convert", *args, str(out)])
    assert r.exit_code == 0, r.output
    assert _complete(out)
    return r.output


# -- CALVIN: no silent casts, reversed annotations, corrupt npz -----------------------------------

@pytest.fixture()
def calvin(tmp_path):
    from vladata.samples.calvin import write_sample
    return write_sample(tmp_path / "raw", train_segments=1, val_segments=1,
                        frames_per_segment=(4, 5), static_size=8, gripper_size=6, depth=False)


def _calvin_frame(raw: Path) -> Path:
    s, _ = np.load(raw / "training/ep_start_end_ids.npy")[0]
    return frame_path(raw / "training", int(s) + 2)


def _rewrite(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


@pytest.mark.parametrize("key, value, says", [
    ("rgb_static", lambda a: a / 255.0, "floats are not cast to integers"),
    ("rgb_static", lambda a: a.astype(np.int64) + 200, "out of range as uint8"),
    ("rel_actions", lambda a: np.array([str(x) for x in a]), "expected float32"),
    ("robot_obs", lambda a: np.where(np.arange(len(a)) == 3, 1e300, a), "overflows as float32"),
])
def test_calvin_values_are_cast_only_when_exact(calvin, tmp_path, key, value, says):
    f = _calvin_frame(calvin)
    with np.load(f) as z:
        _rewrite(f, **{key: value(z[key])})
    out = refused(tmp_path, ["calvin", str(calvin)], tmp_path / "o.vla", f.name, f"'{key}'",
                  "frame 2", "episode training/", says)
    assert "Traceback" not in out


def test_calvin_int64_images_in_range_are_stored(calvin, tmp_path):
    f = _calvin_frame(calvin)
    with np.load(f) as z:
        img = z["rgb_static"]
    _rewrite(f, rgb_static=img.astype(np.int64))
    converted(["calvin", str(calvin)], tmp_path / "o.vla")
    ds = vladata.open(tmp_path / "o.vla")
    np.testing.assert_array_equal(ds.array("observation.images.rgb_static")[2], img)


def test_calvin_annotation_ending_before_it_starts(calvin, tmp_path):
    from vladata.safe_pickle import load_pickled_npy
    p = calvin / "training/lang_annotations/auto_lang_ann.npy"
    ann = load_pickled_npy(p)
    s, e = ann["info"]["indx"][0]
    ann["info"]["indx"][0] = (e, s - 1)
    np.save(p, ann, allow_pickle=True)
    refused(tmp_path, ["calvin", str(calvin)], tmp_path / "o.vla", str(p), "annotation 0",
            "before it starts", "indx")


def _zip64_extra(buf: bytearray) -> int:
    """Offset of the first local header's zip64 extra field (np.savez writes one per member)."""
    nlen, xlen = struct.unpack_from("<HH", buf, 26)
    at = 30 + nlen
    while at < 30 + nlen + xlen:
        hid, size = struct.unpack_from("<HH", buf, at)
        if hid == 1:
            return at
        at += 4 + size
    raise AssertionError("no zip64 extra field")


@pytest.mark.parametrize("damage", ["short", "truncated"])
def test_calvin_corrupt_zip64_extra_field(calvin, tmp_path, damage):
    f = _calvin_frame(calvin)
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    with open(f, "wb") as fh:  # stored (not deflated) members with sizes in the zip64 extra
        np.savez(fh, **arrays)
    buf = bytearray(f.read_bytes())
    at = _zip64_extra(buf)
    struct.pack_into("<H", buf, at + 2, 4 if damage == "short" else 400)
    f.write_bytes(bytes(buf))
    refused(tmp_path, ["calvin", str(calvin)], tmp_path / "o.vla", f.name, "episode training/")


# -- LeRobot: path templates, format strings, invalid UTF-8 ----------------------------------------

@pytest.fixture()
def lerobot(tmp_path):
    from vladata.samples.lerobot import write_sample
    d = tmp_path / "ds"
    write_sample(d, "v2.1", episodes=2, lengths=[3, 4], cameras=(), size=(8, 8))
    return d


def _set_info(root: Path, **kv) -> Path:
    p = root / "meta/info.json"
    info = json.loads(p.read_text())
    info.update(kv)
    p.write_text(json.dumps(info))
    return p


@pytest.mark.parametrize("template", [
    "../elsewhere/data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
    "/etc/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"])
def test_lerobot_data_path_outside_the_root(lerobot, tmp_path, template):
    info = _set_info(lerobot, data_path=template)
    refused(tmp_path, ["lerobot", str(lerobot)], tmp_path / "o.vla", str(info), "'data_path'",
            "outside the dataset", "--allow-outside")


@pytest.mark.parametrize("template", ["data/{episode_index.__class__}.parquet",
                                      "data/{episode_index[0]}.parquet",
                                      "data/{episode_index!r}.parquet",
                                      "data/{episode_index:{episode_chunk}}.parquet"])
def test_lerobot_template_fields_are_plain_names(lerobot, tmp_path, template):
    info = _set_info(lerobot, data_path=template)
    out = refused(tmp_path, ["lerobot", str(lerobot)], tmp_path / "o.vla", str(info),
                  "'data_path'", "not a plain name")
    assert "<class" not in out


def test_lerobot_allow_outside_reads_the_files_the_metadata_names(lerobot, tmp_path):
    shutil.move(lerobot / "data", tmp_path / "shared_data")
    _set_info(lerobot, data_path="../shared_data/chunk-{episode_chunk:03d}/"
                                 "episode_{episode_index:06d}.parquet")
    refused(tmp_path, ["lerobot", str(lerobot)], tmp_path / "o.vla", "outside the dataset")
    converted(["lerobot", str(lerobot), "--allow-outside"], tmp_path / "o.vla")
    assert vladata.open(tmp_path / "o.vla").summary()["frames"] == 7


def test_lerobot_parquet_with_invalid_utf8(tmp_path):
    from vladata.samples.lerobot import write_sample
    d = tmp_path / "ds"
    write_sample(d, "v3.0", episodes=2, lengths=[3, 4], cameras=(), size=(8, 8))
    p = d / "meta/tasks.parquet"
    t = pq.read_table(p)
    col = t.column_names.index("task_index")
    bad = pa.array([b"\xff\xfe task"] * t.num_rows, pa.binary()).view(pa.string())
    names = [n for n in t.column_names if n != "task_index"]
    t2 = t.set_column(t.column_names.index(names[0]), names[0], bad)
    pq.write_table(t2.select([names[0], t.column_names[col]]).replace_schema_metadata(
        t.schema.metadata), p)
    refused(tmp_path, ["lerobot", str(d)], tmp_path / "o.vla", str(p), "unreadable parquet")


# -- OXE: shard template outside, a missing optional key ------------------------------------------

@pytest.fixture()
def oxe(tmp_path):
    from vladata.samples.oxe import write_sample
    return write_sample(tmp_path / "fractal", episodes=2, shards=1, steps=(3, 4),
                        splits={"train": 1.0})


def test_oxe_shard_template_outside_the_dataset(oxe, tmp_path):
    p = oxe / "dataset_info.json"
    info = json.loads(p.read_text())
    info["splits"][0]["filepathTemplate"] = "../x/{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    p.write_text(json.dumps(info))
    refused(tmp_path, ["oxe", str(oxe)], tmp_path / "o.vla", str(p), "filepathTemplate",
            "outside the dataset")


def test_oxe_shard_template_fields_are_plain_names(oxe, tmp_path):
    p = oxe / "dataset_info.json"
    info = json.loads(p.read_text())
    info["splits"][0]["filepathTemplate"] = "{DATASET.__class__}-{SPLIT}.{FILEFORMAT}"
    p.write_text(json.dumps(info))
    out = refused(tmp_path, ["oxe", str(oxe)], tmp_path / "o.vla", str(p), "filepathTemplate",
                  "not a plain name")
    assert "<class" not in out


def test_oxe_allow_outside_reads_shards_elsewhere(oxe, tmp_path):
    (tmp_path / "x").mkdir()
    for shard in oxe.glob("*.tfrecord-*"):
        shutil.move(shard, tmp_path / "x" / shard.name)
    p = oxe / "dataset_info.json"
    info = json.loads(p.read_text())
    info["splits"][0]["filepathTemplate"] = "../x/{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    p.write_text(json.dumps(info))
    converted(["oxe", str(oxe), "--allow-outside"], tmp_path / "o.vla")


def test_oxe_taco_play_without_depth_converts_without_it(tmp_path):
    from vladata.samples import oxe as samples
    schema = samples.schema_for("taco_play")
    for k in ("depth_static", "depth_gripper"):
        del schema["steps"]["observation"][k]
    eps = samples.generate("taco_play", 2, schema=schema, steps=(3, 4))
    src = samples.write_dataset(tmp_path / "taco", "taco_play", schema, {"train": eps}, shards=1)
    r = CliRunner().invoke(cli, ["convert", "oxe", str(src), str(tmp_path / "o.vla")])
    assert r.exit_code == 0, r.output
    assert "depth_static" in r.output and "optional" in r.output
    feats = vladata.open(tmp_path / "o.vla").features
    assert "observation.images.wrist" in feats and not any("depth" in f for f in feats)


def test_oxe_taco_play_without_its_action_key_is_still_refused(tmp_path):
    from vladata.samples import oxe as samples
    schema = samples.schema_for("taco_play")
    del schema["steps"]["observation"]["robot_obs"]
    eps = samples.generate("taco_play", 1, schema=schema, steps=(3, 4))
    src = samples.write_dataset(tmp_path / "taco", "taco_play", schema, {"train": eps}, shards=1)
    refused(tmp_path, ["oxe", str(src)], tmp_path / "o.vla", "features.json",
            "observation/robot_obs")


# -- HDF5: mapping globs, external links and storage, mixed ALOHA recordings --------------------

MAPPING = {"version": 1, "format": "hdf5", "name": "t", "fps": 10,
           "episodes": {"files": "*.h5"},
           "features": {"observation.state": {"key": "state"}, "action": {"key": "action"}}}


def _h5_episode(path: Path, n: int = 4, **datasets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["state"] = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        for k, v in datasets.items():
            f[k] = v
        if "action" not in f:
            f["action"] = np.ones((n, 2), np.float32)


def _mapping(tmp_path: Path, **episodes) -> Path:
    m = dict(MAPPING, episodes={**MAPPING["episodes"], **episodes})
    p = tmp_path / "mapping.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


@pytest.mark.parametrize("glob", ["../x/*.h5", "/abs/x/*.h5"])
def test_hdf5_mapping_glob_outside_the_source(tmp_path, glob):
    _h5_episode(tmp_path / "src/ep_0.h5")
    _h5_episode(tmp_path / "x/ep_0.h5")
    m = _mapping(tmp_path, files=glob)
    refused(tmp_path, ["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map", str(m)],
            tmp_path / "o.vla", str(m), "episodes.files", glob, "outside the dataset")


def test_hdf5_mapping_glob_outside_allowed(tmp_path):
    _h5_episode(tmp_path / "src/ep_0.h5")
    _h5_episode(tmp_path / "x/ep_0.h5", n=5)
    m = _mapping(tmp_path, files="../x/*.h5")
    converted(["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map", str(m),
               "--allow-outside"], tmp_path / "o.vla")
    assert vladata.open(tmp_path / "o.vla").summary()["frames"] == 5


def test_hdf5_external_link_outside_the_source(tmp_path):
    _h5_episode(tmp_path / "outside/secret.h5", action=np.full((4, 2), 7, np.float32))
    ep = tmp_path / "src/ep_0.h5"
    with h5py.File(tmp_path / "outside/secret.h5", "a") as f:
        f.move("action", "payload")
    _h5_episode(ep, action=h5py.ExternalLink("../outside/secret.h5", "/payload"))
    m = _mapping(tmp_path)
    args = ["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map", str(m)]
    refused(tmp_path, args, tmp_path / "o.vla", str(ep), "'action'", "secret.h5",
            "--allow-outside")
    converted([*args, "--allow-outside"], tmp_path / "o.vla")
    np.testing.assert_array_equal(vladata.open(tmp_path / "o.vla").array("action")[:],
                                  np.full((4, 2), 7, np.float32))


def test_hdf5_external_storage_outside_the_source(tmp_path):
    raw = tmp_path / "outside/action.bin"
    raw.parent.mkdir()
    np.full((4, 2), 3, np.float32).tofile(raw)
    ep = tmp_path / "src/ep_0.h5"
    _h5_episode(ep, action=np.ones((4, 2), np.float32))
    with h5py.File(ep, "a") as f:
        del f["action"]
        f.create_dataset("action", (4, 2), np.float32, external=[(str(raw), 0, 32)])
    refused(tmp_path, ["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map",
                       str(_mapping(tmp_path))], tmp_path / "o.vla", str(ep), "'action'",
            str(raw))


def test_hdf5_external_link_inside_the_source_is_followed(tmp_path):
    _h5_episode(tmp_path / "src/parts/actions.h5", action=np.full((4, 2), 5, np.float32))
    _h5_episode(tmp_path / "src/ep_0.h5", action=h5py.ExternalLink("parts/actions.h5", "/action"))
    converted(["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map",
               str(_mapping(tmp_path, files="ep_*.h5"))], tmp_path / "o.vla")
    assert float(vladata.open(tmp_path / "o.vla").array("action")[0, 0]) == 5.0


def test_hdf5_corrupt_file_names_file_and_episode(tmp_path):
    from vladata.samples.hdf5 import write_aloha
    write_aloha(tmp_path / "src", episodes=2, length=3, size=(8, 10))
    f = tmp_path / "src/episode_1.hdf5"
    buf = bytearray(f.read_bytes())
    buf[len(buf) // 2:len(buf) // 2 + 64] = bytes(64)
    buf = buf[:len(buf) * 3 // 4]
    f.write_bytes(bytes(buf))
    refused(tmp_path, ["hdf5", str(tmp_path / "src"), "--layout", "aloha"], tmp_path / "o.vla",
            "episode_1.hdf5")


def test_aloha_with_and_without_compress_in_one_folder(tmp_path):
    from vladata.samples.hdf5 import write_aloha
    raw = write_aloha(tmp_path / "a", episodes=1, length=4, size=(8, 10))
    jpeg = write_aloha(tmp_path / "b", episodes=1, length=5, size=(8, 10), compress=True)
    shutil.move(tmp_path / "b/episode_0.hdf5", tmp_path / "a/episode_1.hdf5")
    converted(["hdf5", str(tmp_path / "a"), "--layout", "aloha"], tmp_path / "o.vla")
    ds = vladata.open(tmp_path / "o.vla")
    assert ds.summary()["frames"] == 9
    np.testing.assert_array_equal(ds.array("observation.state")[:4],
                                  raw[0]["observations/qpos"])
    np.testing.assert_array_equal(ds.array("observation.state")[4:],
                                  jpeg[0]["observations/qpos"])
    cam = next(k for k in ds.features if k.startswith("observation.images."))
    assert ds.array(cam)[:].shape == (9, 8, 10, 3)
    assert ds.info["source_info"]["compress"] == "per file"


# -- ROS 2: storage files listed outside the bag ---------------------------------------------------

def test_ros2_metadata_storage_file_outside_the_bag(tmp_path):
    from vladata.samples.rosbag import write_sample
    src = tmp_path / "bags"
    write_sample(src, "sqlite3", episodes=1, duration_s=0.3, size=(4, 6))
    bag = next(p for p in src.iterdir() if p.is_dir())
    meta = bag / "metadata.yaml"
    doc = yaml.safe_load(meta.read_text())
    info = doc["rosbag2_bagfile_information"]
    info["relative_file_paths"] = ["../../elsewhere/x.db3"]
    meta.write_text(yaml.safe_dump(doc))
    refused(tmp_path, ["rosbag", str(src), "--map", str(src / "mapping.yaml")],
            tmp_path / "o.vla", str(meta), "x.db3", "outside the dataset")


def test_lerobot_corrupt_embedded_png(tmp_path):
    from vladata.samples.lerobot import write_sample
    d = tmp_path / "ds"
    write_sample(d, "v3.0", episodes=1, lengths=[3], cameras=(), image_cameras=("wrist",),
                 size=(8, 8))
    p = next((d / "data").rglob("*.parquet"))
    t = pq.read_table(p)
    key = "observation.images.wrist"
    rows = t.column(key).to_pylist()
    rows[1] = {**rows[1], "bytes": rows[1]["bytes"][:40]}  # PNG signature, truncated chunks
    t = t.set_column(t.column_names.index(key), key, pa.array(rows, t.schema.field(key).type))
    pq.write_table(t, p)
    refused(tmp_path, ["lerobot", str(d)], tmp_path / "o.vla", str(p), "episode 0", f"'{key}'",
            "frame 1", "corrupt png")


def test_hdf5_virtual_dataset_outside_the_source(tmp_path):
    _h5_episode(tmp_path / "outside/src.h5", action=np.full((4, 2), 9, np.float32))
    ep = tmp_path / "src/ep_0.h5"
    _h5_episode(ep)
    layout = h5py.VirtualLayout(shape=(4, 2), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(tmp_path / "outside/src.h5"), "action", shape=(4, 2))
    with h5py.File(ep, "a") as f:
        del f["action"]
        f.create_virtual_dataset("action", layout)
    refused(tmp_path, ["hdf5", str(tmp_path / "src"), "--layout", "mapping", "--map",
                       str(_mapping(tmp_path))], tmp_path / "o.vla", str(ep), "'action'",
            "src.h5")


def test_oxe_integer_outside_its_declared_dtype(tmp_path):
    import copy

    from vladata.samples import oxe as samples
    name = "fractal20220817_data"
    schema = samples.schema_for(name)
    eps = samples.generate(name, 2, steps=(3, 4), schema=schema)
    eps[0]["steps"]["action/terminate_episode"][:] = 1
    eps[1]["steps"]["action/terminate_episode"][:] = 300
    src = samples.write_dataset(tmp_path / "fractal", name, schema, {"train": eps}, shards=1)
    declared = copy.deepcopy(schema)  # features.json says int8, the records hold 300
    leaf = declared["steps"]["action"]["terminate_episode"]
    declared["steps"]["action"]["terminate_episode"] = (*leaf[:2], "int8", *leaf[3:])
    (src / "features.json").write_text(json.dumps(samples.features_json(declared)))
    refused(tmp_path, ["oxe", str(src)], tmp_path / "o.vla", "record 1",
            "'steps/action/terminate_episode'", "out of range as int8")


@pytest.mark.parametrize("change, key", [
    ({"fps": "ten"}, "fps"), ({"chunks_size": 0}, "chunks_size"),
    ({"features": {"action": {"dtype": "float32", "shape": "7"}}}, "features.action"),
    ({"data_path": 3}, "data_path")])
def test_lerobot_info_json_field_types(lerobot, tmp_path, change, key):
    info = _set_info(lerobot, **change)
    refused(tmp_path, ["lerobot", str(lerobot)], tmp_path / "o.vla", str(info), f"'{key}'")


@pytest.fixture()
def bags(tmp_path):
    from vladata.samples.rosbag import write_sample
    src = tmp_path / "bags"
    write_sample(src, "ros1", episodes=2, duration_s=0.3, size=(4, 6))
    return src


def test_rosbag_float_field_mapped_to_an_integer_dtype(bags, tmp_path):
    m = bags / "mapping.yaml"
    doc = yaml.safe_load(m.read_text())
    doc["features"]["action"]["dtype"] = "int16"
    m.write_text(yaml.safe_dump(doc))
    refused(tmp_path, ["rosbag", str(bags), "--map", str(m)], tmp_path / "o.vla",
            "episode_0.bag", "'/arm/command'", "floats are not cast")


def test_rosbag_truncated_bag(bags, tmp_path):
    bag = sorted(bags.glob("*.bag"))[1]
    bag.write_bytes(bag.read_bytes()[:len(bag.read_bytes()) * 2 // 3])
    refused(tmp_path, ["rosbag", str(bags), "--map", str(bags / "mapping.yaml")],
            tmp_path / "o.vla", bag.name)
