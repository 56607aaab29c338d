"""Every VLM backbone x policy head x history mode trains; features are causal over the history."""

import pytest
import torch

from tests.helpers.vlm_helpers import HEADS, MODES, NAMES, loss_of, make_policy, prepared


def open_gates(policy, value=0.5):
    """Flamingo's cross-attention gates start at 0 (images have no effect yet): open them."""
    for layer in getattr(policy.backbone, "flamingo_layers", []):
        layer.xattn.attn_gate.data.fill_(value)
        layer.xattn.ff_gate.data.fill_(value)


def changed(a, b) -> bool:
    """Visibly different (the tiny random models' image pathways are weak: Kosmos-2's ~1e-5)."""
    return float((a - b).abs().max()) > 1e-6


def same(a, b) -> bool:
    return float((a - b).abs().max()) <= 1e-7


def grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_every_head_trains_in_every_history_mode(tiny_dirs, name, mode):
    for head in HEADS:
        policy, prep, spec = make_policy(tiny_dirs, name, head, mode)
        open_gates(policy)
        h = spec.history
        obs, tgt = prepared(prep, spec, pad_first=1 if h > 1 else 0, train=True)
        out = policy(obs)
        discrete = head in ("discrete", "lm")
        assert out.shape == (4, h, spec.chunk, 7) + ((spec.n_bins,) if discrete else ()), head
        loss = loss_of(policy, out, tgt)
        loss.backward()
        assert torch.isfinite(loss), (head, float(loss))
        bb = policy.backbone
        assert bb.fuses_history == (mode == "interleaved")
        # every trainable parameter takes part (DDP needs no find_unused_parameters)
        idle = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
        assert not idle, (head, idle[:3])
        new = [bb.action_token, *bb.state_proj.parameters(), *policy.head.parameters()]
        if head == "lm":
            new.append(bb.slots)
        for p in new:  # the layers new to the policy all receive a gradient
            assert p.grad is not None and torch.isfinite(p.grad).all(), head
        assert grad_norm([bb.action_token]) > 0, head
        # the gradient reaches both pretrained towers
        assert grad_norm(bb.vision_tower().parameters()) > 0, head
        assert grad_norm(bb.language_tower().parameters()) > 0, head
        act = policy.decode(out)
        assert act.shape == (4, h, spec.chunk, 7)
        assert set(act[..., 6].unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_interleaved_features_and_logits_are_causal_over_the_window(tiny_dirs, name):
    policy, prep, spec = make_policy(tiny_dirs, name, "lm", "interleaved", history=4)
    open_gates(policy)
    policy.eval()
    obs, _ = prepared(prep, spec)
    with torch.no_grad():
        ref = policy.backbone(obs)
        obs.images = {k: v.clone() for k, v in obs.images.items()}
        obs.images["static"][:, 2] = torch.randn_like(obs.images["static"][:, 2])  # step 2 only
        out = policy.backbone(obs)
    for a, b in ((ref.features, out.features), (ref.lm_logits, out.lm_logits)):
        assert same(a[:, :2], b[:, :2])  # steps before 2 cannot see it
        assert changed(a[:, 2], b[:, 2]) and changed(a[:, 3], b[:, 3])  # step 2 and later do


@pytest.mark.parametrize("name", NAMES)
def test_history_mode_steps_are_independent(tiny_dirs, name):
    policy, prep, spec = make_policy(tiny_dirs, name, "gpt", "history", history=3)
    open_gates(policy)
    policy.eval()
    obs, _ = prepared(prep, spec)
    with torch.no_grad():
        ref = policy.backbone(obs).features
        obs.images = {k: v.clone() for k, v in obs.images.items()}
        obs.images["wrist"][:, 1] = torch.randn_like(obs.images["wrist"][:, 1])
        out = policy.backbone(obs).features
    assert same(ref[:, [0, 2]], out[:, [0, 2]])
    assert changed(ref[:, 1], out[:, 1])


@pytest.mark.parametrize("mode", ["history", "interleaved"])
@pytest.mark.parametrize("name", ["kosmos2", "flamingo"])
def test_padded_history_steps_change_nothing(tiny_dirs, name, mode):
    policy, prep, spec = make_policy(tiny_dirs, name, "gpt", mode, history=4)
    open_gates(policy)
    policy.eval()
    obs, _ = prepared(prep, spec, pad_first=2)  # sample 0: steps 0, 1 do not exist
    with torch.no_grad():
        ref = policy(obs)
        feats = policy.backbone(obs).features
        obs.images = {k: v.clone() for k, v in obs.images.items()}
        obs.images["static"][0, :2] = 50.0  # garbage in the padding
        obs.state = obs.state.clone()
        obs.state[0, :2] = float("nan")
        out = policy(obs)
    assert torch.isfinite(out).all()
    assert same(ref[0, 2:], out[0, 2:])
    assert torch.equal(feats[0, :2], torch.zeros_like(feats[0, :2]))  # padded steps: zeros


def test_a_single_camera_and_no_state(tiny_dirs):
    from tests.helpers.vlm_helpers import vlm_spec
    spec = vlm_spec(history=2, cameras=("static",))
    policy, prep, spec = make_policy(tiny_dirs, "qwen2vl", "fc", "interleaved", spec=spec,
                                     use_state=False)
    assert policy.backbone.state_proj is None
    obs, tgt = prepared(prep, spec)
    assert obs.state is None
    loss_of(policy, policy(obs), tgt).backward()
    assert policy.backbone.action_token.grad is not None


def test_missing_instructions_read_as_empty(tiny_dirs):
    policy, prep, spec = make_policy(tiny_dirs, "paligemma", "fc")
    obs, _ = prepared(prep, spec)
    obs.instruction = []
    assert torch.isfinite(policy(obs)).all()
    obs.instruction = ["only one"]
    with pytest.raises(ValueError, match="1 instructions for a batch of 4"):
        policy(obs)
