"""Auxiliary targets (``data.aux_targets``): a training-only head predicts privileged features
(Meta-World's object and goal positions); the policy's actions never read them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vladata.errors import ConfigError, StoreError
from vlatrain.config import load_config
from vlatrain.losses import aux_loss
from vlatrain.policy import Policy
from vlatrain.recipes.train import run

os.environ.setdefault("MUJOCO_GL", "egl")

ENV = "observation.environment_state"
POSITIONS = "[0, 1, 2, 14, 15, 16]"  # object 1 and goal positions
TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=8", "model.width=16",
        "model.hidden=32", "model.layers=1", "log.progress=false", "log.tensorboard=false",
        "eval.batches=2", "eval.batch_size=16", "model.language=text", "model.head=fc",
        "model.image_size=24", "data.augment.shift=0", "log.every=1"]


def aux(dims=POSITIONS, weight=1.0, key=ENV):
    return f"data.aux_targets=[{{key: {key}, dims: {dims}, weight: {weight}}}]"


@pytest.fixture(scope="module")
def aux_run(mw_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("aux") / "run"
    run(load_config(None, [f"data.path={mw_store}", f"out={out}", *TINY, aux(),
                           "train.steps=40", "train.checkpoint_every=40", "eval.every=40",
                           "optim.warmup_steps=0"]))
    return out


def test_the_auxiliary_head_learns_the_privileged_positions(aux_run):
    rows = [json.loads(line) for line in (aux_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["aux"] for r in rows if "aux" in r]
    assert len(train) == 40 and all(np.isfinite(train))
    assert np.mean(train[-5:]) < 0.5 * np.mean(train[:5])  # it fits the targets
    last = rows[-1]
    assert np.isfinite(last["val/aux_mse"]) and last["val/loss"] > 0
    ckpt = torch.load(aux_run / "checkpoints" / "step_0000040.pt", weights_only=True)
    (target,) = ckpt["spec"]["extra"]["aux_targets"]
    assert target == {"key": ENV, "dims": [0, 1, 2, 14, 15, 16], "weight": 1.0,
                      "names": ["obj1_x", "obj1_y", "obj1_z", "goal_x", "goal_y", "goal_z"]}
    assert ckpt["model"]["aux_head.weight"].shape == (6, 16)


def test_a_deployed_policy_neither_needs_nor_reads_the_privileged_state(aux_run, mw_store):
    import vladata
    policy = Policy.load(aux_run / "checkpoints" / "step_0000040.pt", "cpu")
    assert ENV not in policy.spec.observations  # the runtime asks for cameras and state only
    ep = vladata.open(mw_store).episode(0)
    frame = {k: np.asarray(ep[k][5]) for k in policy.spec.observations}
    policy.reset("reach the goal position")
    a = policy.act(frame)
    with torch.no_grad():  # the actions do not depend on the auxiliary head
        policy.model.aux_head.weight.normal_()
        policy.model.aux_head.bias.fill_(3.0)
    policy.reset("reach the goal position")
    assert np.array_equal(policy.act(frame), a)
    policy.reset("reach the goal position")  # handed the privileged state anyway: ignored
    assert np.array_equal(policy.act({**frame, ENV: np.ones(17, np.float32)}), a)


def test_aux_loss_weights_targets_and_ignores_padded_steps():
    pred = torch.zeros(2, 3, 5, requires_grad=True)
    target = torch.ones(2, 3, 5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    total, mse = aux_loss(pred, target, mask, [2, 3], [1.0, 0.5])
    assert float(total.detach()) == pytest.approx(1.5) and float(mse) == pytest.approx(1.0)
    mask[0, :2] = False
    garbage = target.clone()
    garbage[0, :2] = 1e6  # masked steps hold garbage: neither value nor gradient sees it
    total, _ = aux_loss(pred, garbage, mask, [2, 3], [1.0, 0.5])
    assert float(total.detach()) == pytest.approx(1.5)
    total.backward()
    assert float(pred.grad[0, :2].abs().sum()) == 0 and float(pred.grad[1].abs().sum()) > 0


@pytest.mark.parametrize("override,error,match", [
    (aux(key="observation.wrist_force"), StoreError, "'observation.wrist_force', which the store"),
    (aux(key="action.tokens"), StoreError, "must be a float vector"),
    (aux(dims="[0, 17]"), StoreError, r"dims \[0, 17\] go beyond its 17 dims"),
    (aux(key="observation.images.corner2"), ConfigError, "is an image"),
    (aux(dims="[1, 1]"), ConfigError, "distinct indices"),
    (aux(weight=-1), ConfigError, "weight: expected a finite number >= 0"),
])
def test_bad_aux_targets_are_refused_clearly(mw_store, tmp_path, override, error, match):
    with pytest.raises(error, match=match):
        run(load_config(None, [f"data.path={mw_store}", f"out={tmp_path / 'run'}", *TINY,
                               override, "train.steps=1"]))
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir())


def test_aux_targets_come_from_one_store(mw_store):
    with pytest.raises(ConfigError, match="aux_targets: read from one store"):
        load_config(None, [f"data.mixture=[{mw_store}, {mw_store}]", aux()])


@pytest.mark.parametrize("aux_input", ["features", "keypoints"])
def test_the_auxiliary_head_reads_the_features_or_the_keypoints(aux_input):
    """``model.aux_input=keypoints``: a linear read-out of the tiny backbone's spatial-softmax
    keypoints, so the auxiliary loss trains the camera encoders and nothing after them."""
    import dataclasses

    from tests.helpers.fakes import make_batch, make_spec
    from vlatrain.augment import BatchPreparer
    from vlatrain.config import AugmentConfig, ModelConfig
    from vlatrain.model import build_policy
    torch.manual_seed(0)
    target = {"key": ENV, "dims": [0, 2], "names": ["a", "c"], "weight": 1.0}
    spec = dataclasses.replace(make_spec(), extra={"aux_targets": [target]})
    policy = build_policy(ModelConfig(head="fc", width=16, hidden=16, layers=1, image_size=16,
                                      aux_input=aux_input), spec)
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         AugmentConfig(), torch.device("cpu"), discrete=False)
    batch = make_batch(spec)
    batch[ENV] = torch.randn(4, 1, 3)
    obs, tgt = prep(batch, train=True, gen=torch.Generator().manual_seed(0))
    assert torch.equal(tgt.aux, batch[ENV][..., [0, 2]])
    policy(obs)
    width = 2 * 64 * len(spec.cameras) if aux_input == "keypoints" else 16
    assert policy.aux_head.in_features == width and policy.aux_pred.shape == (4, 1, 2)
    total, _ = aux_loss(policy.aux_pred, tgt.aux, tgt.obs_mask, [2], [1.0])
    total.backward()
    stem = next(iter(policy.backbone.cams.values())).blocks[0][0].weight.grad
    assert stem is not None and float(stem.abs().sum()) > 0
    mix = policy.backbone.mix[0].weight.grad
    assert (mix is None) == (aux_input == "keypoints")
    with pytest.raises(ConfigError, match="aux_input: 'keypoints' are the tiny backbone's"):
        load_config(None, ["model.aux_input=keypoints", "model.backbone=kosmos2",
                           "model.head=lm"])
