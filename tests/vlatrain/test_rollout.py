"""Closed-loop rollouts through `vlatrain rollout`: the evaluator tells success from failure."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.stores import collect_metaworld
from vlatrain.rollout import PolicySpec, wilson

os.environ.setdefault("MUJOCO_GL", "egl")


def test_wilson_interval():  # reference values: scipy.stats.binomtest(k, n).proportion_ci("wilson")
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson(90, 100) == pytest.approx((0.825634, 0.944771), abs=1e-6)
    assert wilson(0, 0) == (0.0, 1.0)


def test_policy_spec_refuses_unknown_policies():
    with pytest.raises(ValueError, match="unknown policy 'smart'"):
        PolicySpec("smart")
    with pytest.raises(ValueError, match="checkpoint"):
        PolicySpec("expert", checkpoint="x.pt")


def _rollout(*args):
    from cli.vlatrain import main
    r = CliRunner().invoke(main, ["rollout", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])


def test_expert_succeeds_random_fails_and_videos_decode(tmp_path):
    pytest.importorskip("metaworld")
    import av
    expert = _rollout("--policy", "expert", "--tasks", "reach,drawer-close", "--episodes", "1",
                      "--image-size", "32", "--video", str(tmp_path), "--videos-per-task", "1")
    assert [t["task"] for t in expert["tasks"]] == ["reach-v3", "drawer-close-v3"]
    assert expert["overall"]["successes"] == 2 and expert["overall"]["success_rate"] == 1.0
    assert expert["overall"]["ci95"] == pytest.approx(list(wilson(2, 2)))
    assert all(0 < t["mean_length"] < 300 for t in expert["tasks"])
    seeds = [r["seed"] for t in expert["tasks"] for r in t["runs"]]
    assert len(set(seeds)) == 2 and all(s % 2 == 1 for s in seeds)  # held-out: odd, collect: even
    assert len(expert["videos"]) == 2
    for path, task in zip(expert["videos"], ("drawer-close-v3", "reach-v3")):
        assert os.path.basename(path).startswith(f"{task}_000_success")
        with av.open(path) as f:
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
        length = next(t["runs"][0]["length"] for t in expert["tasks"] if t["task"] == task)
        assert len(frames) == length + 1  # the initial observation and one per step
        assert frames[0].shape == (32 + 16, 64, 3) and frames[-1].std() > 0
    rand = _rollout("--policy", "random", "--tasks", "drawer-close", "--episodes", "3",
                    "--image-size", "16", "--max-steps", "40")
    assert rand["overall"]["successes"] <= 1
    assert rand["steps"] >= 2 * 40


def test_workers_give_the_same_episodes():
    pytest.importorskip("metaworld")
    one = _rollout("--policy", "expert", "--tasks", "reach", "--episodes", "2", "--seed", "3",
                   "--image-size", "16")
    two = _rollout("--policy", "expert", "--tasks", "reach", "--episodes", "2", "--seed", "3",
                   "--image-size", "16", "--workers", "2")
    assert one["tasks"] == two["tasks"] and one["steps"] == two["steps"]


def test_batched_environments_give_the_same_episodes(monkeypatch):
    pytest.importorskip("metaworld")
    from vlatrain import rollout
    one = rollout.run(PolicySpec("expert"), "reach", episodes=3, seed=2, progress=False,
                      env=rollout.EnvConfig(image_size=16))
    two = rollout.run(PolicySpec("expert"), "reach", episodes=3, seed=2, batch=2, progress=False,
                      env=rollout.EnvConfig(image_size=16))
    assert one.tasks == two.tasks and one.successes == 3

    class Batched:  # what a runtime offers: one policy acting for B environments at once
        calls: list = []

        def reset_batch(self, instructions):
            self.calls.append(("reset", list(instructions)))

        def act_batch(self, observations):
            for o in observations:
                assert set(o) == {"observation.state", "observation.images.corner2",
                                  "observation.images.gripperPOV"}
            self.calls.append(("act", len(observations)))
            return np.zeros((len(observations), 7), np.float32)

    monkeypatch.setattr(rollout, "load_policy", lambda checkpoint, **rule: Batched())
    monkeypatch.setattr(rollout, "_LOADED", {})
    r = rollout.run(PolicySpec("checkpoint", checkpoint="ckpt.pt"), "reach", episodes=3,
                    batch=2, progress=False, env=rollout.EnvConfig(image_size=16, max_steps=5))
    assert r.steps == 15 and r.successes == 0
    assert Batched.calls[0] == ("reset", ["reach the goal position"] * 2)
    assert [c for c in Batched.calls if c[0] == "act"] == [("act", 2)] * 5 + [("act", 1)] * 5


def test_random_policy_is_seeded_per_episode():
    from types import SimpleNamespace

    from vlaenv.metaworld import make_spec  # the spec alone needs no simulator
    from vlatrain.rollout import RandomPolicy
    env = SimpleNamespace(spec=make_spec())
    a = PolicySpec("random", seed=1).build(env, 10).act({})
    b = PolicySpec("random", seed=1).build(env, 10).act({})
    c = PolicySpec("random", seed=1).build(env, 11).act({})
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.shape == (7,)
    assert np.all(np.abs(RandomPolicy(7, 0).act({})) <= 1)


def test_refusals_are_clean(tmp_path):
    from cli.vlatrain import main
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    r = CliRunner().invoke(main, ["rollout", str(ckpt), "--tasks", "reach"])
    assert r.exit_code == 1 and "model.pt: not a readable checkpoint" in r.output
    r = CliRunner().invoke(main, ["rollout", "--tasks", "reach"])
    assert r.exit_code == 2 and "CHECKPOINT or --policy" in r.output
    pytest.importorskip("metaworld")
    r = CliRunner().invoke(main, ["rollout", "--policy", "random", "--tasks", "reach,levitate"])
    assert r.exit_code == 1 and "unknown Meta-World task 'levitate'" in r.output


def _collect(path, cameras, size):
    return collect_metaworld(path, episodes_per_task=2, image_size=size, cameras=cameras,
                             val_fraction=0.5, max_steps=120)


def test_a_checkpoint_is_rolled_out_with_the_cameras_it_was_trained_on(tmp_path):
    """A policy trained on `topview` (not a default camera) gets topview frames in rollouts."""
    pytest.importorskip("metaworld")
    from vlatrain.config import load_config
    from vlatrain.recipes.train import run
    from tests.helpers.runs import TINY
    _collect(tmp_path / "top.vla", ("topview",), 24)
    out = tmp_path / "run"
    run(load_config(None, [f"data.path={tmp_path / 'top.vla'}", f"out={out}", *TINY,
                           "train.steps=2", "data.chunk=4", "data.over=episodes",
                           "model.language=text", "model.head=fc"]))
    report = _rollout(str(out / "checkpoints" / "step_0000002.pt"), "--tasks", "reach", "--episodes", "1",
                      "--max-steps", "3", "--image-size", "24")
    assert report["overall"]["episodes"] == 1 and report["tasks"][0]["runs"][0]["length"] == 3


def test_the_mt10_recipe_trains_on_what_its_collect_command_records(tmp_path):
    """configs/metaworld_mt10.yaml (cameras, crops, sizes) against a store collected with the
    cameras its header names: two training steps and a rollout step, through the CLIs."""
    pytest.importorskip("metaworld")
    import re
    from pathlib import Path
    from cli.vlatrain import main
    recipe = Path(__file__).resolve().parents[2] / "configs" / "metaworld_mt10.yaml"
    cams = re.search(r"--cameras (\S+)", recipe.read_text()).group(1)
    _collect(tmp_path / "mt.vla", tuple(cams.split(",")), 128)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", str(recipe), f"data.path={tmp_path / 'mt.vla'}",
                                  f"out={out}", "train.steps=2", "train.checkpoint_every=2",
                                  "eval.every=2", "eval.batches=1", "data.num_workers=0",
                                  "log.progress=false", "log.tensorboard=false"])
    assert r.exit_code == 0, r.output
    report = _rollout(str(out / "checkpoints" / "step_0000002.pt"), "--tasks", "reach",
                      "--episodes", "1", "--max-steps", "2")
    assert report["tasks"][0]["runs"][0]["length"] == 2
