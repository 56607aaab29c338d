"""The autoregressive action-token head: KV cache, constrained decoding, teacher forcing, recipe."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fakes import make_batch, make_spec

from cli.vlatrain import main
from vladata.fast import FastTokenizer
from vlatrain.augment import BatchPreparer
from vlatrain.config import AugmentConfig, Config, ModelConfig
from vlatrain.losses import make_loss
from vlatrain.model import build_policy
from vladata.errors import ConfigError

TINY = ModelConfig(head="autoregressive", width=16, hidden=32, layers=1, heads=2, image_size=24)


def fast_spec(chunk: int = 3, history: int = 1):
    """A fake spec with a FAST tokenizer fitted on smooth random chunks like make_batch's."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, chunk)[None, :, None]
    chunks = np.tanh(rng.standard_normal((400, 1, 7)) + rng.standard_normal((400, 1, 7)) * t)
    tok = FastTokenizer.fit(chunks, scale=8, vocab_size=128)
    spec = make_spec(history=history, chunk=chunk)
    return dataclasses.replace(spec, extra={"action_tokens": "fast", "fast": tok.to_json()}), tok


def fast_batch(spec, tok, batch_size=4, seed=0):
    """make_batch plus the FAST fields the window loader serves (``fast_tokens=True``)."""
    batch = make_batch(spec, batch_size, seed=seed)
    act = batch["action"].numpy()
    b, h = act.shape[:2]
    ids = np.zeros((b * h, spec.chunk * 7), np.int64)
    mask = np.zeros(ids.shape, bool)
    tok.encode_into(act.reshape(b * h, spec.chunk, 7), ids, mask)
    batch["action.fast"] = torch.from_numpy(ids.reshape(b, h, -1))
    batch["action.fast_mask"] = torch.from_numpy(mask.reshape(b, h, -1))
    return batch


def prepared(policy, spec, batch):
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         AugmentConfig(), torch.device("cpu"), discrete=policy.discrete,
                         sequence_head=policy.head)
    return prep(batch, train=False)


@pytest.mark.parametrize("tokens", ["bins", "fast"])
def test_kv_cache_gives_the_same_tokens(tokens):
    torch.manual_seed(0)
    spec, tok = fast_spec() if tokens == "fast" else (make_spec(chunk=3), None)
    policy = build_policy(dataclasses.replace(TINY, decoding="greedy"), spec).eval()
    batch = fast_batch(spec, tok, 8) if tok else make_batch(spec, 8)
    obs, _ = prepared(policy, spec, batch)
    ctx = policy.head.context(policy.backbone(obs)).flatten(0, 1)
    with torch.no_grad():
        cached = policy.head.generate_from(ctx, use_cache=True)
        full = policy.head.generate_from(ctx, use_cache=False)
    assert torch.equal(cached, full)
    assert cached.shape == (8, policy.head.length)
    # the runtime's path: decode(forward(obs)) without targets generates the same tokens
    gen = policy(dataclasses.replace(obs, action_tokens=None))
    assert torch.equal(gen.flatten(0, 1), cached)
    act = policy.decode(gen)
    assert act.shape == (8, 1, 3, 7) and torch.isfinite(act).all()
    assert set(act[..., 6].unique().tolist()) <= {-1.0, 1.0}


def test_constrained_decoding_always_decodes_and_greedy_may_not():
    torch.manual_seed(1)
    spec, tok = fast_spec()
    obs, _ = prepared(build_policy(TINY, spec), spec, fast_batch(spec, tok, 16))
    for decoding in ("constrained", "greedy"):
        torch.manual_seed(1)
        policy = build_policy(dataclasses.replace(TINY, decoding=decoding), spec).eval()
        with torch.no_grad():
            policy.head.out.bias[policy.head.eos] = -50.0        # an untrained head never ends
            ids = policy.generate(obs)
        acts = policy.predict(obs)
        used = policy.head.token_lengths[ids].sum(-1)
        if decoding == "constrained":
            assert policy.decodable.all() and (used == 21).all()
            assert (ids == policy.head.eos).any(-1).all()
        else:
            assert not policy.decodable.any()                     # ran out without an EOS
        assert torch.isfinite(acts).all()


