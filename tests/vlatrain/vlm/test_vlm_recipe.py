"""The trainer's own recipe trains, checkpoints and evaluates a tiny VLM policy on a real store."""

import math

import pytest

from vlatrain.config import load_config


@pytest.fixture
def registered(monkeypatch):
    """The VLM backbones in the trainer's registry, as ``vlatrain.vlm.register`` puts them."""
    from vlatrain.model import policy
    from vlatrain.vlm import register
    monkeypatch.setattr(policy, "BACKBONES", register(dict(policy.BACKBONES)))


@pytest.mark.parametrize("name, history, head", [
    ("kosmos2", 1, ["model.head=lstm"]), ("qwen2vl", 2, ["model.head=lstm"]),
    ("llava", 1, ["model.head=lm", "model.vlm.autoregressive=true"])])
def test_train_and_evaluate_a_vlm_policy(calvin_rgb_store, tiny_dirs, tmp_path, registered, name,
                                         history, head):
    from vlatrain import checkpoint
    from vlatrain.recipes.evaluate import evaluate_checkpoint
    from vlatrain.recipes.train import run
    cfg = load_config(None, [
        f"out={tmp_path}", f"data.path={calvin_rgb_store}", f"data.history={history}",
        "data.chunk=2", "data.batch_size=2", "data.num_workers=0",
        f"model.backbone={name}", f"model.path={tiny_dirs[name]}", *head,
        f"model.history={'one-step' if history == 1 else 'history'}", "model.image_size=16",
        "model.hidden=16", "model.layers=1", "train.steps=2", "train.checkpoint_every=2",
        "eval.every=0", "eval.batches=1", "eval.batch_size=2", "log.every=1",
        "log.progress=false", "log.tensorboard=false"])
    out = run(cfg)
    last = checkpoint.latest(out / "checkpoints")
    assert last is not None
    state = checkpoint.load(last)  # torch.load(weights_only=True) of the whole VLM policy
    assert any(k.startswith("backbone.model.") for k in state["model"])
    metrics, _ = evaluate_checkpoint(last, str(calvin_rgb_store), batches=1, device="cpu")
    assert math.isfinite(metrics["val/loss"])
    if "model.vlm.autoregressive=true" in head:
        acts_with_the_kv_cache(last, calvin_rgb_store)


def acts_with_the_kv_cache(path, store):
    """The policy runtime on an autoregressive checkpoint decodes through the key/value cache:
    the prompt once, then one cached call per action token, never a whole-sequence pass."""
    from unittest import mock

    import numpy as np

    import vladata
    from vlatrain.policy import Policy
    runtime = Policy.load(path, "cpu")
    bb = runtime.model.backbone
    assert bb.kv_cache
    ds = vladata.open(store)
    seg = ds.segments.row(0, named=True)
    runtime.reset(seg["instruction"])
    keys = list(runtime.spec.observations)
    frame = {k: v[0] for k, v in ds.episode(seg["episode_index"], keys).items()}
    with mock.patch.object(bb, "run_language_model", wraps=bb.run_language_model) as whole, \
            mock.patch.object(bb, "run_cached", wraps=bb.run_cached) as cached:
        action = runtime.act(frame)
    assert action.shape == (7,) and np.isfinite(action).all()
    assert whole.call_count == 0 and cached.call_count == 1 + bb.n_slots
