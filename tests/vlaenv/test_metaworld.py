"""The Meta-World environment: spec, seeds, actions, gripper convention, refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from vlaenv.base import Env, EnvError, UnknownTaskError  # noqa: E402
from vlaenv.metaworld import (INSTRUCTIONS, MT10, MetaWorldEnv, episode_seed,  # noqa: E402
                              from_metaworld, resolve_tasks, to_metaworld)


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("push-v3", image_size=32)
    yield e
    e.close()


def test_observations_match_the_declared_spec(env):
    assert isinstance(env, Env)
    assert set(env.spec.features) == {"observation.images.corner2",
                                      "observation.images.gripperPOV", "observation.state"}
    assert env.spec.features["observation.state"].names == ("hand_x", "hand_y", "hand_z",
                                                             "gripper_opening")
    assert env.spec.action.names == ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
    obs = env.reset(3)
    env.spec.check_obs(obs)
    for _ in range(3):
        obs, reward, done, info = env.step(np.zeros(7, np.float32))
        env.spec.check_obs(obs)
        assert not done and not info["success"] and not info["truncated"]
    assert np.allclose(obs["observation.state"][:3], env.privileged_state()[:3])
    assert env.instruction == "push the puck to the goal"
    assert obs["observation.images.corner2"].std() > 0  # a real rendering, not a blank frame


def test_check_obs_names_every_bad_key(env):
    obs = env.reset(0)
    bad = dict(obs)
    del bad["observation.images.gripperPOV"]
    bad["observation.state"] = bad["observation.state"].astype(np.float64)
    bad["observation.extra"] = np.zeros(1)
    with pytest.raises(EnvError) as e:
        env.spec.check_obs(bad)
    msg = str(e.value)
    assert "gripperPOV: missing" in msg and "observation.state: expected float32" in msg
    assert "observation.extra: not a declared feature" in msg


def test_seeds_give_fresh_reproducible_initial_states(env):
    a = env.reset(11), env.privileged_state()
    b = env.reset(11), env.privileged_state()
    c = env.reset(12), env.privileged_state()
    assert np.array_equal(a[1], b[1])
    assert np.array_equal(a[0]["observation.images.corner2"], b[0]["observation.images.corner2"])
    assert not np.allclose(a[1][4:7], c[1][4:7])  # the puck starts elsewhere
    collect = {episode_seed("collect", 0, t, k) for t in MT10 for k in range(50)}
    held_out = {episode_seed("eval", 0, t, k) for t in MT10 for k in range(50)}
    assert len(collect) == len(held_out) == 500 and not collect & held_out


@pytest.mark.parametrize("task", ["reach-v3", "window-open-v3"])
def test_the_first_frame_shows_the_scene_the_state_describes(task):
    """Meta-World's reset draws the scene twice and moves the goal marker (and window-open's
    window) after its last forward pass: without a fresh one, the first frame rendered the goal
    of the discarded first draw, and the state lagged. After ``reset`` the marker sits at the
    goal, and another forward pass changes neither the image nor the state."""
    import mujoco
    env = MetaWorldEnv(task, image_size=48, cameras=("topview",))
    try:
        for k in range(2):
            obs = env.reset(episode_seed("eval", 0, task, k))
            state, e = env.privileged_state(), env._env
            assert np.allclose(e.data.site("goal").xpos, e._target_pos)
            assert np.allclose(state[36:], e._target_pos)
            assert np.array_equal(state[:18], state[18:36])  # no earlier frame: repeated
            mujoco.mj_forward(e.model, e.data)
            assert np.array_equal(env._images()["observation.images.topview"],
                                  obs["observation.images.topview"])
            assert np.array_equal(e._get_curr_obs_combined_no_goal(), state[:18])
    finally:
        env.close()


def test_gripper_convention_plus_one_closes(env):
    env.reset(5)
    for _ in range(15):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    closed = obs["observation.state"][3]
    for _ in range(15):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    opened = obs["observation.state"][3]
    assert closed < 0.5 < opened


def test_action_mapping_moves_the_hand_and_clips(env):
    env.reset(2)
    start = env.privileged_state()[:3]
    for _ in range(5):
        env.step(np.array([3.0, 0, 0, 0.7, -0.2, 0.9, 0]))  # clipped to 1 cm/step, no rotation
    moved = env.privileged_state()[:3] - start
    assert 0.02 < moved[0] < 0.06 and abs(moved[1]) < 0.01
    assert to_metaworld(np.array([2, -2, 0.5, 1, 1, 1, -3])).tolist() == [1, -1, 0.5, -1]
    assert from_metaworld(np.array([0.1, 0.2, 0.3, 1.4])).tolist() == pytest.approx(
        [0.1, 0.2, 0.3, 0, 0, 0, 1])


def test_bad_actions_and_steps_are_refused(env):
    env.reset(0)
    with pytest.raises(EnvError, match=r"shape \(7,\)"):
        env.step(np.zeros(4))
    with pytest.raises(EnvError, match="non-finite"):
        env.step(np.full(7, np.nan))


def test_episode_ends_at_the_step_limit():
    e = MetaWorldEnv("reach", render=False, max_steps=4)
    try:
        e.reset(0)
        dones = [e.step(np.zeros(7))[2] for _ in range(4)]
        assert dones == [False, False, False, True]
        with pytest.raises(EnvError, match="reset"):
            e.step(np.zeros(7))
    finally:
        e.close()


def test_task_names_and_instructions():
    assert len(INSTRUCTIONS) == 50 and len(set(INSTRUCTIONS.values())) == 50
    assert resolve_tasks("mt10") == MT10 and len(resolve_tasks("mt50")) == 50
    assert resolve_tasks("reach, push-v3") == ("reach-v3", "push-v3")
    with pytest.raises(UnknownTaskError, match="unknown Meta-World task 'fly-v3'.*reach-v3"):
        resolve_tasks("reach,fly-v3")
    with pytest.raises(UnknownTaskError):
        MetaWorldEnv("stack-blocks")
    with pytest.raises(EnvError, match="unknown Meta-World camera"):
        MetaWorldEnv("reach", cameras=("corner2", "wrist"))
