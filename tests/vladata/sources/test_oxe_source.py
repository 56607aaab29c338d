"""OxeSource: every feature of every step round-trips from the TFDS fixture, splits and shards in
order, raw mode and datasets outside the table, bad records (caught or skipped and counted),
pickling, the parallel scan, the store end to end and the CLI."""

from __future__ import annotations

import io
import json
import pickle
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vladata
from cli.convert_oxe import command
from vladata.errors import SourceFormatError
from vladata.samples import oxe as samples
from vladata.sources.oxe import OxeSource
from vladata.sources.oxe.decode import FeatureMismatchError
from vladata.sources.oxe.example_proto import Example
from vladata.sources.oxe.tfrecord import (HEADER, CorruptRecordError, RecordError,
                                          TruncatedRecordError, scan_records, write_records)
from vladata.store.writer import convert

ALL = sorted(samples.SCHEMAS)


def _pixels(buf: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(buf)))  # PIL, independent of the source's decoder
    return a[..., None] if a.ndim == 2 else a


def _raw_expected(spec, keys, steps, T):
    """A feature's expected frames from the generated raw values, by how the source says it
    was produced (``describe()['feature_sources']``)."""
    rel = [k[len("steps/"):] for k in keys]
    if spec.kind in ("image",) or (spec.kind == "depth" and spec.source_dtype == "uint16"):
        return np.stack([_pixels(b) for b in steps[rel[0]]]).reshape(T, *spec.shape)
    if len(rel) > 1 or spec.names and rel[0].startswith("action"):
        return np.concatenate([np.asarray(steps[k], np.float32).reshape(T, -1) for k in rel], 1)
    v = np.asarray(steps[rel[0]])
    if spec.dtype == "float32":
        v = v.astype(np.float32)
    return v.reshape(T, *spec.shape)


def _build(tmp_path, ds, n=6, seed=0, shards=2, splits=("train", "val")):
    eps = samples.generate(ds, n, seed=seed)
    cut = n - n // 3
    by = {splits[0]: eps[:cut], splits[1]: eps[cut:]} if len(splits) == 2 else {splits[0]: eps}
    d = samples.write_dataset(tmp_path / ds, ds, samples.SCHEMAS[ds], by, shards=shards)
    return d, by


