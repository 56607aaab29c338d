"""LeRobot v3.0 and v2.1 sources: parquet values, mp4 frames (PyAV), tasks, splits, errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vladata
from tests.vladata.sources.conformance import SourceConformance
from vladata.errors import SourceFormatError
from vladata.samples import lerobot as samples
from vladata.sources.lerobot import LeRobotSource, _tasks_v3, decode_video_frames
from vladata.store.writer import convert

CAMS = ("observation.images.top", "observation.images.wrist")


@pytest.fixture(scope="module")
def v3_lossless(tmp_path_factory):
    d = tmp_path_factory.mktemp("lr") / "v3"
    return d, samples.write_sample(d, "v3.0", episodes=5, codec="libx264rgb", episodes_per_file=2)


@pytest.fixture(scope="module")
def v21_lossless(tmp_path_factory):
    d = tmp_path_factory.mktemp("lr") / "v21"
    return d, samples.write_sample(d, "v2.1", episodes=3, codec="libx264rgb")


@pytest.fixture(scope="module")
def v3_av1(tmp_path_factory):
    d = tmp_path_factory.mktemp("lr") / "v3av1"
    return d, samples.write_sample(d, "v3.0", episodes=3, codec="libsvtav1", episodes_per_file=2)


def _check_exact(src: LeRobotSource, written: list[dict]):
    plan = src.plan()
    assert [e.source_id for e in plan] == [f"episode_{i:06d}" for i in range(len(written))]
    for i, w in enumerate(written):
        got = src.read(i)
        assert set(got) == {*CAMS, "observation.state", "action"}
        for k in (*CAMS, "observation.state", "action"):
            np.testing.assert_array_equal(got[k], w[k], err_msg=f"episode {i} {k}")
        segs = [(s.start, s.end, s.instruction) for s in plan[i].segments]
        n = len(w["action"])
        assert segs == [(0, n // 2 - 1, w["task"][0]), (n // 2, n - 1, w["task"][-1])]


def test_v3_round_trips_every_frame_across_multi_episode_files(v3_lossless):
    d, written = v3_lossless
    src = LeRobotSource(str(d))
    assert src.version == "v3.0" and src.fps == 10.0
    with pq.ParquetFile(d / "data/chunk-000/file-001.parquet") as f:  # episodes 2 and 3 share it
        assert sorted(set(f.read(columns=["episode_index"]).column(0).to_pylist())) == [2, 3]
    _check_exact(src, written)
    assert [e.split for e in src.plan()] == ["train"] * 4 + ["validation"]
    feats = src.features()
    assert feats["observation.state"].names == samples.STATE_NAMES
    assert feats["observation.images.top"].shape == (16, 16, 3)
    d_ = src.describe()
    assert d_["gripper"] is None and d_["gripper_meaning"] == "unknown"
    assert d_["unmapped_features"] == ["next.reward"]


def test_v21_round_trips_every_frame(v21_lossless):
    d, written = v21_lossless
    src = LeRobotSource(str(d))
    assert src.version == "v2.1"
    _check_exact(src, written)
    assert [e.split for e in src.plan()] == ["train", "train", "validation"]


def test_subrange_reads_address_the_right_video_frames(v3_lossless):
    d, written = v3_lossless
    src = LeRobotSource(str(d))
    got = src.read(3, 2, 5)  # episode 3 starts mid-file: from_timestamp > 0
    for k in (*CAMS, "observation.state"):
        np.testing.assert_array_equal(got[k], written[3][k][2:5])


def test_lossy_av1_frames_are_close_and_exactly_aligned(v3_av1):
    d, written = v3_av1
    src = LeRobotSource(str(d))
    info = json.loads((d / "meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "av1"
    for i, w in enumerate(written):
        got = src.read(i)
        np.testing.assert_array_equal(got["action"], w["action"])
        for k in CAMS:
            err = np.abs(got[k].astype(int) - w[k].astype(int))
            assert err.mean() < 8, (i, k, err.mean())
            # each decoded frame is nearest to its own source frame, not a neighbour
            dist = np.abs(got[k][:, None].astype(int) - w[k][None].astype(int)).mean(axis=(2, 3, 4))
            assert list(dist.argmin(axis=1)) == list(range(len(w[k]))), (i, k)


def test_video_frames_must_match_timestamps_exactly(v3_lossless):
    d, written = v3_lossless
    video = d / "videos/observation.images.top/chunk-000/file-000.mp4"
    frames = decode_video_frames(video, np.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(frames, written[0]["observation.images.top"][1:4])
    with pytest.raises(SourceFormatError, match=r"no video frame within 0.0001 s of 0.150000"):
        decode_video_frames(video, np.array([0.1, 0.15]), episode=0, key="observation.images.top")
    with pytest.raises(SourceFormatError, match="the video ends first"):
        decode_video_frames(video, np.array([5.0]))


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_image_features_stored_in_parquet(version, tmp_path):
    written = samples.write_sample(tmp_path / "d", version, episodes=2, cameras=("top",),
                                   image_cameras=("wrist",), codec="libx264rgb")
    src = LeRobotSource(str(tmp_path / "d"))
    assert src.features()["observation.images.wrist"].description.endswith("(image)")
    for i, w in enumerate(written):
        got = src.read(i, 1, 4)
        for k in CAMS:
            np.testing.assert_array_equal(got[k], w[k][1:4])


def test_tasks_parquet_index_column_variants(tmp_path):
    # pandas' unnamed index -> __index_level_0__ (named in the pandas metadata) or a "task" column
    t = pa.table({"task_index": [0, 1], "task": ["a", "b"]})
    pq.write_table(t, tmp_path / "t.parquet")
    assert _tasks_v3(tmp_path / "t.parquet") == {0: "a", 1: "b"}
    meta = {b"pandas": json.dumps({"index_columns": ["idx"]}).encode()}
    t = pa.table({"task_index": [1, 0], "idx": ["x", "y"]}).replace_schema_metadata(meta)
    pq.write_table(t, tmp_path / "u.parquet")
    assert _tasks_v3(tmp_path / "u.parquet") == {1: "x", 0: "y"}
    pq.write_table(pa.table({"task_index": [0]}), tmp_path / "v.parquet")
    with pytest.raises(SourceFormatError, match="no task string column"):
        _tasks_v3(tmp_path / "v.parquet")


def _copy(d: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(d, dst)
    return dst


def test_missing_video_names_file_episode_and_key(v21_lossless, tmp_path):
    d = _copy(v21_lossless[0], tmp_path)
    (d / "videos/chunk-000/observation.images.wrist/episode_000001.mp4").unlink()
    src = LeRobotSource(str(d))
    with pytest.raises(SourceFormatError) as ei:
        src.read(1)
    msg = str(ei.value)
    assert "episode_000001.mp4" in msg and "episode 1" in msg and "observation.images.wrist" in msg


def test_corrupt_video_and_parquet(v21_lossless, tmp_path):
    d = _copy(v21_lossless[0], tmp_path)
    v = d / "videos/chunk-000/observation.images.top/episode_000000.mp4"
    v.write_bytes(b"\x00" * 64 + v.read_bytes()[64:200])
    with pytest.raises(SourceFormatError, match="episode_000000.mp4"):
        LeRobotSource(str(d)).read(0)
    p = d / "data/chunk-000/episode_000002.parquet"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SourceFormatError, match=r"episode_000002\.parquet.*unreadable parquet"):
        LeRobotSource(str(d)).plan()


def test_length_mismatch_and_unknown_version(v21_lossless, tmp_path):
    d = _copy(v21_lossless[0], tmp_path)
    lines = (d / "meta/episodes.jsonl").read_text().splitlines()
    ep = json.loads(lines[1])
    ep["length"] += 1
    lines[1] = json.dumps(ep)
    (d / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"episode 1, key 'length': episode metadata says"):
        LeRobotSource(str(d)).plan()
    info = json.loads((d / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (d / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(SourceFormatError, match="codebase_version 'v1.6'"):
        LeRobotSource(str(d))
    with pytest.raises(SourceFormatError, match="not a LeRobot dataset root"):
        LeRobotSource(str(tmp_path))


def test_picklable(v3_lossless):
    src = LeRobotSource(str(v3_lossless[0]))
    src.plan()
    clone = pickle.loads(pickle.dumps(src))
    for k, v in clone.read(2).items():
        np.testing.assert_array_equal(v, src.read(2)[k])


def test_convert_and_open_round_trip(v3_lossless, tmp_path):
    d, written = v3_lossless
    src = LeRobotSource(str(d))
    convert(src, tmp_path / "out.vla", progress=False, workers=2)
    ds = vladata.open(tmp_path / "out.vla")
    assert ds.episodes["split"].to_list() == ["train"] * 4 + ["validation"]
    first = written[0]["task"]
    assert ds.segments["instruction"].to_list()[:2] == [first[0], first[-1]]
    for i, w in enumerate(written):
        got = ds.episode(i)
        for k in (*CAMS, "observation.state", "action"):
            np.testing.assert_array_equal(got[k], w[k], err_msg=f"{i} {k}")


class TestLeRobotV3Conformance(SourceConformance):
    @pytest.fixture
    def make_source(self, v3_av1):
        return lambda: LeRobotSource(str(v3_av1[0]))


class TestLeRobotV21Conformance(SourceConformance):
    @pytest.fixture
    def make_source(self, v21_lossless):
        return lambda: LeRobotSource(str(v21_lossless[0]))


def test_cli_convert_lerobot(v21_lossless, tmp_path):
    from click.testing import CliRunner

    from cli.convert_real import lerobot, sample_lerobot
    r = CliRunner().invoke(lerobot, [str(v21_lossless[0]), str(tmp_path / "o.vla"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["episodes"] == 3
    r = CliRunner().invoke(lerobot, [str(tmp_path), str(tmp_path / "p.vla")])
    assert r.exit_code == 1 and "info.json" in r.output
    r = CliRunner().invoke(sample_lerobot, [str(tmp_path / "s"), "--version", "v2.1",
                                            "--codec", "libx264rgb"])
    assert r.exit_code == 0 and LeRobotSource(str(tmp_path / "s")).version == "v2.1"
