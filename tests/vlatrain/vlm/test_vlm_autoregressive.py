"""The VLM LM head decoding its action tokens one by one (``model.vlm.autoregressive``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vlm_helpers import loss_of, make_policy, prepared

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


def test_config_checks():
    with pytest.raises(ConfigError, match="needs model.head=lm"):
        Config.from_dict({"model": {"backbone": "llava", "head": "gpt",
                                    "vlm": {"autoregressive": True}}})
    with pytest.raises(ConfigError, match="not with history=interleaved"):
        Config.from_dict({"model": {"backbone": "llava", "head": "lm", "history": "interleaved",
                                    "vlm": {"autoregressive": True}},
                          "data": {"history": 2}})
