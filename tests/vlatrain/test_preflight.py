"""Config vs store before step 1 (every mismatch at once), and checkpoints that do not fit the
policy: errors naming the store, the config key, the file and the checkpoint key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.vlatrain import main

from tests.helpers.runs import CONFIG, TINY


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def lacking_store(tmp_path_factory):
    """A CALVIN store with no validation split and no gripper camera."""
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    d = tmp_path_factory.mktemp("lacking")
    raw = write_sample(d / "raw", train_segments=2, val_segments=1, frames_per_segment=(40, 60),
                       static_size=32, gripper_size=24, seed=0, depth=False)
    convert(CalvinSource(raw, keys=("rgb_static", "robot_obs", "rel_actions", "actions"),
                         splits=("training",)), d / "lacking.vla", progress=False)
    return d / "lacking.vla"


@pytest.fixture(scope="module")
def trained(calvin_rgb_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=1", f"out={out}", *TINY)
    assert r.exit_code == 0, r.output
    return out / "checkpoints" / "step_0000001.pt"


def test_run_reports_every_mismatch_before_step_1(lacking_store, tmp_path):
    out = tmp_path / "run"
    r = invoke("run", CONFIG, f"data.path={lacking_store}", "data.cameras=[rgb_static,rgb_gripper,wrist]",
               "data.state_dims=[0,1,14,40]", f"out={out}", *TINY)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    for text in (f"data.cameras: {lacking_store} has no camera 'rgb_gripper'",
                 f"data.cameras: {lacking_store} has no camera 'wrist'",
                 f"data.state_dims: {lacking_store} 'observation.state' has 15 dims",
                 "no dims [40]",
                 f"data.val_split: {lacking_store}: no split ['validation']"):
        assert text in r.output, r.output
    assert "Traceback" not in r.output
    assert not out.exists()  # refused before anything was written


def test_a_mixture_reports_every_store(calvin_rgb_store, lacking_store, tmp_path):
    r = invoke("run", CONFIG, f"data.mixture=[{calvin_rgb_store}, {lacking_store}]",
               "data.cameras=[rgb_gripper]", "data.val_split=test", f"out={tmp_path / 'run'}",
               *TINY)
    assert r.exit_code == 1
    assert f"{lacking_store} has no camera 'rgb_gripper'" in r.output
    assert "data.val_split: no store of the mixture has a 'test' split" in r.output
    assert f"{calvin_rgb_store} has no camera" not in r.output


def test_eval_reports_every_mismatch(trained, lacking_store):
    r = invoke("eval", trained, "--data", lacking_store)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert f"{lacking_store} has no camera 'rgb_gripper'" in r.output
    assert f"{lacking_store}: no split ['validation']" in r.output
    assert "Traceback" not in r.output


def edited(trained, tmp_path, edit) -> Path:
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_a_wrong_shaped_weight_is_named(trained, calvin_rgb_store, tmp_path):
    def grow(ckpt):
        name = next(k for k, v in ckpt["model"].items() if v.dim() == 2)
        ckpt["model"][name] = torch.zeros(ckpt["model"][name].shape[0] + 1, 3)
        ckpt["grown"] = name
    path = edited(trained, tmp_path, grow)
    name = torch.load(path, weights_only=True)["grown"]
    r = invoke("eval", path, "--data", calvin_rgb_store)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert f"{path}: the weights do not fit" in r.output and f"model.{name}:" in r.output


def test_missing_weights_are_named(trained, calvin_rgb_store, tmp_path):
    path = edited(trained, tmp_path, lambda c: c["model"].pop(sorted(c["model"])[0]))
    r = invoke("eval", path, "--data", calvin_rgb_store)
    assert r.exit_code == 1 and "1 weights missing" in r.output and str(path) in r.output


@pytest.mark.parametrize("edit,expect", [
    (lambda c: c["spec"].update(action_dim="seven"), "key 'spec' is malformed: action_dim"),
    (lambda c: c["spec"].pop("action_dim"), "key 'spec' is malformed (TypeError"),
    (lambda c: c["spec"].pop("cameras"), "malformed: cameras/image_shapes"),
    (lambda c: c.update(spec=[1, 2]), "key 'spec' is list, not a dict"),
    (lambda c: c["spec"].update(image_shapes={"rgb_static": [1, 2]}), "image_shapes"),
    (lambda c: c["config"]["model"].update(head="mlp"), "key 'config'"),
])
def test_a_malformed_spec_or_config_is_named(trained, calvin_rgb_store, tmp_path, edit, expect):
    path = edited(trained, tmp_path, edit)
    r = invoke("eval", path, "--data", calvin_rgb_store)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert str(path) in r.output and expect in r.output


def test_resume_from_a_checkpoint_that_does_not_fit(calvin_rgb_store, tmp_path):
    out = tmp_path / "run"
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=1", f"out={out}", *TINY)
    assert r.exit_code == 0, r.output
    ckpt_path = out / "checkpoints" / "step_0000001.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["optimizer"]["param_groups"] = []
    torch.save(ckpt, ckpt_path)
    r = invoke("run", "--resume", out, "train.steps=2")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert f"{ckpt_path}: key 'optimizer' does not fit" in r.output
