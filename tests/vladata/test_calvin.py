"""CALVIN -> store: round trip of every frame, splits, language, parallel parts, resume, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import IncompleteStoreError, SourceFormatError, StoreError, UnsafePickleError
from vladata.safe_pickle import load_pickled_npy
from vladata.sources.calvin import KEYS_BY_NPZ, CalvinSource, frame_path
from vladata.store.writer import convert

FEATURE_OF = {k: KEYS_BY_NPZ[k].feature for k in KEYS_BY_NPZ}


def _segments(raw: Path, split: str) -> np.ndarray:
    return np.load(raw / split / "ep_start_end_ids.npy")


def _source_frames(raw: Path, split: str, s: int, e: int, key: str) -> np.ndarray:
    return np.stack([np.load(frame_path(raw / split, i))[key] for i in range(s, e + 1)])


def test_every_frame_of_every_feature_round_trips(calvin_raw, calvin_store):
    ds = vladata.open(calvin_store)
    eps = ds.episodes
    expected = [(split, s, e) for split in ("training", "validation")
                for s, e in _segments(calvin_raw, split)]
    assert eps.height == len(expected)
    for i, (split, s, e) in enumerate(expected):
        row = eps.row(i, named=True)
        assert row["split"] == ("train" if split == "training" else "validation")
        assert row["length"] == e - s + 1
        assert row["source_id"] == f"{split}/{s}-{e}"
        got = ds.episode(i)
        for key in ("rgb_static", "rgb_gripper", "robot_obs", "scene_obs", "rel_actions",
                    "actions"):
            src = _source_frames(calvin_raw, split, s, e, key)
            out = got[FEATURE_OF[key]]
            if src.dtype == np.uint8:
                np.testing.assert_array_equal(out, src)  # images bit-exact
            else:
                assert src.dtype == np.float64 and out.dtype == np.float32
                np.testing.assert_array_equal(out, src.astype(np.float32))
    starts = eps["start"].to_numpy()
    assert starts[0] == 0 and np.all(starts[1:] == np.cumsum(eps["length"].to_numpy())[:-1])


def test_schema_records_the_cast_and_names(calvin_store):
    ds = vladata.open(calvin_store)
    state = ds.info["features"]["observation.state"]
    assert state["dtype"] == "float32" and state["source_dtype"] == "float64"
    assert state["names"][0] == "tcp_pos_x" and len(state["names"]) == 15
    assert ds.info["features"]["observation.images.rgb_static"]["shape"] == [24, 24, 3]
    assert ds.info["source_info"]["gripper"] == "-1/1"


def test_language_segments_map_to_episode_offsets(calvin_raw, calvin_store):
    ds = vladata.open(calvin_store)
    seg = ds.segments
    n_expected = 0
    for split in ("training", "validation"):
        ann = load_pickled_npy(calvin_raw / split / "lang_annotations" / "auto_lang_ann.npy")
        n_expected += len(ann["info"]["indx"])
        starts = ds.episodes.filter(ds.episodes["source_id"].str.starts_with(split))
        for j, (s, e) in enumerate(ann["info"]["indx"]):
            # the episode whose global frame-id range holds the annotation's start
            ep = next(r for r in starts.iter_rows(named=True)
                      if int(r["source_id"].split("/")[1].split("-")[0]) <= s
                      <= int(r["source_id"].split("-")[1]))
            first = int(ep["source_id"].split("/")[1].split("-")[0])
            rows = seg.filter((seg["episode_index"] == ep["episode_index"]) &
                              (seg["start"] == s - first) & (seg["end"] == e - first) &
                              (seg["instruction"] == ann["language"]["ann"][j]))
            assert rows.height >= 1
            assert rows["task"][0] == ann["language"]["task"][j]
            np.testing.assert_array_equal(np.asarray(rows["embedding"][0], np.float32),
                                          ann["language"]["emb"][j][0])
    assert seg.height == n_expected
    # windows overlap (as CALVIN's do) and frames are stored once
    rows = list(seg.iter_rows(named=True))
    assert any(a["episode_index"] == b["episode_index"] and a["start"] <= b["end"]
               and b["start"] <= a["end"] for i, a in enumerate(rows) for b in rows[i + 1:])
    assert ds.num_frames == int(ds.episodes["length"].sum())


def test_store_opens_with_plain_zarr(calvin_store):
    g = zarr.open_group(calvin_store, mode="r")
    assert g.attrs["vlakit"]["format_version"] == 2
    a = g["data/observation.images.rgb_static"]
    assert a.shape[0] == vladata.open(calvin_store).num_frames and a.dtype == np.uint8


def test_parallel_conversion_equals_serial(calvin_raw, calvin_store, tmp_path):
    big = tmp_path / "raw"
    from vladata.samples.calvin import write_sample
    write_sample(big, train_segments=4, val_segments=1, frames_per_segment=(300, 400),
                 static_size=8, gripper_size=4, seed=3, depth=False)
    a = convert(CalvinSource(str(big)), tmp_path / "one.vla", workers=1, progress=False,
                part_frames=1024)
    b = convert(CalvinSource(str(big)), tmp_path / "two.vla", workers=2, progress=False,
                part_frames=1024)
    assert a.frames == b.frames > 1024 and b.parts_written >= 2
    da, db = vladata.open(tmp_path / "one.vla"), vladata.open(tmp_path / "two.vla")
    for name in da.features:
        np.testing.assert_array_equal(da.array(name)[:], db.array(name)[:])
    assert (tmp_path / "one.vla/meta/stats.json").read_text() == \
        (tmp_path / "two.vla/meta/stats.json").read_text()


def test_depth_keys_on_request(calvin_raw, tmp_path):
    out = tmp_path / "depth.vla"
    convert(CalvinSource(str(calvin_raw), keys=("rgb_static", "depth_static", "rel_actions")), out,
            progress=False)
    ds = vladata.open(out)
    assert set(ds.features) >= {"observation.images.rgb_static", "observation.depth.depth_static"}
    s, e = _segments(calvin_raw, "training")[0]
    np.testing.assert_array_equal(ds.episode(0)["observation.depth.depth_static"],
                                  _source_frames(calvin_raw, "training", s, e, "depth_static"))


# -- resume --------------------------------------------------------------------------------------

class _FailingSource(CalvinSource):
    """Fails on one episode, like a crash half-way through a conversion."""

    fail_episode: int = -1

    def read(self, i, lo=0, hi=None):
        if i == self.fail_episode:
            raise RuntimeError("simulated crash")
        return super().read(i, lo, hi)


def test_interrupted_conversion_is_incomplete_and_resumes(tmp_path):
    from vladata.samples.calvin import write_sample
    raw = write_sample(tmp_path / "raw", train_segments=3, val_segments=1,
                       frames_per_segment=(400, 500), static_size=8, gripper_size=4, seed=5,
                       depth=False)
    out = tmp_path / "s.vla"
    bad = _FailingSource(str(raw))
    bad.fail_episode = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(bad, out, progress=False, part_frames=1024)
    assert not (out / "meta/manifest.json").exists()
    with pytest.raises(IncompleteStoreError, match="--resume"):
        vladata.open(out)
    with pytest.raises(IncompleteStoreError, match="--resume"):
        convert(CalvinSource(str(raw)), out, progress=False, part_frames=1024)
    done_before = sorted(p.name for p in (out / "meta/parts").glob("*.json"))
    assert done_before  # the first parts finished
    summary = convert(CalvinSource(str(raw)), out, resume=True, progress=False, part_frames=1024)
    assert summary.parts_reused == len(done_before) and summary.parts_written >= 1
    ref = tmp_path / "ref.vla"
    convert(CalvinSource(str(raw)), ref, progress=False, part_frames=1024)
    a, b = vladata.open(out), vladata.open(ref)
    for name in a.features:
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])


def test_resume_refuses_a_different_source(calvin_raw, tmp_path):
    out = tmp_path / "s.vla"
    bad = _FailingSource(str(calvin_raw))
    bad.fail_episode = 0
    with pytest.raises(RuntimeError):
        convert(bad, out, progress=False)
    with pytest.raises(StoreError, match="cannot resume"):
        convert(CalvinSource(str(calvin_raw), splits=("training",)), out, resume=True,
                progress=False)


def test_killed_cli_conversion_resumes(tmp_path):
    from vladata.samples.calvin import write_sample
    raw = write_sample(tmp_path / "raw", train_segments=6, val_segments=1,
                       frames_per_segment=(700, 800), static_size=48, gripper_size=16, seed=7,
                       depth=False)
    out = tmp_path / "s.vla"
    cmd = [sys.executable, "-m", "cli.vladata", "convert", "calvin", str(raw), str(out),
           "--part-frames", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).parents[2])
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "meta/parts").glob("part-*.json")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "meta/manifest.json").exists():
        pytest.skip("conversion finished before it could be killed")
    with pytest.raises(IncompleteStoreError):
        vladata.open(out)
    r = CliRunner().invoke(cli, ["convert", "calvin", str(raw), str(out), "--part-frames", "1024",
                                 "--resume", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["parts_reused"] >= 1
    ds = vladata.open(out)
    s, e = np.load(raw / "training/ep_start_end_ids.npy")[-1]
    last_train = ds.episodes.filter(ds.episodes["split"] == "train").row(-1, named=True)
    np.testing.assert_array_equal(
        ds.episode(last_train["episode_index"])["observation.images.rgb_static"],
        _source_frames(raw, "training", s, e, "rgb_static"))


# -- bad input -----------------------------------------------------------------------------------

@pytest.fixture
def raw_copy(calvin_raw, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(calvin_raw, dst)
    return dst


def _convert_cli(raw, out):
    return CliRunner().invoke(cli, ["convert", "calvin", str(raw), str(out)])


def _first_train_frame(raw) -> Path:
    s, _ = _segments(raw, "training")[0]
    return frame_path(raw / "training", s + 3)


def test_missing_frame_file(raw_copy, tmp_path):
    f = _first_train_frame(raw_copy)
    f.unlink()
    r = _convert_cli(raw_copy, tmp_path / "o.vla")
    assert r.exit_code != 0
    assert f.name in r.output and "missing" in r.output and "episode training/" in r.output
    assert not (tmp_path / "o.vla/meta/manifest.json").exists()


def test_truncated_frame_file(raw_copy, tmp_path):
    f = _first_train_frame(raw_copy)
    f.write_bytes(f.read_bytes()[:200])
    r = _convert_cli(raw_copy, tmp_path / "o.vla")
    assert r.exit_code != 0 and f.name in r.output and "truncated or corrupt" in r.output


def test_missing_key(raw_copy, tmp_path):
    f = _first_train_frame(raw_copy)
    d = dict(np.load(f))
    del d["rel_actions"]
    np.savez_compressed(f, **d)
    r = _convert_cli(raw_copy, tmp_path / "o.vla")
    assert r.exit_code != 0 and f.name in r.output and "'rel_actions'" in r.output


def test_wrong_shape(raw_copy, tmp_path):
    f = _first_train_frame(raw_copy)
    d = dict(np.load(f))
    d["robot_obs"] = d["robot_obs"][:14]
    np.savez_compressed(f, **d)
    with pytest.raises(SourceFormatError, match=r"robot_obs.*expected shape \(15,\), got \(14,\)"):
        convert(CalvinSource(str(raw_copy)), tmp_path / "o.vla", progress=False)


def test_segment_with_missing_frames(raw_copy, tmp_path):
    ids = _segments(raw_copy, "validation")
    ids[-1, 1] += 5  # the segment claims frames that are not there
    np.save(raw_copy / "validation/ep_start_end_ids.npy", ids)
    r = _convert_cli(raw_copy, tmp_path / "o.vla")
    assert r.exit_code != 0 and "frame file missing" in r.output
    assert f"episode validation/{ids[-1, 0]}-{ids[-1, 1]}" in r.output


def test_unreadable_annotation_file(raw_copy, tmp_path):
    p = raw_copy / "training/lang_annotations/auto_lang_ann.npy"
    p.write_bytes(p.read_bytes()[:100])
    r = _convert_cli(raw_copy, tmp_path / "o.vla")
    assert r.exit_code != 0 and "auto_lang_ann.npy" in r.output


def test_annotation_pickle_that_runs_code_is_refused(raw_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class RunsCode:
        def __reduce__(self):
            import os
            return (os.system, ("touch PWNED",))

    p = raw_copy / "training/lang_annotations/auto_lang_ann.npy"
    np.save(p, np.array({"language": RunsCode()}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="refusing"):
        CalvinSource(str(raw_copy)).plan()
    assert not (tmp_path / "PWNED").exists()


def test_not_a_calvin_root(tmp_path):
    r = _convert_cli(tmp_path, tmp_path / "o.vla")
    assert r.exit_code != 0 and "training and/or validation" in r.output


def test_existing_complete_store_is_not_overwritten(calvin_raw, calvin_store):
    r = _convert_cli(calvin_raw, calvin_store)
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_annotation_outside_episodes_is_skipped_and_counted(raw_copy, tmp_path):
    p = raw_copy / "training/lang_annotations/auto_lang_ann.npy"
    ann = load_pickled_npy(p)
    ann["info"]["indx"][0] = (10, 40)  # before every episode
    np.save(p, ann, allow_pickle=True)
    src = CalvinSource(str(raw_copy))
    s = convert(src, tmp_path / "o.vla", progress=False)
    assert any("outside every episode" in x for x in s.skipped)
    assert "skipped    1" in str(s)


# -- CLI -----------------------------------------------------------------------------------------

def test_inspect_text_and_json(calvin_store):
    r = CliRunner().invoke(cli, ["inspect", str(calvin_store), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    ds = vladata.open(calvin_store)
    assert info["frames"] == ds.num_frames and info["episodes"] == len(ds)
    assert info["features"]["action"]["names"][-1] == "gripper"
    r = CliRunner().invoke(cli, ["inspect", str(calvin_store)])
    assert r.exit_code == 0 and "observation.images.rgb_static" in r.output


def test_sample_command_writes_the_real_layout(tmp_path):
    r = CliRunner().invoke(cli, ["sample", "calvin", str(tmp_path / "s"), "--train-segments", "1",
                                 "--val-segments", "1", "--frames", "20,30",
                                 "--image-size", "16,8"])
    assert r.exit_code == 0, r.output
    for split in ("training", "validation"):
        d = tmp_path / "s" / split
        ids = np.load(d / "ep_start_end_ids.npy")
        z = np.load(frame_path(d, int(ids[0, 0])))
        assert z["robot_obs"].dtype == np.float64 and z["rgb_static"].shape == (16, 16, 3)
        assert z["rel_actions"].shape == (7,) and z["scene_obs"].shape == (24,)
        assert (d / "lang_annotations/auto_lang_ann.npy").exists()
    assert (tmp_path / "s/training/scene_info.npy").exists()
    assert not (tmp_path / "s/validation/scene_info.npy").exists()


def test_convert_can_also_write_the_streaming_form(calvin_raw, tmp_path):
    out = tmp_path / "w.vla"
    r = CliRunner().invoke(cli, ["convert", "calvin", str(calvin_raw), str(out), "--format", "wds",
                                 "--json"])
    assert r.exit_code == 0, r.output
    index = json.loads((out / "wds" / "index.json").read_text())
    assert index and list((out / "wds").glob("*.tar"))
    from vladata.stream import WindowStream
    stream = WindowStream(str(out / "wds"), history=2, chunk=3, batch_size=4)
    batch = next(iter(stream.loader()))
    assert batch["action"].shape[1:] == (2, 3, 7)
