"""HDF5 sources: ALOHA (raw and JPEG-compressed), robomimic, and mapping-driven custom layouts."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import vladata
from tests.vladata.sources.conformance import SourceConformance
from vladata.errors import SourceFormatError
from vladata.samples import hdf5 as samples
from vladata.sources.hdf5 import Hdf5Source, natural_key
from vladata.sources.hdf5_layouts import ALOHA_NAMES
from vladata.sources.mapping import MappingError
from vladata.store.writer import convert

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"
ALOHA_FEATURES = {"observation.state": "observations/qpos",
                  "observation.velocity": "observations/qvel",
                  "observation.effort": "observations/effort", "action": "action"}


@pytest.fixture(scope="module")
def aloha_raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("aloha_raw")
    return d, samples.write_aloha(d, episodes=3, length=[5, 7, 4], base_action=True)


@pytest.fixture(scope="module")
def aloha_jpeg(tmp_path_factory):
    d = tmp_path_factory.mktemp("aloha_jpeg")
    return d, samples.write_aloha(d, episodes=2, length=5, compress=True)


@pytest.fixture(scope="module")
def robomimic(tmp_path_factory):
    p = tmp_path_factory.mktemp("robomimic") / "demo.hdf5"
    return p, samples.write_robomimic(p, demos=12, language=True)


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    d = tmp_path_factory.mktemp("custom")
    return d, samples.write_custom(d, episodes=3, length=5)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# -- ALOHA -------------------------------------------------------------------------------------

def test_aloha_raw_round_trips_every_feature_of_every_frame(aloha_raw):
    d, written = aloha_raw
    src = Hdf5Source(str(d), layout="aloha")
    assert src.fps == 50.0 and src.name == "aloha"
    feats = src.features()
    cams = [f"observation.images.{c}" for c in sorted(samples.ALOHA_CAMERAS)]
    assert list(feats) == cams + list(ALOHA_FEATURES) + ["action.base"]
    assert feats["action"].names == ALOHA_NAMES and feats["action"].dtype == "float32"
    assert feats["observation.state"].source_dtype is None  # ACT stores float32
    plan = src.plan()
    assert [(e.source_id, e.length, e.split) for e in plan] == \
        [("episode_0.hdf5", 5, "train"), ("episode_1.hdf5", 7, "train"),
         ("episode_2.hdf5", 4, "train")]
    for i, w in enumerate(written):
        got = src.read(i)
        assert set(got) == set(feats)
        for name, key in ALOHA_FEATURES.items():
            np.testing.assert_array_equal(got[name], w[key])
        np.testing.assert_array_equal(got["action.base"], w["base_action"])
        for c in samples.ALOHA_CAMERAS:
            np.testing.assert_array_equal(got[f"observation.images.{c}"],
                                          w[f"observations/images/{c}"])
    d_ = src.describe()
    assert d_["gripper"] is None  # two grippers (dims 6, 13): not a single last dimension
    assert "0 = closed, 1 = open" in d_["gripper_meaning"] and d_["compress"] is False
    assert d_["action_names"] == list(ALOHA_NAMES)


def test_aloha_jpeg_decodes_to_the_recorded_rgb_array(aloha_jpeg):
    d, written = aloha_jpeg
    src = Hdf5Source(str(d), layout="aloha")
    assert src.features()["observation.images.cam_high"].shape == (24, 32, 3)
    assert src.describe()["compress"] is True
    with h5py.File(d / "episode_0.hdf5") as f:
        assert f["observations/images/cam_high"].ndim == 2 and f["compress_len"].shape == (4, 5)
        raw = f["observations/images/cam_high"][0]
    for i, w in enumerate(written):
        got = src.read(i)
        for name, key in ALOHA_FEATURES.items():
            np.testing.assert_array_equal(got[name], w[key])
        for c in samples.ALOHA_CAMERAS:
            img, truth = got[f"observation.images.{c}"].astype(int), w[f"observations/images/{c}"]
            assert np.abs(img - truth).mean() < 4  # JPEG quality 50
            # channel order: the recorded array is red-heavy, blue-light; a swap would show
            assert img[..., 0].mean() > 150 > 50 > img[..., 2].mean()
            assert np.abs(img[..., 0].mean() - truth[..., 0].mean()) < 3
    # the fact behind it: a standard RGB decoder returns R and B swapped for cv2-written files
    std = np.asarray(Image.open(io.BytesIO(raw.tobytes())).convert("RGB"))
    assert std[..., 2].mean() > 150 > 50 > std[..., 0].mean()


def test_aloha_episodes_in_natural_order(tmp_path):
    samples.write_aloha(tmp_path, episodes=11, length=[2] * 10 + [3], cameras=("cam_high",),
                        size=(4, 4), effort=False)
    src = Hdf5Source(str(tmp_path), layout="aloha")
    ids = [e.source_id for e in src.plan()]
    assert ids == [f"episode_{i}.hdf5" for i in range(11)] and src.plan()[10].length == 3
    assert sorted(["demo_10", "demo_2", "demo_1"], key=natural_key) == \
        ["demo_1", "demo_2", "demo_10"]


def test_aloha_missing_key_names_file_episode_and_key(aloha_raw, tmp_path):
    d = _copy(aloha_raw[0], tmp_path)
    with h5py.File(d / "episode_1.hdf5", "a") as f:
        del f["action"]
    with pytest.raises(SourceFormatError) as ei:
        Hdf5Source(str(d), layout="aloha").plan()
    msg = str(ei.value)
    assert "episode_1.hdf5" in msg and "'action'" in msg and "missing" in msg


def test_aloha_wrong_shape_names_the_key(aloha_raw, tmp_path):
    d = _copy(aloha_raw[0], tmp_path)
    with h5py.File(d / "episode_2.hdf5", "a") as f:
        del f["observations/qvel"]
        f.create_dataset("observations/qvel", data=np.zeros((4, 13), np.float32))
    with pytest.raises(SourceFormatError, match=r"episode_2\.hdf5.*observations/qvel.*\(13,\)"):
        Hdf5Source(str(d), layout="aloha").plan()
    with h5py.File(d / "episode_2.hdf5", "a") as f:
        del f["observations/qvel"]
        f.create_dataset("observations/qvel", data=np.zeros((3, 14), np.float32))
    with pytest.raises(SourceFormatError, match="has 3 frames, other keys have 4"):
        Hdf5Source(str(d), layout="aloha").plan()


def test_aloha_bad_compress_len_and_corrupt_jpeg(aloha_jpeg, tmp_path):
    d = _copy(aloha_jpeg[0], tmp_path)
    with h5py.File(d / "episode_1.hdf5", "a") as f:
        f["observations/images/cam_low"][2, :8] = 7  # destroy the JPEG header of frame 2
    src = Hdf5Source(str(d), layout="aloha")
    with pytest.raises(SourceFormatError) as ei:
        src.read(1)
    msg = str(ei.value)
    assert "episode_1.hdf5" in msg and "cam_low" in msg and "frame 2" in msg
    with h5py.File(d / "episode_1.hdf5", "a") as f:
        del f["compress_len"]
        f.create_dataset("compress_len", data=np.zeros((3, 5), np.float32))
    with pytest.raises(SourceFormatError, match="compress_len"):
        Hdf5Source(str(d), layout="aloha").plan()


def test_unreadable_file_is_a_source_format_error(aloha_raw, tmp_path):
    d = _copy(aloha_raw[0], tmp_path)
    data = (d / "episode_1.hdf5").read_bytes()
    (d / "episode_1.hdf5").write_bytes(data[:600])  # truncated
    with pytest.raises(SourceFormatError, match=r"episode_1\.hdf5.*unreadable HDF5"):
        Hdf5Source(str(d), layout="aloha").plan()


# -- robomimic ---------------------------------------------------------------------------------

def test_robomimic_numeric_order_splits_language_and_values(robomimic):
    path, written = robomimic
    src = Hdf5Source(str(path), layout="robomimic")
    plan = src.plan()
    demos = [e.metadata["demo"] for e in plan]
    assert demos == [f"demo_{i}" for i in range(12)]  # demo_10 after demo_9, not after demo_1
    assert [e.split for e in plan] == ["validation" if i in (2, 10) else "train" for i in range(12)]
    assert plan[0].metadata["filters"] == ["20_percent", "train"]
    assert plan[10].metadata["filters"] == ["valid"]
    assert [(s.start, s.end, s.instruction) for s in plan[3].segments] == \
        [(0, plan[3].length - 1, "lift the cube (demo_3)")]
    feats = src.features()
    assert feats["action"].names == ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
    assert feats["action"].source_dtype == "float64" and feats["action"].dtype == "float32"
    assert feats["observation.state"].shape == (9,)
    assert set(feats) == {"observation.images.agentview", "observation.images.robot0_eye_in_hand",
                          "observation.state", "observation.object", "observation.robot0_joint_pos",
                          "action"}
    for i, e in enumerate(plan):
        w = written[e.metadata["demo"]]
        assert e.length == len(w["actions"])
        got = src.read(i)
        np.testing.assert_array_equal(got["action"], w["actions"].astype(np.float32))
        state = np.concatenate([w["obs/robot0_eef_pos"], w["obs/robot0_eef_quat"],
                                w["obs/robot0_gripper_qpos"]], axis=1).astype(np.float32)
        np.testing.assert_array_equal(got["observation.state"], state)
        np.testing.assert_array_equal(got["observation.object"], w["obs/object"].astype(np.float32))
        np.testing.assert_array_equal(got["observation.images.agentview"], w["obs/agentview_image"])
    d = src.describe()
    assert d["gripper"] == "1/-1" and "robosuite" in d["gripper_meaning"]
    assert d["env_name"] == "Lift" and src.fps == 20.0


def test_robomimic_num_samples_mismatch(robomimic, tmp_path):
    p = tmp_path / "demo.hdf5"
    shutil.copy(robomimic[0], p)
    with h5py.File(p, "a") as f:
        f["data/demo_4"].attrs["num_samples"] = 99
    with pytest.raises(SourceFormatError, match=r"demo\.hdf5.*data/demo_4.*num_samples = 99"):
        Hdf5Source(str(p), layout="robomimic").plan()


def test_robomimic_missing_obs_key_in_one_demo(robomimic, tmp_path):
    p = tmp_path / "demo.hdf5"
    shutil.copy(robomimic[0], p)
    with h5py.File(p, "a") as f:
        del f["data/demo_7/obs/object"]
    with pytest.raises(SourceFormatError) as ei:
        Hdf5Source(str(p), layout="robomimic").plan()
    assert "demo.hdf5:data/demo_7" in str(ei.value) and "data/demo_7/obs/object" in str(ei.value)


# -- mapping layout ----------------------------------------------------------------------------

def test_custom_layout_via_mapping(custom):
    d, written = custom
    src = Hdf5Source(str(d), layout="mapping", mapping_file=str(EXAMPLES / "hdf5_custom.yaml"))
    assert src.name == "my_logger" and src.fps == 15.0
    plan = src.plan()
    assert [e.source_id for e in plan] == ["traj_0.h5:data", "traj_1.h5:data", "traj_2.h5:data"]
    feats = src.features()
    assert feats["observation.state"].names[-1] == "gripper"
    assert feats["observation.state"].source_dtype == "float64"
    for i, w in enumerate(written):
        assert [s.instruction for s in plan[i].segments] == [w["instruction"]]
        got = src.read(i)
        np.testing.assert_array_equal(got["observation.images.front"], w["front"])  # BGR -> RGB
        assert np.abs(got["observation.images.wrist"].astype(int) - w["wrist"]).max() <= 8
        state = np.concatenate([w["robot/joint_pos"], w["robot/gripper"][:, None]], 1)
        np.testing.assert_array_equal(got["observation.state"], state.astype(np.float32))
        action = np.concatenate([w["cmd/ee_delta"], w["cmd/gripper"]], 1)
        np.testing.assert_array_equal(got["action"], action)
    assert src.describe()["gripper"] == "0/1"


def test_per_frame_language_key_becomes_segments(custom, tmp_path):
    d = _copy(custom[0], tmp_path)
    for i in range(3):
        with h5py.File(d / f"traj_{i}.h5", "a") as f:
            f.create_dataset("data/lang", data=["reach", "reach", "grasp", "grasp", "lift"],
                             dtype=h5py.string_dtype())
    m = tmp_path / "m.yaml"
    m.write_text((EXAMPLES / "hdf5_custom.yaml").read_text().replace("attr: instruction",
                                                                     "key: lang"))
    src = Hdf5Source(str(d), layout="mapping", mapping_file=str(m))
    assert [(s.start, s.end, s.instruction) for s in src.plan()[2].segments] == \
        [(0, 1, "reach"), (2, 3, "grasp"), (4, 4, "lift")]


def test_aloha_as_mapping_reads_like_the_aloha_layout(aloha_jpeg):
    d, _ = aloha_jpeg
    a = Hdf5Source(str(d), layout="aloha")
    m = Hdf5Source(str(d), layout="mapping", mapping_file=str(EXAMPLES / "aloha_as_mapping.yaml"))
    assert [e.length for e in a.plan()] == [e.length for e in m.plan()]
    for i in range(len(a.plan())):
        ra, rm = a.read(i), m.read(i)
        for name, v in rm.items():
            np.testing.assert_array_equal(v, ra[name])


def test_mapping_errors(custom, tmp_path):
    d, _ = custom
    p = tmp_path / "m.yaml"
    p.write_text("format: hdf5\nfps: 15\nepisodes: {files: 'traj_*.h5', group: data}\n"
                 "features:\n  action: {key: cmd/nope}\n")
    with pytest.raises(SourceFormatError) as ei:
        Hdf5Source(str(d), layout="mapping", mapping_file=str(p)).features()
    assert "traj_0.h5" in str(ei.value) and "data/cmd/nope" in str(ei.value)
    p.write_text("format: hdf5\nfps: 15\nepisodes: {files: 'traj_*.h5', group: data}\n"
                 "features:\n  action: {key: cmd/ee_delta, names: [a, b]}\n")
    with pytest.raises(SourceFormatError, match="2 names for 6 values"):
        Hdf5Source(str(d), layout="mapping", mapping_file=str(p)).features()
    p.write_text("format: rosbag\nfps: 15\nfeatures:\n  action: {topic: /a}\n")
    with pytest.raises(SourceFormatError, match="not hdf5"):
        Hdf5Source(str(d), layout="mapping", mapping_file=str(p))
    p.write_text("format: hdf5\nfeatures: {observation.state: {key: a, field: b}}\n")
    with pytest.raises(MappingError) as ei:
        Hdf5Source(str(d), layout="mapping", mapping_file=str(p))
    assert len(ei.value.errors) == 3  # fps, field (rosbag only), action missing


def test_sources_are_picklable(aloha_jpeg, robomimic):
    for src in (Hdf5Source(str(aloha_jpeg[0]), layout="aloha"),
                Hdf5Source(str(robomimic[0]), layout="robomimic")):
        src.plan()
        clone = pickle.loads(pickle.dumps(src))
        for name, v in clone.read(1, 1, 3).items():
            np.testing.assert_array_equal(v, src.read(1, 1, 3)[name])


# -- end to end --------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["aloha_jpeg", "robomimic"])
def test_convert_and_open_round_trip(which, request, tmp_path):
    path = request.getfixturevalue(which)[0]
    src = Hdf5Source(str(path), layout="aloha" if which == "aloha_jpeg" else "robomimic")
    convert(src, tmp_path / "out.vla", progress=False)
    ds = vladata.open(tmp_path / "out.vla")
    assert len(ds) == len(src.plan())
    assert ds.episodes["split"].to_list() == [e.split for e in src.plan()]
    assert ds.segments.height == sum(len(e.segments) for e in src.plan())
    for i in range(len(ds)):
        want, got = src.read(i), ds.episode(i)
        for name, v in want.items():
            np.testing.assert_array_equal(got[name], v, err_msg=f"{i} {name}")
    assert ds.info["source_info"]["layout"] == src.layout


class TestAlohaConformance(SourceConformance):
    @pytest.fixture
    def make_source(self, aloha_jpeg):
        return lambda: Hdf5Source(str(aloha_jpeg[0]), layout="aloha")


class TestRobomimicConformance(SourceConformance):
    @pytest.fixture
    def make_source(self, robomimic):
        return lambda: Hdf5Source(str(robomimic[0]), layout="robomimic")


def test_cli_convert_hdf5(aloha_raw, custom, tmp_path):
    from click.testing import CliRunner

    from cli.convert_real import hdf5, sample_hdf5
    runner = CliRunner()
    r = runner.invoke(hdf5, [str(aloha_raw[0]), str(tmp_path / "a.vla"), "--layout", "aloha",
                             "--instruction", "transfer the cube"])
    assert r.exit_code == 0, r.output
    ds = vladata.open(tmp_path / "a.vla")
    assert ds.segments["instruction"].to_list() == ["transfer the cube"] * 3
    r = runner.invoke(hdf5, [str(custom[0]), str(tmp_path / "c.vla"), "--layout", "mapping",
                             "--map", str(EXAMPLES / "hdf5_custom.yaml")])
    assert r.exit_code == 0, r.output
    assert vladata.open(tmp_path / "c.vla").info["source"] == "my_logger"
    r = runner.invoke(hdf5, [str(custom[0]), str(tmp_path / "x.vla"), "--layout", "mapping"])
    assert r.exit_code == 2 and "--map FILE goes with --layout mapping" in r.output
    r = runner.invoke(hdf5, [str(custom[0]), str(tmp_path / "y.vla"), "--layout", "aloha"])
    assert r.exit_code == 1 and "no aloha episodes found" in r.output
    r = runner.invoke(sample_hdf5, [str(tmp_path / "s"), "--layout", "robomimic"])
    assert r.exit_code == 0 and (tmp_path / "s" / "demo.hdf5").exists()
