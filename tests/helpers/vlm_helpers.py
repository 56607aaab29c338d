"""Helpers of the VLM backbone tests: the data spec, tiny policies, the trainer's loss."""

from __future__ import annotations

import dataclasses

import torch

from tests.helpers.vlm_factories import V

NAMES = ("kosmos2", "llava", "paligemma", "qwen2vl", "flamingo")
HEADS = ("fc", "lstm", "gpt", "discrete", "lm")
MODES = ("one-step", "history", "interleaved")
# Flamingo's new layers at test size; the other adapters ignore these options.
TINY_VLM = {"cross_attn_every": 1, "resampler_depth": 1, "resampler_latents": 4,
            "resampler_heads": 2, "xattn_heads": 2, "xattn_dim_head": 8}
SMALL_HEAD = dict(hidden=16, layers=1, heads=2, image_size=16)


def vlm_spec(history: int = 1, chunk: int = 3, **kw):
    """The fakes' CALVIN-like spec, action tokens in the OpenVLA layout of the tiny vocabulary."""
    from tests.helpers.fakes import make_spec
    from vladata.tokenize import ActionTokenizer
    spec = make_spec(history=history, chunk=chunk, size=(20, 20), **kw)
    tok = ActionTokenizer(bins=spec.n_bins, layout="openvla", vocab_size=V)
    ids = tuple(int(i) for i in tok.id_of_bin(range(spec.n_bins)))
    return dataclasses.replace(spec, token_ids=ids, extra={"tokenizer": tok.to_dict()})


def model_config(name: str, path, head: str = "gpt", mode: str = "one-step", history: int = 1,
                 use_state: bool = True, **vlm):
    from vlatrain.config import ModelConfig
    cfg = ModelConfig(backbone=name, path=str(path), head=head,
                      history=mode, use_state=use_state, **SMALL_HEAD)
    cfg.vlm = {**TINY_VLM, **vlm}
    return cfg


def make_policy(dirs, name, head="gpt", mode="one-step", *, history=None, use_state=True,
                seed=0, spec=None, **vlm):
    """(policy, prep, spec): a policy on the tiny ``name`` backbone and its batch preparer."""
    from vlatrain.augment import BatchPreparer
    from vlatrain.config import AugmentConfig
    from vlatrain.model.heads import build_head
    from vlatrain.model.policy import Policy
    from vlatrain.vlm import VLM_BACKBONES, LMLogitsHead
    h = history or (1 if mode == "one-step" else 3)
    spec = spec or vlm_spec(history=h)
    cfg = model_config(name, dirs[name], head, mode, h, use_state, **vlm)
    torch.manual_seed(seed)
    backbone = VLM_BACKBONES[name](cfg, spec)
    head_ = LMLogitsHead(spec) if head == "lm" else build_head(cfg, backbone.feature_dim, spec)
    policy = Policy(backbone, head_, spec)
    prep = BatchPreparer(spec, {c: backbone.image_spec(c) for c in spec.cameras},
                         AugmentConfig(), torch.device("cpu"), discrete=policy.discrete,
                         use_state=use_state)
    return policy, prep, spec


def prepared(prep, spec, *, seed=0, pad_first=0, train=False, batch_size=4):
    from tests.helpers.fakes import make_batch
    return prep(make_batch(spec, batch_size, seed=seed, pad_first=pad_first), train=train,
                gen=torch.Generator().manual_seed(seed))


def loss_of(policy, out, tgt):
    """The trainer's loss for the policy's kind of head."""
    from vlatrain import losses
    spec = policy.spec
    if policy.discrete:
        return losses.discrete_loss(out, tgt.bins, tgt.mask)["loss"]
    return losses.continuous_loss(out, tgt.action, tgt.mask, arm_dims=list(spec.arm_dims),
                                  gripper_dims=list(spec.gripper_dims))["loss"]