@pytest.mark.parametrize("ds", ALL)
def test_every_feature_of_every_step_round_trips(tmp_path, ds):
    d, by = _build(tmp_path, ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = OxeSource(d, progress=False)
    plan, feats, desc = src.plan(), src.features(), src.describe()
    eps = [(split, e) for split, es in by.items() for e in es]
    assert [p.split for p in plan] == [s for s, _ in eps]
    shard_of = [p.source_id.split("/")[1].split("#")[0] for p in plan]
    assert shard_of == sorted(shard_of, key=lambda f: (f.split("-")[-4] != "train", f))
    a, b = (src.config.trim if src.standardize else (0, 0))
    derived = {"observation.state", "action"} if src.standardize else set()
    for i, (split, ep) in enumerate(eps):
        T = len(ep["steps"]["is_first"])
        got = src.read(i)
        assert set(got) == set(feats)
        for name, spec in feats.items():
            assert got[name].dtype == np.dtype(spec.dtype) and got[name].shape[1:] == spec.shape
            if name in derived:
                continue  # checked against a direct computation in test_oxe_standardize.py
            want = _raw_expected(spec, desc["feature_sources"][name], ep["steps"], T)[a:T - b]
            np.testing.assert_array_equal(got[name], want, err_msg=f"{ds} episode {i} {name}")
        # a sub-range is the same frames
        part = src.read(i, 1, 3)
        for name in feats:
            np.testing.assert_array_equal(part[name], got[name][1:3])


def test_feature_names_of_a_standardised_dataset(tmp_path):
    d, _ = _build(tmp_path, "fractal20220817_data", n=2, splits=("train",))
    f = OxeSource(d, progress=False).features()
    assert list(f) == [
        "observation.images.primary", "observation.state", "action", "action.raw",
        "is_terminal", "observation.raw.base_pose_tool_reached", "observation.raw.gripper_closed",
        "observation.raw.height_to_bottom", "observation.raw.orientation_box",
        "observation.raw.vector_to_go", "observation.raw.workspace_bounds", "reward"]
    assert f["action.raw"].names == (
        "base_displacement_vector.0", "base_displacement_vector.1",
        "base_displacement_vertical_rotation", "gripper_closedness_action", "rotation_delta.0",
        "rotation_delta.1", "rotation_delta.2", "terminate_episode.0", "terminate_episode.1",
        "terminate_episode.2", "world_vector.0", "world_vector.1", "world_vector.2")
    assert f["observation.raw.orientation_box"].shape == (2, 3)


def test_sample_at_real_camera_sizes(tmp_path):
    d = samples.write_sample(tmp_path / "taco", "taco_play", episodes=2, real_sizes=True,
                             steps=(3, 4))
    f = OxeSource(d, progress=False).features()
    assert f["observation.images.primary"].shape == (150, 200, 3)
    assert f["observation.images.wrist"].shape == (84, 84, 3)


def test_unknown_dataset_converts_raw_with_a_message(tmp_path):
    d, _ = _build(tmp_path, "example_unlisted", n=3, splits=("train",))
    with pytest.warns(UserWarning, match=r"not in the OXE standardisation table.*add "
                                         r"OXE_TABLE\['example_unlisted'\]"):
        src = OxeSource(d, progress=False)
    desc = src.describe()
    assert not desc["standardized"] and "OXE_TABLE['example_unlisted']" in desc["message"]
    assert "gripper" not in desc  # a raw action's convention is not guessed
    f = src.features()
    assert f["action"].shape == (4,) and "observation.state" not in f
    assert f["observation.images.gray"].shape == (10, 12, 1)
    assert f["observation.precise"].source_dtype == "float64"
    assert src.plan()[0].metadata["episode_metadata/episode_id"] is not None


def test_raw_mode_and_dataset_override(tmp_path):
    d, by = _build(tmp_path, "droid", n=3, splits=("train",))
    src = OxeSource(d, standardize=False, progress=False)
    assert src.message is None and "observation.state" not in src.features()
    np.testing.assert_array_equal(src.read(0)["action"],
                                  np.asarray(by["train"][0]["steps"]["action"], np.float32))
    assert "observation.images.exterior_image_1_left" in src.features()
    # the same files under another name, standardised by naming the table entry
    info = json.loads((d / "dataset_info.json").read_text())
    assert OxeSource(d, dataset="droid", progress=False).standardize
    info["name"] = "my_droid_copy"
    (d / "dataset_info.json").write_text(json.dumps(info))
    for f in d.glob("droid-*"):
        f.rename(d / f.name.replace("droid-", "my_droid_copy-"))
    assert OxeSource(d, dataset="droid", progress=False).standardize
    with pytest.raises(SourceFormatError, match="needs step keys"):
        OxeSource(d, dataset="language_table", progress=False)


def test_splits_selection_and_errors(tmp_path):
    d, by = _build(tmp_path, "language_table", n=6)
    src = OxeSource(d, splits=["val"], progress=False)
    assert [p.split for p in src.plan()] == ["val"] * len(by["val"])
    with pytest.raises(SourceFormatError, match=r"no split\(s\) \['nope'\]"):
        OxeSource(d, splits=["nope"], progress=False)


def test_pickled_source_reads_the_same_frames(tmp_path):
    d, _ = _build(tmp_path, "taco_play", n=4)
    src = OxeSource(d, progress=False)
    before = src.read(3)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._plan is None and clone._fds == {}  # paths, settings and the compact plan
    for k, v in clone.read(3).items():
        np.testing.assert_array_equal(v, before[k])
    fresh = pickle.loads(pickle.dumps(OxeSource(d, progress=False)))  # not planned yet
    np.testing.assert_array_equal(fresh.read(3)["action"], before["action"])


def test_parallel_scan_equals_serial(tmp_path):
    d, _ = _build(tmp_path, "bridge", n=8, shards=3)
    serial = OxeSource(d, progress=False, scan_workers=1).plan()
    par = OxeSource(d, progress=False, scan_workers=2).plan()
    assert [(p.source_id, p.length, p.split, [(g.start, g.end, g.instruction) for g in p.segments])
            for p in par] == [(p.source_id, p.length, p.split,
                               [(g.start, g.end, g.instruction) for g in p.segments])
                              for p in serial]


def test_shards_written_by_the_tfrecord_package_read_the_same(tmp_path):
    """An independent writer (PyPI ``tfrecord``: its own protobuf and CRC code) gives the same
    episodes as the sample writer: the fixtures' encoding is not ours alone."""
    tfrecord = pytest.importorskip("tfrecord")
    ds = "language_table"
    d, by = _build(tmp_path, ds, n=3, shards=1, splits=("train",))
    src = OxeSource(d, progress=False)
    before = [src.read(i) for i in range(3)]
    w = tfrecord.TFRecordWriter(str(d / "language_table-train.tfrecord-00000-of-00001"))
    for ep in by["train"]:
        datum = {}
        for k, leaf in samples.leaves(samples.SCHEMAS[ds]["steps"]):
            v = ep["steps"][k]
            if leaf[0] == "image":
                datum["steps/" + k] = (list(v), "byte")
            elif leaf[2].startswith("float"):
                datum["steps/" + k] = (np.asarray(v, np.float32).ravel(), "float")
            else:
                datum["steps/" + k] = (np.asarray(v).astype(np.int64).ravel(), "int")
        w.write(datum)
    w.close()
    after = OxeSource(d, progress=False)
    assert [p.segments[0].instruction for p in after.plan()] == \
           [p.segments[0].instruction for p in src.plan()]
    for i in range(3):
        for k, v in after.read(i).items():
            np.testing.assert_array_equal(v, before[i][k], err_msg=k)


# -- bad input ----------------------------------------------------------------------------------

@pytest.fixture
def bad_dir(tmp_path):
    d, _ = _build(tmp_path, "fractal20220817_data", n=6, shards=2, splits=("train",))
    return d


def _shard(d, k=0):
    return d / f"fractal20220817_data-train.tfrecord-0000{k}-of-00002"


def _refs(path):
    return [r for r, _ in scan_records(path)]


def test_crc_mismatch_is_caught_and_skippable(bad_dir):
    p = _shard(bad_dir)
    ref = _refs(p)[1]
    b = bytearray(p.read_bytes())
    b[ref.offset + HEADER + 50] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(CorruptRecordError, match=rf"{p.name}, record 1 .*CRC mismatch"):
        OxeSource(bad_dir, progress=False).plan()
    src = OxeSource(bad_dir, skip_bad_records=True, progress=False)
    assert len(src.plan()) == 5 and "#1" not in " ".join(i.source_id for i in src.plan()[:2])
    (msg,) = src.skipped()
    assert p.name in msg and "record 1" in msg and "CRC" in msg
    assert src.describe()["skipped"] == 1


def test_truncated_record_is_caught_and_skippable(bad_dir):
    p = _shard(bad_dir, 1)
    last = _refs(p)[-1]
    p.write_bytes(p.read_bytes()[:last.offset + HEADER + last.length // 2])
    with pytest.raises(TruncatedRecordError, match=rf"{p.name}, record 2 .*file ends inside"):
        OxeSource(bad_dir, progress=False).plan()
    src = OxeSource(bad_dir, skip_bad_records=True, progress=False)
    assert len(src.plan()) == 5 and len(src.skipped()) == 1


def _rewrite(path, index, edit):
    recs = [bytes(d) for _, d in scan_records(path)]
    ex = Example.FromString(recs[index])
    edit(ex.features.feature)
    recs[index] = ex.SerializeToString()
    write_records(path, recs)


@pytest.mark.parametrize("edit, key, match", [
    (lambda f: f.__delitem__("steps/observation/vector_to_go"), "steps/observation/vector_to_go",
     "key missing from the record"),
    (lambda f: f["steps/action/world_vector"].float_list.value.pop(),
     "steps/action/world_vector", "expected .* values"),
    (lambda f: f["steps/observation/natural_language_instruction"].bytes_list.value.append(b"x"),
     "steps/observation/natural_language_instruction", "entries"),
])
def test_features_mismatch_names_shard_record_key(bad_dir, edit, key, match):
    p = _shard(bad_dir, 1)
    _rewrite(p, 2, edit)
    with pytest.raises(FeatureMismatchError) as e:
        OxeSource(bad_dir, progress=False).plan()
    msg = str(e.value)
    assert f"{p.name}, record 2" in msg and f"key {key!r}" in msg, msg
    assert __import__("re").search(match, msg), msg
    src = OxeSource(bad_dir, skip_bad_records=True, progress=False)
    assert len(src.plan()) == 5 and key in src.skipped()[0]


def test_shard_lengths_and_missing_shards(bad_dir):
    info = json.loads((bad_dir / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"][0] = "4"
    (bad_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(RecordError, match="holds 3 records, dataset_info.json's shardLengths "
                                          "says 4"):
        OxeSource(bad_dir, progress=False).plan()
    _shard(bad_dir, 1).unlink()
    src = OxeSource(bad_dir, skip_bad_records=True, progress=False)
    assert len(src.plan()) == 3
    assert any("shard file missing" in s for s in src.skipped())


def test_undecodable_jpeg_fails_at_read_naming_step(bad_dir):
    p = _shard(bad_dir)

    def garble(f):
        v = f["steps/observation/image"].bytes_list.value
        v[2] = b"\xff\xd8" + b"\x00" * 30
    _rewrite(p, 0, garble)
    src = OxeSource(bad_dir, progress=False)
    src.plan()  # magic bytes are right: planned
    with pytest.raises(FeatureMismatchError, match=r"record 0, key 'steps/observation/image': "
                                                   r"step 2: undecodable JPEG"):
        src.read(0)


# -- the store and the CLI ------------------------------------------------------------------------

def test_converted_store_equals_the_source(tmp_path):
    d, _ = _build(tmp_path, "droid", n=4)
    src = OxeSource(d, progress=False)
    out = tmp_path / "droid.vla"
    summary = convert(src, out, progress=False)
    ds = vladata.open(out)
    assert ds.episodes.height == 4
    for i in (0, 3):
        got, want = ds.episode(i), src.read(i)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert summary.segments == sum(len(p.segments) for p in src.plan())
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["vlakit"]
    assert attrs["source_info"]["gripper"] == "0/1" and attrs["fps"] == 15.0


def test_cli_converts_and_counts_skips(tmp_path):
    d, _ = _build(tmp_path, "language_table", n=6, splits=("train",))
    p = d / "language_table-train.tfrecord-00000-of-00002"
    b = bytearray(p.read_bytes())
    b[-3] ^= 1  # the last record's data CRC
    p.write_bytes(bytes(b))
    out = tmp_path / "lt.vla"
    r = CliRunner().invoke(command, [str(d), str(out)])
    assert r.exit_code == 1 and "CRC mismatch" in r.output and "record 2" in r.output
    r = CliRunner().invoke(command, [str(d), str(out), "--skip-bad-records", "--json",
                                     "--overwrite"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["episodes"] == 5 and len(summary["skipped"]) == 1
    assert "record 2" in summary["skipped"][0]
    r = CliRunner().invoke(command, [str(d), str(tmp_path / "raw.vla"), "--raw", "--split",
                                     "train", "--skip-bad-records", "--fps", "7.5"])
    assert r.exit_code == 0, r.output
    raw = vladata.open(tmp_path / "raw.vla")
    assert "observation.instruction" in raw.features and "observation.state" not in raw.features
    assert raw.info["fps"] == 7.5
