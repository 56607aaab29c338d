"""Standardisation: gripper helpers on literal cases, and every table dataset's action, state and
language checked against a direct computation from the raw values written to the fixture."""

from __future__ import annotations

import numpy as np
import pytest

from vladata.samples import oxe as samples
from vladata.sources.oxe import OXE_TABLE, OxeSource
from vladata.sources.oxe.standardize import binarize_gripper, decode_codes, rel2abs_gripper


@pytest.mark.parametrize("rel, absolute", [
    ([0, 0, 1, 0, 0, -1, 0], [1, 1, 0, 0, 0, 1, 1]),  # close at 2, open at 5; open before
    ([0, 0, 0], [1, 1, 1]),                            # never commanded: open throughout
    ([0, -1, 0, 1], [0, 1, 1, 0]),                     # first command opens: it was closed
    ([0.05, 0.5, -0.05, -0.5], [1, 0, 0, 1]),          # |x| <= 0.1 is no command
])
def test_rel2abs_gripper(rel, absolute):
    np.testing.assert_array_equal(rel2abs_gripper(np.array(rel, np.float32)), absolute)


@pytest.mark.parametrize("cont, binary", [
    ([1.0, 0.5, 0.0, 0.5, 0.97], [1, 0, 0, 1, 1]),   # in-between takes the next decided value
    ([0.02, 0.3, 0.4], [0, 0.4, 0.4]),                 # ends undecided: the last value carries
])
def test_binarize_gripper(cont, binary):
    np.testing.assert_allclose(binarize_gripper(np.array(cont, np.float32)), binary)


def test_decode_codes():
    s = "push the star to the café"
    codes = np.zeros((2, 40), np.int32)
    codes[0, :len(s)] = [ord(c) for c in s]
    assert decode_codes(codes) == [s, ""]


# -- per-dataset, through the source ----------------------------------------------------------

def _f32(x):
    return np.asarray(x, np.float32).reshape(len(x), -1)


def _rt1_gripper(g):
    """Open until the first close command (> 0.1), then closed until an open command (< -0.1)."""
    out = np.ones(len(g), np.float32)
    closes, opens = np.flatnonzero(g > 0.1), np.flatnonzero(g < -0.1)
    if len(closes):
        out[closes[0]:] = 0
        later = opens[opens > closes[0]]
        if len(later):
            out[later[0]:] = 1
    return out


def _next_decided(g):
    out = []
    for t in range(len(g)):
        j = next((j for j in range(t, len(g)) if g[j] > 0.95 or g[j] < 0.05), None)
        out.append(g[-1] if j is None else float(g[j] > 0.95))
    return np.asarray(out, np.float32)


def expected(dataset, s):
    """(action, state, trim) computed directly from one episode's raw step values ``s``."""
    T = len(s["is_first"])
    z = np.zeros((T, 1), np.float32)
    if dataset == "fractal20220817_data":
        g = _rt1_gripper(_f32(s["action/gripper_closedness_action"])[:, 0])
        act = np.hstack([_f32(s["action/world_vector"]), _f32(s["action/rotation_delta"]),
                         g[:, None]])
        st = np.hstack([_f32(s["observation/base_pose_tool_reached"]),
                        _f32(s["observation/gripper_closed"])])
        return act, st, (0, 0)
    if dataset in ("bridge", "bridge_dataset"):
        state = _f32(s["observation/state"])
        d = np.zeros((T, 6), np.float32)
        d[:-1] = state[1:, :6] - state[:-1, :6]
        g = (_f32(s["action/open_gripper"])[:, 0] if dataset == "bridge" else
             _next_decided(_f32(s["action"])[:, 6]))
        return np.hstack([d, g[:, None]]), np.hstack([state[:, :6], z, state[:, 6:7]]), (1, 1)
    if dataset == "taco_play":
        a = _f32(s["action/rel_actions_world"])
        obs = _f32(s["observation/robot_obs"])
        g = np.where(a[:, 6] > 0, 1.0, 0.0).astype(np.float32)  # -1 close / +1 open
        return (np.hstack([a[:, :6], g[:, None]]), np.hstack([obs[:, :6], z, obs[:, 7:8]]),
                (0, 0))
    if dataset == "language_table":
        a = _f32(s["action"])
        act = np.hstack([a, np.zeros((T, 4), np.float32), np.ones((T, 1), np.float32)])
        st = np.hstack([_f32(s["observation/effector_translation"]),
                        np.zeros((T, 6), np.float32)])
        return act, st, (0, 0)
    if dataset == "droid":
        vel = _f32(s["action_dict/cartesian_velocity"])
        gp = _f32(s["action_dict/gripper_position"])
        act = np.hstack([vel, 1 - gp])
        st = np.hstack([_f32(s["observation/cartesian_position"]), z,
                        _f32(s["observation/gripper_position"])])
        return act, st, (0, 0)
    raise AssertionError(dataset)


