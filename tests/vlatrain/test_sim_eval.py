"""Rollouts during training (eval.rollout): logged per task, and best.pt chosen by success."""

from __future__ import annotations

import json
import os

import pytest

from vladata.errors import ConfigError
from vlatrain.checkpoint import CheckpointManager, load
from vlatrain.config import load_config
from vlatrain.recipes.train import run

os.environ.setdefault("MUJOCO_GL", "egl")

TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=4", "model.width=16",
        "model.hidden=32", "model.layers=1", "model.image_size=16", "model.language=text",
        "log.progress=false", "log.tensorboard=true", "eval.batches=1", "eval.batch_size=8",
        "data.chunk=4", "data.over=episodes"]


def test_rollouts_during_training_pick_best_by_success(mw_store, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"data.path={mw_store}", f"out={out}", *TINY, "train.steps=4",
                             "train.checkpoint_every=2", "eval.every=2", "train.keep_last=5",
                             "eval.rollout.env=metaworld", "eval.rollout.tasks=reach",
                             "eval.rollout.episodes=2", "eval.rollout.max_steps=5",
                             "eval.rollout.every=2", "eval.rollout.execute=2",
                             "eval.best_metric=rollout/success"])
    assert cfg.eval.mode() == "max"
    run(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [d for d in lines if "rollout/success" in d]
    assert [d["step"] for d in evals] == [2, 4]
    for d in evals:  # 5 steps cannot reach the goal: the metric is there and it is a rate
        assert d["rollout/success"] == d["rollout/success/reach-v3"] == 0.0
        assert d["rollout/length"] == 5.0 and "val/arm_mae" in d
    report = json.loads((out / "rollouts" / "step_0000004.json").read_text())
    assert report["overall"]["episodes"] == 2 and report["tasks"][0]["task"] == "reach-v3"
    assert sorted(p.name for p in (out / "rollouts").iterdir()) == [
        "step_0000002.json", "step_0000004.json"]  # the policy-only files are gone
    best = load(out / "checkpoints" / "best.pt")["best"]
    assert best == {"metric": "rollout/success", "value": 0.0, "step": 2}
    events = list((out / "tensorboard").iterdir())
    assert events


def test_best_mode_max_keeps_the_highest(tmp_path):
    m = CheckpointManager(tmp_path, 5, "rollout/success", mode="max")
    for step, v in ((1, 0.2), (2, 0.5), (3, 0.4)):
        m.save(step, {"model": {}}, {"rollout/success": v})
    assert (m.best_step, m.best_value) == (2, 0.5)
    low = CheckpointManager(tmp_path / "low", 5, "val/arm_mae")
    for step, v in ((1, 0.2), (2, 0.5), (3, 0.1)):
        low.save(step, {"model": {}}, {"val/arm_mae": v})
    assert (low.best_step, low.best_value) == (3, 0.1)


def test_best_mode_follows_the_metric():
    for metric, mode in (("rollout/success", "max"), ("rollout/success/reach-v3", "max"),
                         ("val/gripper_acc", "max"), ("val/arm_mae", "min"), ("val/loss", "min")):
        assert load_config(None, [f"eval.best_metric={metric}", "eval.rollout.env=metaworld"]
                           ).eval.mode() == mode
    assert load_config(None, ["eval.best_mode=min", "eval.best_metric=val/gripper_acc"]
                       ).eval.mode() == "min"


def test_rollout_settings_are_checked():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["eval.best_metric=rollout/success"])
    assert "needs rollouts during training: set eval.rollout.env" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["eval.rollout.env=metaworld", "eval.rollout.every=150",
                           "eval.every=100", "train.checkpoint_every=500",
                           "eval.rollout.episodes=0", "eval.rollout.execute=2",
                           "eval.rollout.ensemble=0.1"])
    msg = str(e.value)
    assert "eval.rollout.every: 150 is not a multiple of eval.every (100)" in msg
    assert "eval.rollout.episodes: must be >= 1" in msg
    assert "eval.rollout.execute: choose one chunk execution rule" in msg
    with pytest.raises(ConfigError, match="eval.rollout.env"):
        load_config(None, ["eval.rollout.env=libero"])
