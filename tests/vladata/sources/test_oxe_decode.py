"""TFDS metadata parsing and decoding of serialized episodes (features.json <-> records)."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from vladata.errors import SourceFormatError
from vladata.samples import oxe as samples
from vladata.sources.oxe.decode import FeatureMismatchError, Record
from vladata.sources.oxe.example_proto import Example
from vladata.sources.oxe.tfds import Leaf, parse_dataset_info, parse_features, shard_name


def _write_meta(d, schema, name="toy", splits=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "features.json").write_text(json.dumps(samples.features_json(schema)))
    info = {"name": name, "version": "1.0.0", "fileFormat": "tfrecord",
            "splits": splits or [{"name": "train", "shardLengths": ["2", "1"],
                                  "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-"
                                                      "{SHARD_X_OF_Y}"}]}
    (d / "dataset_info.json").write_text(json.dumps(info))
    return d


def test_features_json_flattens_to_serialized_keys(tmp_path):
    d = _write_meta(tmp_path, samples.SCHEMAS["droid"])
    leaves = {lf.key: lf for lf in parse_features(d)}
    assert leaves["steps/observation/wrist_image_left"] == Leaf(
        "steps/observation/wrist_image_left", "image", "uint8", (18, 32, 3), "jpeg", True,
        "Camera.")
    assert leaves["steps/action_dict/gripper_position"].dtype == "float64"
    assert leaves["steps/is_first"].shape == () and leaves["steps/is_first"].dtype == "bool"
    assert leaves["steps/language_instruction"].kind == "text"
    assert not leaves["episode_metadata/file_path"].in_steps
    assert leaves["steps/observation/cartesian_position"].rel == "observation/cartesian_position"
    d2 = _write_meta(tmp_path / "u", samples.SCHEMAS["example_unlisted"])
    leaves = {lf.key: lf for lf in parse_features(d2)}
    assert leaves["steps/observation/gray"].encoding == ""  # no encodingFormat: bytes decide
    assert leaves["steps/observation/packed"].encoding == "zlib"
    assert leaves["steps/observation/packed"].is_bytes


def test_dataset_info_shard_names(tmp_path):
    d = _write_meta(tmp_path, samples.SCHEMAS["bridge"], name="bridge")
    info = parse_dataset_info(d)
    assert info.name == "bridge" and info.version == "1.0.0"
    (split,) = info.splits
    assert split.shard_files == ("bridge-train.tfrecord-00000-of-00002",
                                 "bridge-train.tfrecord-00001-of-00002")
    assert split.shard_lengths == (2, 1)
    assert shard_name("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "d", "test", "tfrecord",
                      3, 1024) == "d-test.tfrecord-00003-of-01024"


@pytest.mark.parametrize("bad, match", [
    ({"pythonClassName": "tensorflow_datasets.core.features.video_feature.Video"},
     "unsupported TFDS feature class"),
    ({"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
      "tensor": {"shape": {"dimensions": ["3"]}, "dtype": "complex64"}}, "unsupported dtype"),
    ({"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
      "image": {"shape": {"dimensions": ["-1", "4", "3"]}, "dtype": "uint8"}}, "static"),
])
def test_unsupported_features_are_named(tmp_path, bad, match):
    d = _write_meta(tmp_path, {"steps": {"is_first": samples.BOOL, "obs": samples.F32}})
    tree = json.loads((d / "features.json").read_text())
    steps = tree["featuresDict"]["features"]["steps"]["sequence"]["feature"]
    steps["featuresDict"]["features"]["obs"] = bad
    (d / "features.json").write_text(json.dumps(tree))
    with pytest.raises(SourceFormatError, match=f"key 'steps/obs'.*{match}"):
        parse_features(d)


def test_missing_and_invalid_metadata_files(tmp_path):
    with pytest.raises(SourceFormatError, match="dataset_info.json.*missing"):
        parse_dataset_info(tmp_path)
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(SourceFormatError, match="invalid JSON"):
        parse_dataset_info(tmp_path)


# -- decoding ---------------------------------------------------------------------------------

LEAVES = [
    Leaf("steps/is_first", "tensor", "bool", ()),
    Leaf("steps/action", "tensor", "float64", (3,)),
    Leaf("steps/obs/ids", "tensor", "int32", (2,)),
    Leaf("steps/obs/big", "tensor", "uint64", ()),
    Leaf("steps/obs/z", "tensor", "float32", (2, 2), "zlib"),
    Leaf("steps/obs/b", "tensor", "int16", (3,), "bytes"),
    Leaf("steps/obs/cam", "image", "uint8", (4, 6, 3), "jpeg"),
    Leaf("steps/text", "text", "str", ()),
    Leaf("episode_metadata/id", "tensor", "int64", (), in_steps=False),
    Leaf("episode_metadata/path", "text", "str", (), in_steps=False),
]


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _record(T=3, drop=None, cut=None):
    rng = np.random.default_rng(0)
    v = {"action": rng.normal(size=(T, 3)), "ids": rng.integers(-9, 9, (T, 2)),
         "big": np.array([2**63 + 5] * T, np.uint64), "z": rng.normal(size=(T, 2, 2)),
         "b": rng.integers(-300, 300, (T, 3)).astype(np.int16),
         "cam": rng.integers(0, 255, (T, 4, 6, 3), dtype=np.uint8)}
    ex = Example()
    f = ex.features.feature
    f["steps/is_first"].int64_list.value.extend([1] + [0] * (T - 1))
    f["steps/action"].float_list.value.extend(v["action"].ravel().tolist())
    f["steps/obs/ids"].int64_list.value.extend(v["ids"].ravel().tolist())
    f["steps/obs/big"].int64_list.value.extend(v["big"].view(np.int64).tolist())
    f["steps/obs/z"].bytes_list.value.extend(
        [zlib.compress(a.astype(np.float32).tobytes()) for a in v["z"]])
    f["steps/obs/b"].bytes_list.value.extend([a.tobytes() for a in v["b"]])
    f["steps/obs/cam"].bytes_list.value.extend([_png(a) for a in v["cam"]])  # PNG, says jpeg
    f["steps/text"].bytes_list.value.extend(["héllo".encode()] * T)
    f["episode_metadata/id"].int64_list.value.append(42)
    f["episode_metadata/path"].bytes_list.value.append(b"/a/b")
    if drop:
        del f[drop]
    if cut:
        vals = getattr(f[cut], f[cut].WhichOneof("kind")).value
        del vals[-1]
    return Record(ex.SerializeToString(), "toy-train.tfrecord-00000-of-00001", 5), v


def test_decode_every_kind():
    rec, v = _record()
    T = rec.length(LEAVES)
    assert T == 3
    rec.check(LEAVES, T)
    by = {lf.key: lf for lf in LEAVES}
    a = rec.tensor(by["steps/action"], T)
    assert a.dtype == np.float32  # float64 is stored as float32
    np.testing.assert_array_equal(a, v["action"].astype(np.float32))
    np.testing.assert_array_equal(rec.tensor(by["steps/is_first"], T), [True, False, False])
    ids = rec.tensor(by["steps/obs/ids"], T)
    assert ids.dtype == np.int32 and (ids == v["ids"]).all()
    np.testing.assert_array_equal(rec.tensor(by["steps/obs/big"], T), v["big"])
    np.testing.assert_array_equal(rec.tensor(by["steps/obs/z"], T), v["z"].astype(np.float32))
    np.testing.assert_array_equal(rec.tensor(by["steps/obs/b"], T), v["b"])
    np.testing.assert_array_equal(rec.images(by["steps/obs/cam"], 1, 3), v["cam"][1:3])
    assert rec.texts(by["steps/text"]) == ["héllo"] * 3
    assert rec.tensor(by["episode_metadata/id"], T) == 42
    assert rec.texts(by["episode_metadata/path"]) == ["/a/b"]


@pytest.mark.parametrize("drop, cut, key, match", [
    ("steps/obs/ids", None, "steps/obs/ids", "key missing from the record"),
    (None, "steps/action", "steps/action", r"expected 9 values \(3 step\(s\) x shape \(3,\)"),
    (None, "steps/obs/cam", "steps/obs/cam", "expected 3 entries"),
    (None, "episode_metadata/path", "episode_metadata/path", "expected 1 entry"),
])
def test_mismatch_names_shard_record_and_key(drop, cut, key, match):
    rec, _ = _record(drop=drop, cut=cut)
    with pytest.raises(FeatureMismatchError) as e:
        rec.check(LEAVES, rec.length(LEAVES))
    msg = str(e.value)
    assert "toy-train.tfrecord-00000-of-00001, record 5" in msg and f"key {key!r}" in msg
    assert e.value.key == key and e.value.record == 5
    assert __import__("re").search(match, msg), msg


def test_wrong_list_kind_and_bad_payloads():
    rec, _ = _record()
    leaves = [lf if lf.key != "steps/obs/ids" else Leaf(lf.key, "tensor", "float32", (2,))
              for lf in LEAVES]
    with pytest.raises(FeatureMismatchError, match="stored as int64_list.*float_list"):
        rec.check(leaves, 3)
    wrong = [lf if lf.key != "steps/obs/z" else Leaf(lf.key, "tensor", "float32", (5,), "zlib")
             for lf in LEAVES]
    with pytest.raises(FeatureMismatchError, match="step 0: 16 bytes, expected 20"):
        rec.check(wrong, 3)
    with pytest.raises(FeatureMismatchError, match="not a serialized tf.train.Example"):
        Record(b"\xff\xff\xff", "f", 0)


def test_images_are_told_apart_by_magic_and_checked():
    rng = np.random.default_rng(1)
    ex = Example()
    f = ex.features.feature
    f["steps/is_first"].int64_list.value.extend([1, 0])
    pic = rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)
    jpeg = samples.encode_image(pic, "jpeg")
    f["steps/cam"].bytes_list.value.extend([jpeg, b"GIF89a..."])
    rec = Record(ex.SerializeToString(), "s", 0)
    lf = Leaf("steps/cam", "image", "uint8", (4, 6, 3), "png")  # declared png, is jpeg
    got = rec.images(lf, 0, 1)
    np.testing.assert_array_equal(got[0], np.asarray(Image.open(io.BytesIO(jpeg))))
    with pytest.raises(FeatureMismatchError, match="step 1: neither JPEG nor PNG"):
        rec.check([Leaf("steps/is_first", "tensor", "bool", ()), lf], 2)
    small = Leaf("steps/cam", "image", "uint8", (8, 6, 3), "jpeg")
    with pytest.raises(FeatureMismatchError, match=r"step 0: JPEG is 4x6, features.json says 8x6"):
        rec.images(small, 0, 1)