TABLE_DATASETS = ["fractal20220817_data", "bridge", "bridge_dataset", "taco_play",
                  "language_table", "droid"]


@pytest.fixture(scope="module", params=TABLE_DATASETS)
def table_fixture(request, tmp_path_factory):
    ds = request.param
    eps = samples.generate(ds, 6, seed=3)
    d = samples.write_dataset(tmp_path_factory.mktemp(ds), ds, samples.SCHEMAS[ds],
                              {"train": eps[:4], "val": eps[4:]}, shards=2)
    return ds, eps, OxeSource(d, progress=False)


def test_standardised_action_and_state_match_a_direct_computation(table_fixture):
    ds, eps, src = table_fixture
    assert src.standardize and src.describe()["gripper"] == "0/1"
    plan = src.plan()
    assert len(plan) == len(eps)
    for i, ep in enumerate(eps):
        act, st, (a, b) = expected(ds, ep["steps"])
        T = len(act)
        assert plan[i].length == T - a - b
        got = src.read(i)
        np.testing.assert_array_equal(got["action"], act[a:T - b], err_msg=f"{ds} episode {i}")
        np.testing.assert_array_equal(got["observation.state"], st[a:T - b])
        assert set(np.unique(got["action"][:, 6])) <= {0.0, 1.0} or ds == "droid"


def test_gripper_conventions_are_exercised(table_fixture):
    """The fixtures hold both gripper states where the dataset can express them."""
    ds, eps, src = table_fixture
    grip = np.concatenate([src.read(i)["action"][:, 6] for i in range(len(eps))])
    if ds == "language_table":
        assert (grip == 1).all()
    elif ds != "droid":
        assert {0.0, 1.0} <= set(np.unique(grip))
    else:
        assert ((grip >= 0) & (grip <= 1)).all() and len(np.unique(grip)) > 2


def test_language_segments_match_the_instructions(table_fixture):
    ds, eps, src = table_fixture
    cfg = OXE_TABLE[ds]
    for info, ep in zip(src.plan(), eps):
        s = ep["steps"]
        T = len(s["is_first"])
        a, b = cfg.trim
        if cfg.language_codes:
            texts = ["".join(chr(c) for c in row if c) for row in s[cfg.language]]
        else:
            texts = list(s[cfg.language])
        texts = texts[a:T - b]
        want = []
        for t, text in enumerate(texts):
            if not text:
                continue
            if want and want[-1][2] == text and want[-1][1] == t - 1:
                want[-1][1] = t
            else:
                want.append([t, t, text])
        assert [[g.start, g.end, g.instruction] for g in info.segments] == want
        for g in info.segments:
            if cfg.language_embedding:
                np.testing.assert_array_equal(
                    g.embedding, np.asarray(s[cfg.language_embedding][a + g.start], np.float32))
            else:
                assert g.embedding is None
    assert any(info.segments for info in src.plan())


def test_alt_language_and_episode_metadata(tmp_path):
    eps = samples.generate("droid", 2, seed=1)
    d = samples.write_dataset(tmp_path, "droid", samples.SCHEMAS["droid"], {"train": eps})
    src = OxeSource(d, progress=False)
    m = src.plan()[1].metadata
    assert m["language_instruction_2"] == eps[1]["steps"]["language_instruction_2"][0]
    assert "language_instruction_3" not in m  # blank everywhere
    assert m["episode_metadata/file_path"] == eps[1]["episode"]["episode_metadata/file_path"]
    assert m["steps"] == len(eps[1]["steps"]["is_first"])
    assert (m["shard"], m["record"]) == ("droid-train.tfrecord-00001-of-00002", 0)