@pytest.mark.parametrize("tokens", ["bins", "fast"])
def test_teacher_forced_training_lowers_the_loss(tokens):
    torch.manual_seed(0)
    spec, tok = fast_spec() if tokens == "fast" else (make_spec(chunk=3), None)
    cfg = Config(model=TINY)
    policy = build_policy(cfg.model, spec)
    batch = fast_batch(spec, tok, 8) if tok else make_batch(spec, 8)
    obs, tgt = prepared(policy, spec, batch)
    assert obs.action_tokens is not None and tgt.token_mask.any()
    if tokens == "bins":  # the chunk step past the segment end of sample 1 is out of the loss
        assert not tgt.token_mask[1, 0, -7:].any() and tgt.token_mask[1, 0, :-7].all()
    else:                 # EOS right after the last FAST token
        n = batch["action.fast_mask"].sum(-1)
        assert (tgt.tokens[torch.arange(8), 0, n[:, 0]] == policy.head.eos).all()
        assert (tgt.token_mask.sum(-1) == n + 1).all()
    loss_fn = make_loss(cfg, policy, torch.device("cpu"))
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(policy(obs), tgt)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0] and losses[30] < losses[0]
    # once the batch is learnt, free-running generation reproduces the teacher's sequences
    policy.eval()
    ids = policy.generate(obs)
    assert torch.equal(ids[tgt.token_mask], tgt.tokens[tgt.token_mask])
    if tok is not None:
        act = policy.decode(ids)
        assert policy.decodable.all()
        arm = list(spec.arm_dims)
        err = (act - tgt.action)[..., arm].abs().amax()
        assert err <= tok.error_bound() + 1e-5


def test_config_checks():
    with pytest.raises(ConfigError, match="model.head=autoregressive"):
        Config.from_dict({"data": {"action_tokens": "fast"}})
    with pytest.raises(ConfigError, match="not for a mixture"):
        Config.from_dict({"data": {"action_tokens": "fast", "mixture": ["a", "b"]},
                          "model": {"head": "autoregressive"}})
    with pytest.raises(ValueError, match="FAST tokenizer"):
        build_policy(TINY, dataclasses.replace(make_spec(), extra={"action_tokens": "fast"}))


@pytest.mark.parametrize("tokens", ["bins", "fast"])
def test_recipe_trains_and_evaluates(calvin_store, tmp_path, tokens):
    """The real CLI: `vladata stats --fast`, then training and evaluation of the head."""
    from cli.vladata import main as vladata_cli
    store = tmp_path / "calvin.vla"
    shutil.copytree(calvin_store, store)
    r = CliRunner().invoke(vladata_cli, ["stats", str(store), "--fast", "--fast-chunk", "4"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    args = [f"data.path={store}", "data.chunk=4", f"data.action_tokens={tokens}",
            "model.head=autoregressive", "train.steps=2", f"out={out}", "train.threads=1",
            "data.num_workers=0", "data.batch_size=8", "model.width=16", "model.hidden=32",
            "model.heads=2", "model.layers=1", "model.image_size=24", "log.progress=false",
            "eval.batch_size=16", "eval.batches=1", "log.tensorboard=false"]
    config = Path(__file__).resolve().parents[2] / "configs" / "calvin.yaml"
    r = CliRunner().invoke(main, ["run", str(config), *args])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", str(out / "checkpoints" / "step_0000002.pt"),
                                  "--data", str(store), "--json"])
    assert r.exit_code == 0, r.output
    import json
    m = json.loads(r.output)
    assert m["val/decodable"] == 1.0 and 0 <= m["val/token_acc"] <= 1 and m["val/arm_mae"] > 0
    # the policy runtime acts through the generated tokens with no special case
    import vladata
    from vlatrain.policy import Policy as Runtime
    runtime = Runtime.load(out / "checkpoints" / "step_0000002.pt", "cpu")
    ds = vladata.open(store)
    seg = ds.segments.row(0, named=True)
    runtime.reset(seg["instruction"])
    keys = list(runtime.spec.observations)
    frame = {k: v[0] for k, v in ds.episode(seg["episode_index"], keys).items()}
    action = runtime.act(frame)
    assert action.shape == (7,) and np.isfinite(action).all()
    assert runtime.model.decodable.all()                  # constrained decoding always decodes


def test_preflight_names_a_missing_or_mismatched_fast_tokenizer(calvin_store, tmp_path):
    config = Path(__file__).resolve().parents[2] / "configs" / "calvin.yaml"
    base = ["run", str(config), f"data.path={calvin_store}", "data.action_tokens=fast",
            "model.head=autoregressive", f"out={tmp_path / 'run'}", "data.num_workers=0"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code != 0 and "has no FAST tokenizer" in r.output
    assert "--fast-chunk" in r.output and "Traceback" not in r.output

