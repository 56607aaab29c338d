"""ROS bag source: ROS1 / ROS2 sqlite3 / MCAP, the nearest-earlier resampling rule, errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import vladata
from tests.vladata.sources.conformance import SourceConformance
from vladata.errors import SourceFormatError
from vladata.samples import rosbag as samples
from vladata.sources.rosbag import RosbagSource, nearest_earlier, tick_count, ticks
from vladata.store.writer import convert

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"
MS = 1_000_000
T0 = samples.T0_NS


@pytest.fixture(scope="module", params=samples.STORAGES)
def sample(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"bags_{request.param}")
    return d, samples.write_sample(d, request.param, episodes=2), request.param


def _expected(truth: dict, topic: str, tk: np.ndarray) -> list:
    """The documented rule, computed independently: latest message with timestamp <= tick."""
    ts, vals = truth[topic]
    idx = np.searchsorted(ts, tk, side="right") - 1
    assert (idx >= 0).all()
    return [vals[j] for j in idx]


def test_sample_bags_follow_the_nearest_earlier_rule(sample):
    d, truth, storage = sample
    src = RosbagSource(str(d), str(EXAMPLES / "rosbag_arm.yaml"))
    plan = src.plan()
    assert [e.source_id for e in plan] == [samples.bag_path(d, storage, i).name for i in range(2)]
    for i, info in enumerate(plan):
        t = truth[i]
        first = max(t[topic][0][0] for topic in t if topic != "/instruction")
        last = max(t[topic][0][-1] for topic in t if topic != "/instruction")
        assert info.metadata["t0_ns"] == first and info.metadata["storage"] == storage
        tk = first + np.arange(info.length, dtype=np.int64) * 100 * MS  # 10 Hz
        assert tk[-1] <= last < tk[-1] + 100 * MS
        got = src.read(i)
        np.testing.assert_array_equal(got["observation.images.front"],
                                      np.stack(_expected(t, "/camera/front/image_raw", tk)))
        np.testing.assert_array_equal(got["observation.images.wrist"],  # bgr8 -> RGB
                                      np.stack(_expected(t, "/camera/wrist/image_raw", tk)))
        side = np.stack(_expected(t, "/camera/side/image_raw/compressed", tk)).astype(int)
        assert np.abs(got["observation.images.side"].astype(int) - side).max() <= 8  # JPEG q95
        state = np.concatenate([np.stack(_expected(t, "/joint_states", tk)),
                                np.array(_expected(t, "/gripper/state", tk))[:, None]], 1)
        np.testing.assert_array_equal(got["observation.state"], state.astype(np.float32))
        np.testing.assert_array_equal(got["action"],
                                      np.stack(_expected(t, "/arm/command", tk)).astype(np.float32))
        texts = _expected(t, "/instruction", tk)
        switch = texts.index(samples.INSTRUCTIONS[1])
        assert [(s.start, s.end, s.instruction) for s in info.segments] == \
            [(0, switch - 1, samples.INSTRUCTIONS[0]),
             (switch, info.length - 1, samples.INSTRUCTIONS[1])]
        part = src.read(i, 3, 7)
        for k, v in part.items():
            np.testing.assert_array_equal(v, got[k][3:7])
    d_ = src.describe()
    assert "nearest earlier message" in d_["resampling"] and d_["gripper"] == "0/1"
    assert d_["topics"]["/joint_states"] == "sensor_msgs/msg/JointState"


def _mapping(tmp_path: Path, features: dict, fps: float = 10, **extra) -> Path:
    p = tmp_path / "map.yaml"
    p.write_text(yaml.safe_dump({"format": "rosbag", "fps": fps, "features": features, **extra}))
    return p


def _array_msgs(ts, topic: str, times_ms: list[int], base: float) -> list[tuple]:
    arr = "std_msgs/msg/Float64MultiArray"
    return [(topic, T0 + t * MS, samples.simple_msg(ts, arr, [base + k]))
            for k, t in enumerate(times_ms)]


@pytest.mark.parametrize("storage", samples.STORAGES)
def test_timing_alignment_on_known_timestamps(storage, tmp_path):
    ts = samples.typestore(storage)
    a_ms, b_ms = [0, 100, 200, 250, 300, 400], [150, 350]
    msgs = _array_msgs(ts, "/a", a_ms, 0) + _array_msgs(ts, "/b", b_ms, 10)
    arr = "std_msgs/msg/Float64MultiArray"
    bag = samples.write_bag(samples.bag_path(tmp_path / "bags", storage, 0), storage,
                            {"/a": arr, "/b": arr}, msgs)
    src = RosbagSource(str(bag), str(_mapping(tmp_path, {"action": {"topic": "/a", "field": "data"},
                                                          "observation.state": {"topic": "/b",
                                                                                "field": "data"}},
                                              language={"instruction": "pick it up"})))
    (info,) = src.plan()
    assert [(s.start, s.end, s.instruction) for s in info.segments] == [(0, 2, "pick it up")]
    # t0 = 150 ms (first time both topics have a message); ticks 150, 250, 350 (450 > t_end 400)
    assert info.metadata["t0_ns"] == T0 + 150 * MS and info.length == 3
    got = src.read(0)
    # /a at 150 -> message @100 (#1); at 250 -> the message exactly at 250 (#3); at 350 -> @300 (#4)
    np.testing.assert_array_equal(got["action"][:, 0], [1, 3, 4])
    # /b at 150 -> @150 (#0, same instant); at 250 -> still @150; at 350 -> @350 (#1)
    np.testing.assert_array_equal(got["observation.state"][:, 0], [10, 10, 11])


def test_tick_arithmetic_is_exact():
    # 3 Hz: period 333,333,333.33 ns, floored per tick from t0 (no drift)
    np.testing.assert_array_equal(ticks(0, 3, 0, 4), [0, 333333333, 666666666, 10**9])
    np.testing.assert_array_equal(ticks(5, 3, 299, 301), [5 + 99666666666, 5 + 100 * 10**9])
    assert tick_count(0, 10**9, 3) == 4 and tick_count(0, 10**9 - 1, 3) == 3
    assert tick_count(7, 7, 10) == 1 and tick_count(8, 7, 10) == 0


def test_image_encodings(tmp_path):
    storage = "mcap"
    ts = samples.typestore(storage)
    rgb = samples._camera(6, 8, 3, 1)
    img, cmp_ = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    depth = np.arange(48, dtype=np.uint16).reshape(6, 8) * 100  # millimetres
    depth_msg = ts.types[img](header=samples.header(ts, storage, T0), height=6, width=8,
                              encoding="16UC1", is_bigendian=0, step=16,
                              data=depth.view(np.uint8).reshape(-1).copy())
    msgs = [("/mono", T0, samples.image_msg(ts, storage, T0, rgb, "mono8")),
            ("/rgba", T0, samples.image_msg(ts, storage, T0, rgb, "rgba8")),
            ("/png", T0, samples.compressed_msg(ts, storage, T0, rgb, "png")),
            ("/depth", T0, depth_msg),
            ("/a", T0, samples.simple_msg(ts, "std_msgs/msg/Float64MultiArray", [1.0]))]
    bag = samples.write_bag(tmp_path / "b", storage, {"/mono": img, "/rgba": img, "/png": cmp_,
                                                      "/depth": img,
                                                      "/a": "std_msgs/msg/Float64MultiArray"}, msgs)
    m = _mapping(tmp_path, {"observation.images.mono": {"topic": "/mono"},
                            "observation.images.rgba": {"topic": "/rgba"},
                            "observation.images.png": {"topic": "/png"},
                            "observation.depth.cam": {"topic": "/depth"},
                            "action": {"topic": "/a", "field": "data"}})
    src = RosbagSource(str(bag), str(m))
    got = src.read(0)
    np.testing.assert_array_equal(got["observation.images.mono"][0], np.repeat(rgb[..., :1], 3, 2))
    np.testing.assert_array_equal(got["observation.images.rgba"][0], rgb)
    np.testing.assert_array_equal(got["observation.images.png"][0], rgb)
    np.testing.assert_allclose(got["observation.depth.cam"][0], depth / 1000.0, rtol=1e-6)
    assert src.features()["observation.depth.cam"].kind == "depth"


def test_missing_topic_and_field_name_bag_and_key(sample, tmp_path):
    d, _, storage = sample
    bag = samples.bag_path(d, storage, 0)
    src = RosbagSource(str(bag), str(_mapping(tmp_path, {"action": {"topic": "/nope"}})))
    with pytest.raises(SourceFormatError) as ei:
        src.plan()
    msg = str(ei.value)
    assert bag.name in msg and "'/nope'" in msg and "topic missing" in msg
    src = RosbagSource(str(bag), str(_mapping(tmp_path, {"action": {"topic": "/arm/command",
                                                                    "field": "velocity"}})))
    with pytest.raises(SourceFormatError, match=r"'/arm/command.velocity'.*no field 'velocity'"):
        src.features()
    m = _mapping(tmp_path, {"action": {"topic": "/arm/command", "field": "data", "index": [9]}})
    src = RosbagSource(str(bag), str(m))
    with pytest.raises(SourceFormatError, match="index 9 out of range for 7 values"):
        src.features()
    src = RosbagSource(str(bag), str(_mapping(tmp_path, {
        "observation.images.x": {"topic": "/joint_states"}, "action": {"topic": "/arm/command"}})))
    with pytest.raises(SourceFormatError, match="expected sensor_msgs/msg/Image"):
        src.features()


def test_topic_without_messages(tmp_path):
    ts = samples.typestore("ros1")
    arr = "std_msgs/msg/Float64MultiArray"
    bag = samples.write_bag(tmp_path / "e.bag", "ros1", {"/a": arr, "/b": arr},
                            _array_msgs(ts, "/a", [0, 100], 0))
    src = RosbagSource(str(bag), str(_mapping(tmp_path, {"action": {"topic": "/a", "field": "data"},
                                                         "observation.state": {"topic": "/b",
                                                                               "field": "data"}})))
    with pytest.raises(SourceFormatError, match=r"e\.bag.*'/b'.*no messages"):
        src.plan()


def test_corrupt_bag_names_the_file(sample, tmp_path):
    d, _, storage = sample
    src_bag = samples.bag_path(d, storage, 1)
    dst = samples.bag_path(tmp_path, storage, 1)
    if storage == "ros1":
        dst.write_bytes(src_bag.read_bytes()[:3000])
    else:
        shutil.copytree(src_bag, dst)
        for f in dst.iterdir():
            if f.suffix in (".db3", ".mcap"):
                f.write_bytes(f.read_bytes()[:1500])
    with pytest.raises(SourceFormatError, match=dst.name):
        src = RosbagSource(str(dst), str(EXAMPLES / "rosbag_arm.yaml"))
        src.plan()
        src.read(0)


def test_wrong_mapping_format(sample, tmp_path):
    p = tmp_path / "h.yaml"
    p.write_text("format: hdf5\nfps: 5\nfeatures: {action: {key: a}}\n")
    with pytest.raises(SourceFormatError, match="not rosbag"):
        RosbagSource(str(sample[0]), str(p))


def test_picklable_and_converts_with_two_workers(tmp_path):
    d = tmp_path / "bags"
    samples.write_sample(d, "ros1", episodes=2)
    src = RosbagSource(str(d), str(EXAMPLES / "rosbag_arm.yaml"))
    clone = pickle.loads(pickle.dumps(src))
    for k, v in clone.read(1).items():
        np.testing.assert_array_equal(v, src.read(1)[k])
    convert(src, tmp_path / "out.vla", progress=False, workers=2, part_frames=1024)
    ds = vladata.open(tmp_path / "out.vla")
    assert ds.info["source_info"]["resampling"].startswith("nearest earlier message")
    assert ds.segments.height == 4
    for i in range(len(ds)):
        want, got = src.read(i), ds.episode(i)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v)


class TestRosbagConformance(SourceConformance):
    @pytest.fixture
    def make_source(self, sample):
        return lambda: RosbagSource(str(sample[0]), str(EXAMPLES / "rosbag_arm.yaml"))


def test_cli_convert_rosbag(tmp_path):
    from click.testing import CliRunner

    from cli.convert_real import rosbag, sample_rosbag
    runner = CliRunner()
    r = runner.invoke(sample_rosbag, [str(tmp_path / "bags"), "--storage", "mcap"])
    assert r.exit_code == 0, r.output
    bags = tmp_path / "bags"
    r = runner.invoke(rosbag, [str(bags), str(tmp_path / "o.vla"),
                               "--map", str(bags / "mapping.yaml")])
    assert r.exit_code == 0, r.output
    assert len(vladata.open(tmp_path / "o.vla")) == 2
    bad = _mapping(tmp_path, {"action": {"key": "/a"},
                              "observation.images.x": {"topic": "/c", "index": 1}}, fps=0)
    r = runner.invoke(rosbag, [str(bags), str(tmp_path / "p.vla"), "--map", str(bad)])
    assert r.exit_code == 1
    for want in ("fps: expected a positive number", "action.topic: required",
                 "action.key: not used by format rosbag", "index: not allowed for an image"):
        assert want in r.output, r.output
    r = runner.invoke(rosbag, [str(bags), str(tmp_path / "q.vla")])
    assert r.exit_code == 2 and "--map" in r.output


def test_nearest_earlier_on_a_plain_list():
    msgs = [("a", 0, "a0"), ("b", 5, "b0"), ("a", 10, "a1"), ("a", 20, "a2"), ("b", 30, "b1")]
    got = list(nearest_earlier(msgs, [-1, 5, 10, 15, 25]))
    assert got == [{}, {"a": (0, "a0"), "b": (1, "b0")}, {"a": (2, "a1"), "b": (1, "b0")},
                   {"a": (2, "a1"), "b": (1, "b0")}, {"a": (3, "a2"), "b": (1, "b0")}]
    assert list(nearest_earlier(iter(msgs), [])) == []


def test_a_topic_with_two_publishers_uses_both(tmp_path):
    from rosbags.rosbag1 import Writer
    ts = samples.typestore("ros1")
    arr = "std_msgs/msg/Float64MultiArray"
    with Writer(tmp_path / "two.bag") as w:
        c1 = w.add_connection("/a", arr, typestore=ts, callerid="/node1")
        c2 = w.add_connection("/a", arr, typestore=ts, callerid="/node2")
        for k, t in enumerate([0, 100, 200, 300]):
            w.write(c1 if k % 2 == 0 else c2, T0 + t * MS,
                    ts.serialize_ros1(samples.simple_msg(ts, arr, [float(k)]), arr))
    src = RosbagSource(str(tmp_path / "two.bag"),
                       str(_mapping(tmp_path, {"action": {"topic": "/a", "field": "data"}})))
    np.testing.assert_array_equal(src.read(0)["action"][:, 0], [0, 1, 2, 3])
