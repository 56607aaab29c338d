"""vlatrain/model: every head x history mode runs forward and backward; heads are causal."""

import pytest
import torch

from tests.helpers.fakes import make_batch, make_spec
from vlatrain.augment import BatchPreparer
from vlatrain.config import AugmentConfig, ModelConfig, load_config
from vlatrain.model import Backbone, PolicyHead, build_policy
from vlatrain.losses import make_loss

SMALL = dict(width=16, hidden=16, layers=1, heads=2, image_size=16)


def setup(head: str, history: int, language="embedding", **kw):
    torch.manual_seed(0)
    spec = make_spec(history=history)
    mcfg = ModelConfig(head=head, history="history" if history > 1 else "one-step",
                       language=language, **{**SMALL, **kw})
    policy = build_policy(mcfg, spec)
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         AugmentConfig(), torch.device("cpu"), discrete=policy.discrete)
    return spec, policy, prep


@pytest.mark.parametrize("head", ["fc", "lstm", "gpt", "discrete"])
@pytest.mark.parametrize("history", [1, 3], ids=["one-step", "history"])
def test_every_head_and_history_mode_trains(head, history):
    spec, policy, prep = setup(head, history)
    obs, tgt = prep(make_batch(spec, pad_first=1 if history > 1 else 0), train=True,
                    gen=torch.Generator().manual_seed(0))
    out = policy(obs)
    shape = (4, history, spec.chunk, 7) + ((spec.n_bins,) if head == "discrete" else ())
    assert out.shape == shape
    cfg = load_config(None, [f"model.head={head}", f"data.history={history}",
                             f"model.history={'history' if history > 1 else 'one-step'}"])
    parts = make_loss(cfg, policy, torch.device("cpu"))(out, tgt)
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"])
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    act = policy.decode(out)
    assert act.shape == (4, history, spec.chunk, 7)
    assert set(act[..., 6].unique().tolist()) <= {-1.0, 1.0}
    assert act[..., :6].abs().max() <= 1


@pytest.mark.parametrize("head", ["fc", "lstm", "gpt"])
def test_heads_are_causal_over_the_history(head):
    spec, policy, prep = setup(head, 4)
    policy.eval()
    obs, _ = prep(make_batch(spec), train=False)
    before = policy(obs)
    obs.images = {k: v.clone() for k, v in obs.images.items()}
    obs.images["static"][:, 3] += 1.0  # change only the last step
    after = policy(obs)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3], after[:, 3])


def test_padded_history_steps_do_not_change_valid_outputs():
    spec, policy, prep = setup("gpt", 4)
    policy.eval()
    batch = make_batch(spec, pad_first=2)
    obs, _ = prep(batch, train=False)
    ref = policy(obs)
    obs.images = {k: v.clone() for k, v in obs.images.items()}
    obs.images["static"][0, :2] = 100.0  # garbage in the padded steps of sample 0
    out = policy(obs)
    assert torch.isfinite(out).all()
    assert torch.allclose(ref[0, 2:], out[0, 2:], atol=1e-5)


@pytest.mark.parametrize("language", ["text", "none"])
def test_language_modes(language):
    spec, policy, prep = setup("fc", 1, language=language)
    obs, tgt = prep(make_batch(spec), train=False)
    assert policy(obs).shape == (4, 1, spec.chunk, 7)
    if language == "text":  # the instruction changes the output
        a = policy(obs)
        obs.instruction = ["lift the blue block"] * 4
        assert not torch.allclose(a, policy(obs))


def test_interfaces_and_build_errors():
    spec, policy, _ = setup("gpt", 1)
    assert isinstance(policy.backbone, Backbone) and isinstance(policy.head, PolicyHead)
    with pytest.raises(ValueError, match="unknown backbone 'kosmos9'"):
        build_policy(ModelConfig(backbone="kosmos9"), spec)
    no_lang = make_spec(language_dim=0)
    with pytest.raises(ValueError, match="no language embeddings"):
        build_policy(ModelConfig(**SMALL), no_lang)
    no_tok = make_spec(bins=0)
    with pytest.raises(ValueError, match="needs the store's action tokenizer"):
        build_policy(ModelConfig(head="discrete", **SMALL), no_tok)


@pytest.mark.parametrize("stride,keypoints", [(4, "relu"), (8, "learned")])
def test_encoder_stride_and_learned_keypoints(stride, keypoints):
    """encoder_stride=4 keeps a (size/4)^2 keypoint map; keypoints=learned adds a 1x1 conv and a
    temperature, both trained."""
    spec, policy, prep = setup("fc", 1, encoder_stride=stride, keypoints=keypoints)
    enc = next(iter(policy.backbone.cams.values()))
    maps = []
    enc.pool.register_forward_pre_hook(lambda m, args: maps.append(args[0].shape[-2:]))
    obs, tgt = prep(make_batch(spec), train=True, gen=torch.Generator().manual_seed(0))
    out = policy(obs)
    assert maps[0] == (16 // stride, 16 // stride)
    make_loss(load_config(None, ["model.head=fc"]), policy, torch.device("cpu"))(out, tgt)[
        "loss"].backward()
    if keypoints == "learned":
        assert enc.keypoints is not None and enc.pool.log_temperature.grad is not None
        assert float(enc.pool.log_temperature.grad.abs()) > 0
    else:
        assert enc.keypoints is None and enc.pool.log_temperature is None
    with pytest.raises(Exception, match="encoder_stride"):
        load_config(None, ["model.encoder_stride=2"])
