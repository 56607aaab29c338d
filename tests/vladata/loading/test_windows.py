"""Windows of a store and their loader, checked against a direct computation from the episodes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import vladata
from vladata.loading.batching import LoaderError
from tests.helpers.stores import build_codec_stores

STATIC, GRIPPER = "observation.images.rgb_static", "observation.images.rgb_gripper"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return build_codec_stores(tmp_path_factory, "windows", seed=3)


# -- the reference: plain loops over whole episodes, read with zarr-python --------------------

class Reference:
    def __init__(self, ds):
        self.ds = ds
        self.eps = ds.episodes.to_dicts()
        self.segs = ds.segments.to_dicts()
        self._frames = {}

    def frames(self, ep):
        if ep not in self._frames:
            self._frames[ep] = self.ds.episode(ep)
        return self._frames[ep]

    def ranges(self, split, over):
        """(episode, lo, hi, segment) in window order, offsets within the episode."""
        keep = {e["episode_index"] for e in self.eps if split is None or e["split"] == split}
        if over == "segments":
            return [(s["episode_index"], s["start"], s["end"], s["segment_index"])
                    for s in self.segs if s["episode_index"] in keep]
        return [(e["episode_index"], 0, e["length"] - 1, None) for e in self.eps
                if e["episode_index"] in keep]

    def windows(self, split, over, min_history=1):
        return [(ep, lo, hi, seg, e) for ep, lo, hi, seg in self.ranges(split, over)
                for e in range(lo + min_history - 1, hi + 1)]

    def covering(self, ep, e):
        best = None
        for s in self.segs:
            if s["episode_index"] == ep and s["start"] <= e <= s["end"]:
                if best is None or s["start"] > best["start"]:
                    best = s
        return best

    def sample(self, ep, lo, hi, seg, e, h, c):
        f = self.frames(ep)
        want = {k: [] for k in (STATIC, GRIPPER, "observation.state", "action", "action.tokens")}
        obs_mask, act_mask, frame_index = [], [], []
        for i in range(h):
            step = e - h + 1 + i
            s = max(step, lo)
            obs_mask.append(step >= lo)
            frame_index.append(s)
            for k in (STATIC, GRIPPER, "observation.state"):
                want[k].append(f[k][s])
            want["action"].append([f["action.norm"][min(s + j, hi)] for j in range(c)])
            want["action.tokens"].append([f["action.tokens"][min(s + j, hi)] for j in range(c)])
            act_mask.append([step >= lo and step + j <= hi for j in range(c)])
        want = {k: np.asarray(v) for k, v in want.items()}
        segment = self.segs[seg] if seg is not None else self.covering(ep, e)
        want.update(obs_mask=np.asarray(obs_mask), action_mask=np.asarray(act_mask),
                    frame_index=np.asarray(frame_index), episode_index=ep,
                    instruction=segment["instruction"] if segment else "",
                    task=segment["task"] if segment else "",
                    language_mask=segment is not None,
                    **{"language.embedding": np.asarray(segment["embedding"], np.float32) if segment
                       else np.zeros(384, np.float32)})
        return want


def assert_window(got, want):
    for k, v in want.items():
        if isinstance(v, str):
            assert got[k] == v, k
        else:
            g = np.asarray(got[k])
            assert g.shape == np.shape(v), (k, g.shape, np.shape(v))
            np.testing.assert_array_equal(g, v, err_msg=k)


@pytest.mark.parametrize("over", ["segments", "episodes"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_every_window_equals_direct_computation(stores, over, split):
    ds = stores["raw"]
    ref = Reference(ds)
    h, c = 5, 4
    w = ds.windows(history=h, chunk=c, split=split, over=over)
    expected = ref.windows(split, over)
    assert len(w) == len(expected) > 0
    for i, (ep, lo, hi, seg, e) in enumerate(expected):
        got = w[i]
        assert got["index"] == i
        assert_window(got, ref.sample(ep, lo, hi, seg, e, h, c))
        assert got["action"].dtype == np.float32 and got["action.tokens"].dtype == np.int64


def test_history_longer_than_segments_and_min_history(stores):
    ds = stores["raw"]
    ref = Reference(ds)
    n = ds.segments["end"] - ds.segments["start"] + 1
    h = n.min() + 6  # some segments are shorter than the history: their windows start padded
    w = ds.windows(history=h, chunk=3, split="train")
    for i, (ep, lo, hi, seg, e) in enumerate(ref.windows("train", "segments")):
        if i % 7 == 0:
            assert_window(w[i], ref.sample(ep, lo, hi, seg, e, h, 3))
    assert not w[0]["obs_mask"][0] and w[len(w) - 1]["action_mask"][-1].sum() == 1
    full = ds.windows(history=8, chunk=3, split="train", min_history=8)
    expected = ref.windows("train", "segments", min_history=8)
    assert len(full) == len(expected)
    for i in range(0, len(full), 11):
        assert full[i]["obs_mask"].all()
        assert_window(full[i], ref.sample(*expected[i], 8, 3))
    # a history longer than every segment with full history required: no windows at all
    longest = int(n.max()) + 1
    assert len(ds.windows(history=longest, chunk=3, split=None, min_history=longest)) == 0


def test_one_step_and_no_window_crosses_an_episode(stores):
    ds = stores["raw"]
    w = ds.windows(history=1, chunk=1, split=None, over="episodes")
    assert len(w) == ds.num_frames
    lengths = ds.episodes["length"].to_list()
    for i in range(0, len(w), 5):
        s = w[i]
        assert s["observation.images.rgb_static"].shape == (1, 12, 12, 3)
        assert s["obs_mask"].all() and s["action_mask"].shape == (1, 1) and s["action_mask"].all()
    w = ds.windows(history=6, chunk=20, split=None, over="episodes")
    for i in range(len(w)):
        s = w[i]
        fi, ep = s["frame_index"], int(s["episode_index"])
        assert 0 <= fi.min() and fi.max() < lengths[ep]
        last_real = fi[-1] + np.flatnonzero(s["action_mask"][-1]).max()
        assert last_real < lengths[ep]


def test_jpeg_store_windows(stores):
    ds, raw = stores["jpeg"], stores["raw"]
    w, wr = ds.windows(history=4, chunk=2), raw.windows(history=4, chunk=2)
    assert len(w) == len(wr)
    frames = ds.episode(0, keys=[STATIC])[STATIC]  # decoded by the Dataset API
    for i in range(0, 40, 3):
        a, b = w[i], wr[i]
        fi = a["frame_index"]
        if int(a["episode_index"]) == 0:
            np.testing.assert_array_equal(a[STATIC], frames[fi])
        assert np.abs(a[STATIC].astype(int) - b[STATIC]).mean() < 12  # lossy, but the same frames
        np.testing.assert_array_equal(a["action"], b["action"])


def _collect(loader, n=None):
    out = []
    for b in loader:
        out.append({k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in b.items()})
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_loader_workers_fork_and_spawn(stores, method):
    w = stores["jpeg"].windows(history=4, chunk=3, split="train")
    inline = _collect(w.loader(batch_size=8, num_workers=0, seed=5))
    loader = w.loader(batch_size=8, num_workers=2, seed=5, multiprocessing_context=method)
    try:
        batches = _collect(loader)
    finally:
        loader.close()
    assert len(batches) == len(inline) == len(w) // 8
    for a, b in zip(batches, inline):
        _same(a, b)
    b0 = batches[0]
    assert b0[STATIC].dtype == torch.uint8 and b0[STATIC].shape == (8, 4, 12, 12, 3)
    assert b0["observation.state"].dtype == torch.float32 and b0["action"].shape == (8, 4, 3, 7)
    assert b0["action_mask"].dtype == torch.bool and b0["obs_mask"].shape == (8, 4)
    assert b0["language.embedding"].shape == (8, 384) and b0["frame_index"].shape == (8, 4)
    assert isinstance(b0["instruction"], list) and len(b0["task"]) == 8
    for j, i in enumerate(b0["index"].tolist()):  # each row is exactly the dataset's window i
        s = w[i]
        for k in (STATIC, "action", "action_mask", "frame_index", "language.embedding"):
            np.testing.assert_array_equal(b0[k][j].numpy(), s[k])
        assert b0["instruction"][j] == s["instruction"]


def test_resume_mid_epoch_with_workers(stores):
    w = stores["raw"].windows(history=3, chunk=2, split=None, over="episodes")
    full = w.loader(batch_size=16, num_workers=2, seed=9)
    full.set_epoch(1)
    want = _collect(full)
    full.close()
    first = w.loader(batch_size=16, num_workers=2, seed=9)
    first.set_epoch(1)
    got = _collect(first, n=4)
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    resumed = w.loader(batch_size=16, num_workers=2, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    got += _collect(resumed)
    resumed.close()
    assert len(got) == len(want) == len(w) // 16
    for a, b in zip(got, want):
        _same(a, b)
    assert resumed.state_dict()["epoch"] == 2  # the finished epoch moved on


def test_ranks_see_disjoint_windows_and_epochs_reshuffle(stores):
    w = stores["raw"].windows(history=2, chunk=2, split="train")
    seen, counts = [], set()
    for rank in range(3):
        ld = w.loader(batch_size=7, num_workers=0, rank=rank, world_size=3, seed=1)
        batches = _collect(ld)
        counts.add(len(batches))
        seen += [i for b in batches for i in b["index"].tolist()]
    assert len(counts) == 1 and len(seen) == len(set(seen))
    ld = w.loader(batch_size=7, num_workers=0, seed=1)
    e0 = [b["index"].tolist() for b in _collect(ld)]
    e1 = [b["index"].tolist() for b in _collect(ld)]
    assert e0 != e1 and sorted(sum(e0, [])) != [] and ld.state_dict()["epoch"] == 2


def test_bad_arguments_are_clear(stores):
    ds = stores["raw"]
    with pytest.raises(ValueError, match="no split"):
        ds.windows(split="test")
    with pytest.raises(KeyError, match="no camera 'wrist'"):
        ds.windows(cameras=["wrist"])
    with pytest.raises(ValueError, match="over must be"):
        ds.windows(over="frames")
    with pytest.raises(IndexError):
        ds.windows(history=2, chunk=2)[10 ** 6]
    only = ds.windows(history=2, chunk=2, cameras=["rgb_gripper"])
    assert STATIC not in only[0] and GRIPPER in only[0]


def test_worker_error_names_the_file(stores, tmp_path):
    src = stores["raw"].path
    dst = tmp_path / "broken.vla"
    shutil.copytree(src, dst)
    shard = dst / "data" / STATIC / "c" / "0" / "0" / "0" / "0"
    with open(shard, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\xff\xff\xff\xff")
    w = vladata.open(dst).windows(history=2, chunk=2, split=None, over="episodes")
    loader = w.loader(batch_size=4, num_workers=2, shuffle=False)
    with pytest.raises(LoaderError, match="CRC32C") as err:
        _collect(loader)
    assert str(shard) in str(err.value)
    loader.close()


def test_windows_match_the_raw_calvin_frames(stores):
    """Images and state of a window are the CALVIN npz frames its frame_index points at."""
    ds = stores["raw"]
    raw_root = os.path.join(os.path.dirname(ds.path), "raw")
    meta = [json.loads(m) for m in ds.episodes["metadata"].to_list()]
    splits = ds.episodes["split"].to_list()
    w = ds.windows(history=3, chunk=2, split=None, over="episodes")
    for i in range(0, len(w), 37):
        s = w[i]
        ep = int(s["episode_index"])
        folder = "training" if splits[ep] == "train" else "validation"
        for slot, f in enumerate(s["frame_index"].tolist()):
            fid = meta[ep]["frame_ids"][0] + f
            with np.load(os.path.join(raw_root, folder, f"episode_{fid:07d}.npz")) as z:
                np.testing.assert_array_equal(s[STATIC][slot], z["rgb_static"])
                np.testing.assert_array_equal(s["observation.state"][slot],
                                              z["robot_obs"].astype(np.float32))


def test_short_last_batch_without_drop_last(stores):
    w = stores["raw"].windows(history=2, chunk=2, split="validation")
    loader = w.loader(batch_size=16, num_workers=2, shuffle=False, drop_last=False)
    batches = _collect(loader)
    loader.close()
    assert len(batches) == -(-len(w) // 16)
    assert batches[-1]["action"].shape[0] == len(w) - 16 * (len(batches) - 1)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(w)))
    assert len(batches[-1]["instruction"]) == batches[-1]["index"].shape[0]


def test_a_dead_worker_is_reported(stores):
    import signal
    w = stores["raw"].windows(history=2, chunk=2, split=None, over="episodes")
    loader = w.loader(batch_size=4, num_workers=2, seed=0)
    it = iter(loader)
    next(it)
    os.kill(loader._procs[1].pid, signal.SIGKILL)  # a worker killed (say, by the OOM killer)
    with pytest.raises(LoaderError, match="worker 1 .* exited with code -9"):
        for _ in range(len(loader)):
            next(it)
    loader.close()
