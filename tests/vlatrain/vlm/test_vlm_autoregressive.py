"""The VLM LM head decoding its action tokens one by one (``model.vlm.autoregressive``)."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from tests.helpers.vlm_helpers import loss_of, make_policy, prepared

from vladata.errors import ConfigError
from vlatrain.config import Config


@pytest.mark.parametrize("name,mode", [("llava", "one-step"), ("paligemma", "history")])
def test_teacher_forcing_is_causal_and_generation_agrees_with_it(tiny_dirs, name, mode):
    policy, prep, spec = make_policy(tiny_dirs, name, "lm", mode, autoregressive=True)
    prep.teacher_bins = True
    policy.eval()
    obs, tgt = prepared(prep, spec)
    assert torch.equal(obs.action_tokens, tgt.bins.flatten(2))
    k = 5
    changed = obs.action_tokens.clone()
    changed[..., k] = (changed[..., k] + 1) % spec.n_bins
    with torch.no_grad():
        a = policy(obs).flatten(2, 3)                                    # (B, h, c*A, K)
        b = policy(dataclasses.replace(obs, action_tokens=changed)).flatten(2, 3)
    assert torch.allclose(a[:, :, :k + 1], b[:, :, :k + 1], atol=1e-5)   # tokens <= k: unchanged
    assert not torch.allclose(a[:, :, k + 1], b[:, :, k + 1], atol=1e-5)  # token k+1 reads k
    with torch.no_grad():
        generated = policy(dataclasses.replace(obs, action_tokens=None)).flatten(2, 3).argmax(-1)
        forced = policy(dataclasses.replace(obs, action_tokens=generated)).flatten(2, 3)
    assert torch.equal(forced.argmax(-1), generated)   # each generated token is the argmax
    act = policy.predict(obs)                          # the runtime's path: no targets used
    assert act.shape == (4, obs.mask.shape[1], spec.chunk, 7) and torch.isfinite(act).all()
    centres = torch.tensor(spec.bin_centers)
    arm = list(spec.arm_dims)
    assert torch.equal(act[..., arm], centres[generated.view(*act.shape)][..., arm])


def test_teacher_forced_training_lowers_the_loss(tiny_dirs):
    policy, prep, spec = make_policy(tiny_dirs, "llava", "lm", "one-step", autoregressive=True)
    prep.teacher_bins = True
    obs, tgt = prepared(prep, spec)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_of(policy, policy(obs), tgt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


# rows of different lengths: the cache keeps the layout's right padding
INSTRUCTIONS = ["open the drawer", "push the red block to the left", "lift",
                "turn on the light bulb switch"]


def decode(policy, obs):
    """(lm_logits (B, h, c*A, K), features, LM calls: (whole sequence, cached)) of ``obs``."""
    bb = policy.backbone
    with mock.patch.object(bb, "run_language_model", wraps=bb.run_language_model) as whole, \
            mock.patch.object(bb, "run_cached", wraps=bb.run_cached) as cached, torch.no_grad():
        out = bb(obs)
    return out.lm_logits, out.features, (whole.call_count, cached.call_count)


@pytest.mark.parametrize("name,mode", [("llava", "one-step"), ("paligemma", "history"),
                                       ("kosmos2", "history"), ("qwen2vl", "one-step")])
def test_kv_cache_gives_the_tokens_of_whole_passes(tiny_dirs, name, mode):
    cached, prep, spec = make_policy(tiny_dirs, name, "lm", mode, autoregressive=True)
    whole, _, _ = make_policy(tiny_dirs, name, "lm", mode, autoregressive=True, kv_cache=False)
    assert cached.backbone.kv_cache and not whole.backbone.kv_cache
    sd = whole.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in cached.state_dict().items())  # same weights
    obs, _ = prepared(prep, spec, pad_first=1 if mode == "history" else 0)
    obs = dataclasses.replace(obs, action_tokens=None, instruction=INSTRUCTIONS)
    lengths = {len(cached.backbone.prompt.ids(t)[1]) for t in INSTRUCTIONS}
    assert len(lengths) == len(INSTRUCTIONS)  # every row's prefix has its own length
    a, fa, calls_a = decode(cached.eval(), obs)
    b, fb, calls_b = decode(whole.eval(), obs)
    n = spec.chunk * spec.action_dim
    assert calls_a == (0, 1 + n) and calls_b == (n, 0)   # prefix once + one call per token
    assert torch.equal(a.argmax(-1), b.argmax(-1))       # identical tokens
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)    # and the logits they were chosen from
    assert torch.allclose(fa, fb, atol=1e-5, rtol=1e-4)  # the step features too
    tokens = a.argmax(-1)
    if name != "paligemma":  # (the tiny PaliGemma's random head picks bin 0 throughout)
        assert len(tokens.unique()) > 1                  # not one token repeated
    with torch.no_grad():                                # teacher forcing with them agrees
        forced = cached.backbone(dataclasses.replace(obs, action_tokens=tokens)).lm_logits
    assert torch.allclose(forced, a, atol=1e-4, rtol=1e-4)


def test_flamingo_decodes_without_a_cache(tiny_dirs):
    """Flamingo's cross-attention layers take no cache: whole passes, with kv_cache on."""
    policy, prep, spec = make_policy(tiny_dirs, "flamingo", "lm", "one-step", autoregressive=True)
    assert not policy.backbone.supports_kv_cache and not policy.backbone.kv_cache
    obs, _ = prepared(prep, spec)
    obs = dataclasses.replace(obs, action_tokens=None, instruction=INSTRUCTIONS)
    logits, _, calls = decode(policy.eval(), obs)
    assert calls == (spec.chunk * spec.action_dim, 0)
    with torch.no_grad():
        forced = policy.backbone(dataclasses.replace(obs, action_tokens=logits.argmax(-1)))
    assert torch.equal(forced.lm_logits.argmax(-1), logits.argmax(-1))


def test_config_checks():
    with pytest.raises(ConfigError, match="needs model.head=lm"):
        Config.from_dict({"model": {"backbone": "llava", "head": "gpt",
                                    "vlm": {"autoregressive": True}}})
    with pytest.raises(ConfigError, match="not with history=interleaved"):
        Config.from_dict({"model": {"backbone": "llava", "head": "lm", "history": "interleaved",
                                    "vlm": {"autoregressive": True}},
                          "data": {"history": 2}})
    with pytest.raises(ConfigError, match="kv_cache: false only applies"):
        Config.from_dict({"model": {"backbone": "llava", "head": "lm",
                                    "vlm": {"kv_cache": False}}})
    with pytest.raises(ConfigError, match="model.vlm.kv_cache"):
        Config.from_dict({"model": {"backbone": "llava", "head": "lm",
                                    "vlm": {"autoregressive": True, "kv_cache": "maybe"}}})
    cfg = Config.from_dict({"model": {"backbone": "llava", "head": "lm",
                                      "vlm": {"autoregressive": True, "kv_cache": False}}})
    assert cfg.model.vlm.kv_cache is False and cfg.to_dict()["model"]["vlm"]["kv_cache"] is False
