"""Fitting big models: checkpoint round trip, activation checkpointing, freezing, LoRA, bf16."""

import pytest
import torch

from tests.helpers.vlm_helpers import NAMES, loss_of, make_policy, prepared
from vlatrain.config import OptimConfig
from vlatrain.optim import build_optimizer


def step(policy, prep, spec, seed=0):
    obs, tgt = prepared(prep, spec, seed=seed, pad_first=1 if spec.history > 1 else 0)
    loss = loss_of(policy, policy(obs), tgt)
    loss.backward()
    return loss


def pretrained_params(policy):
    bb = policy.backbone
    return [(n, p) for m in bb.pretrained() for n, p in m.named_parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_torch_save(tiny_dirs, tmp_path, name):
    policy, prep, spec = make_policy(tiny_dirs, name, "lm", "interleaved")
    policy.eval()
    obs, _ = prepared(prep, spec)
    with torch.no_grad():
        ref = policy(obs)
    for p in policy.parameters():  # move every weight off its initial value
        p.data.add_(0.01 * torch.randn_like(p))
    with torch.no_grad():
        trained = policy(obs)
    assert not torch.allclose(ref, trained)
    torch.save(policy.state_dict(), tmp_path / "policy.pt")
    state = torch.load(tmp_path / "policy.pt", weights_only=True)
    fresh, _, _ = make_policy(tiny_dirs, name, "lm", "interleaved", seed=1)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(obs), trained)


def test_lora_state_dict_round_trip(tiny_dirs, tmp_path):
    policy, prep, spec = make_policy(tiny_dirs, "llava", "gpt", lora=True, lora_r=4)
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)  # LoRA starts as the identity; make it count
    policy.eval()
    obs, _ = prepared(prep, spec)
    torch.save(policy.state_dict(), tmp_path / "lora.pt")
    fresh, _, _ = make_policy(tiny_dirs, "llava", "gpt", lora=True, lora_r=4, seed=3)
    fresh.load_state_dict(torch.load(tmp_path / "lora.pt", weights_only=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(obs), policy(obs))


@pytest.mark.parametrize("name", NAMES)
def test_activation_checkpointing_gives_the_same_gradients(tiny_dirs, name):
    grads = []
    for ckpt in (False, True):
        policy, prep, spec = make_policy(tiny_dirs, name, "gpt", "history",
                                         grad_checkpointing=ckpt)
        for layer in getattr(policy.backbone, "flamingo_layers", []):
            layer.xattn.attn_gate.data.fill_(0.5)
        if ckpt:
            flags = [m.gradient_checkpointing for m in policy.modules()
                     if hasattr(m, "gradient_checkpointing")]
            assert flags and all(flags)
        step(policy, prep, spec)
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("tower", ["vision", "language"])
@pytest.mark.parametrize("name", ["kosmos2", "paligemma", "flamingo"])
def test_frozen_towers_get_no_gradients(tiny_dirs, name, tower):
    policy, prep, spec = make_policy(tiny_dirs, name, "lm", **{f"freeze_{tower}": True})
    bb = policy.backbone
    frozen = bb.vision_tower() if tower == "vision" else bb.language_tower()
    other = bb.language_tower() if tower == "vision" else bb.vision_tower()
    for layer in getattr(bb, "flamingo_layers", []):
        layer.xattn.attn_gate.data.fill_(0.5)
    step(policy, prep, spec)
    new = [n for n, _ in frozen.named_parameters() if "xattn." in n]
    for n, p in frozen.named_parameters():
        if "xattn." in n:  # Flamingo's cross-attention is new: it trains inside a frozen LM
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    assert bool(new) == (name == "flamingo" and tower == "language")
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in other.parameters())
    if tower == "language":
        assert not bb.input_embeddings().weight.requires_grad
    optim = build_optimizer(policy, OptimConfig())
    in_optim = {id(p) for g in optim.param_groups for p in g["params"]}
    assert not any(id(p) in in_optim for n, p in frozen.named_parameters() if "xattn." not in n)


@pytest.mark.parametrize("name", NAMES)
def test_lora_trains_only_the_adapters(tiny_dirs, name):
    policy, prep, spec = make_policy(tiny_dirs, name, "gpt", lora=True, lora_r=4,
                                     freeze_vision=True)
    bb = policy.backbone
    step(policy, prep, spec)
    lm = list(bb.language_tower().named_parameters())
    lora = [(n, p) for n, p in lm if "lora_" in n]
    assert lora and all(p.requires_grad for _, p in lora)
    assert all(p.grad is not None for n, p in lora if "lora_B" in n)
    for n, p in lm:  # the language model's own weights are frozen
        if "lora_" not in n and "xattn." not in n:
            assert not p.requires_grad and p.grad is None, n
    for n, p in bb.vision_tower().named_parameters():
        assert "lora_" not in n and not p.requires_grad, n
    assert not bb.output_embeddings().weight.requires_grad
    # besides the adapters, only the projector between the towers trains in the pretrained model
    others = [n for n, p in pretrained_params(policy)
              if p.requires_grad and "lora_" not in n and "xattn." not in n]
    assert all("projector" in n or "image_to_text_projection" in n for n in others), others


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "plain"])
@pytest.mark.parametrize("name", NAMES)
def test_bf16_weights_with_and_without_cpu_autocast(tiny_dirs, name, autocast):
    policy, prep, spec = make_policy(tiny_dirs, name, "lm", "interleaved", dtype="bfloat16")
    bb = policy.backbone
    assert bb.language_tower().get_input_embeddings().weight.dtype == torch.bfloat16
    assert bb.action_token.dtype == torch.float32  # new parameters stay float32
    for layer in getattr(bb, "flamingo_layers", []):
        layer.xattn.attn_gate.data.fill_(0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = step(policy, prep, spec)
    assert torch.isfinite(loss)
    assert torch.isfinite(bb.action_token.grad).all() and float(bb.action_token.grad.abs().sum()) > 0
    assert sum(float(p.grad.abs().sum()) for p in bb.vision_tower().parameters()
               if p.grad is not None) > 0


def test_pretrained_weights_get_their_own_learning_rate(tiny_dirs):
    policy, _, _ = make_policy(tiny_dirs, "flamingo", "gpt", lr_scale=0.1)
    optim = build_optimizer(policy, OptimConfig(lr=1e-3))
    scaled = [g for g in optim.param_groups if g["lr_scale"] == 0.1]
    assert len(scaled) == 1
    ids = {id(p) for p in scaled[0]["params"]}
    bb = policy.backbone
    assert id(bb.vision.get_input_embeddings().weight) in ids
    assert id(bb.action_token) not in ids and id(bb.media_token) not in ids
    assert not any(id(p) in ids for n, p in bb.model.named_parameters() if "xattn." in n)
    assert not any(id(p) in ids for p in bb.resampler.parameters())
    assert make_policy(tiny_dirs, "kosmos2", "gpt")[0].backbone.param_groups() == []


def test_lora_adapters_train_in_float32_beside_bf16_weights(tiny_dirs):
    policy, prep, spec = make_policy(tiny_dirs, "llava", "gpt", lora=True, lora_r=4,
                                     dtype="bfloat16")
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = step(policy, prep, spec)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora)
