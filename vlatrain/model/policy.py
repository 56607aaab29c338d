"""A policy = backbone + head, built by name from the config.

``BACKBONES`` maps ``model.backbone`` to a constructor ``(ModelConfig, DataSpec) -> Backbone``;
a VLM adapter registers itself there (``BACKBONES["kosmos2"] = Kosmos2Backbone``). ``HEADS``
maps ``model.head`` to ``(ModelConfig, feature_dim, DataSpec) -> PolicyHead`` the same way (a
head reading the VLM's own logits registers as ``HEADS["lm"]``). The policy's
output is the head's: continuous (B, h, c, A) or discrete logits (B, h, c, A, K);
:meth:`Policy.decode` turns either into normalised actions with the gripper as -1/+1.

An autoregressive head (``model.head=autoregressive``, :mod:`vlatrain.model.autoregressive`)
is teacher forced when the observation carries the target tokens (``obs.action_tokens``, set by
the trainer's batch preparation) and returns logits (B, h, T, V'); without them -- a deployed
policy's observation -- ``forward`` generates the tokens (int64 (B, h, T)), and
:meth:`Policy.decode` detokenizes them. So ``policy.decode(policy(obs))`` (or
:meth:`Policy.predict`) gives actions for every head, with no special case in the caller.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.config import ModelConfig
from vlatrain.model.autoregressive import build_autoregressive_head
from vlatrain.model.backbone import Backbone, Observation, TinyBackbone
from vlatrain.model.heads import PolicyHead, build_head
from vlatrain.spec import DataSpec
from vlatrain.vlm.registry import VLM_BACKBONES

BACKBONES: dict[str, Callable[[ModelConfig, DataSpec], Backbone]] = {
    "tiny": TinyBackbone, **VLM_BACKBONES}


def _lm_head(cfg: ModelConfig, feature_dim: int, spec: DataSpec) -> PolicyHead:
    """Action tokens through the VLM's own LM logits (imports the VLM code on first use)."""
    from vlatrain.vlm.lm_head import build_lm_head
    return build_lm_head(cfg, feature_dim, spec)


def _autoregressive_head(cfg: ModelConfig, feature_dim: int, spec: DataSpec) -> PolicyHead:
    """Tokens of ``data.action_tokens`` (recorded in ``spec.extra["action_tokens"]``) one by one."""
    return build_autoregressive_head(cfg, feature_dim, spec,
                                     spec.extra.get("action_tokens") or "bins")


HEADS: dict[str, Callable[[ModelConfig, int, DataSpec], PolicyHead]] = {
    **{name: build_head for name in ("fc", "lstm", "gpt", "discrete")}, "lm": _lm_head,
    "autoregressive": _autoregressive_head}


class Policy(nn.Module):
    """Backbone and head; ``forward(obs)`` -> the head's output tensor.

    With auxiliary targets (``data.aux_targets``, recorded in ``spec.extra["aux_targets"]``) a
    linear ``aux_head`` reads the backbone features too (or, ``model.aux_input=keypoints``, the
    tiny backbone's spatial-softmax keypoints), and ``forward`` leaves its prediction
    (B, h, D) in :attr:`aux_pred` for the loss (``vlatrain.losses.make_loss``); the actions never
    depend on it, and a deployed policy ignores it.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: DataSpec,
                 aux_input: str = "features"):
        super().__init__()
        self.backbone, self.head, self.spec = backbone, head, spec
        aux_dim = sum(len(t["dims"]) for t in spec.extra.get("aux_targets") or [])
        self.aux_input = aux_input
        width = backbone.keypoint_dim if aux_input == "keypoints" else backbone.feature_dim
        self.aux_head = nn.Linear(width, aux_dim) if aux_dim else None
        self.aux_pred: Tensor | None = None
        self.discrete = bool(head.discrete)
        self.autoregressive = bool(getattr(head, "autoregressive", False))
        self.decodable = None  # autoregressive: (B, h) bool of the last decode (FAST fallback)
        self.register_buffer("bin_centers", torch.tensor(spec.bin_centers or [0.0],
                                                         dtype=torch.float32), persistent=False)

    def forward(self, obs: Observation) -> Tensor:
        feats = self.backbone(obs)
        if self.aux_head is not None:  # (B, h, D)
            self.aux_pred = self.aux_head(feats.keypoints if self.aux_input == "keypoints"
                                          else feats.features)
        if self.autoregressive:
            return self.head(feats, obs.action_tokens)
        return self.head(feats)

    @torch.no_grad()
    def generate(self, obs: Observation) -> Tensor:
        """Autoregressive heads: generated token ids (B, h, T) for ``obs`` (its targets ignored)."""
        if not self.autoregressive:
            raise ValueError("generate: this policy's head is not autoregressive")
        return self.head(self.backbone(obs))

    @torch.no_grad()
    def predict(self, obs: Observation) -> Tensor:
        """Normalised actions (B, h, c, A) for ``obs``: ``decode(forward(obs))`` without its
        target tokens, so autoregressive heads and LM heads generate (never teacher forced)."""
        return self.decode(self(dataclasses.replace(obs, action_tokens=None)))

    @torch.no_grad()
    def decode(self, pred: Tensor) -> Tensor:
        """Head output -> normalised actions (B, h, c, A): arm in [-1, 1], gripper -1 or +1.

        Autoregressive heads: generated ids (B, h, T), or teacher-forced logits (B, h, T, V')
        whose argmax is taken; :attr:`decodable` then holds which chunks decoded (the others
        took the FAST fallback)."""
        if getattr(self, "autoregressive", False):
            ids = pred if not pred.is_floating_point() else pred.argmax(-1)
            act, self.decodable = self.head.detokenize(ids)
            grip = act
        elif self.discrete:
            act = self.bin_centers[pred.argmax(-1)]  # (B, h, c, A)
            grip = act
        else:
            act, grip = pred.float().clamp(-1, 1), pred.float()
        act = act.clone()
        for g in self.spec.gripper_dims:
            act[..., g] = torch.where(grip[..., g] > 0, 1.0, -1.0)
        return act


def build_policy(cfg: ModelConfig, spec: DataSpec) -> Policy:
    """The policy ``cfg`` describes, for data shaped as ``spec``."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError([f"model.backbone: unknown backbone {cfg.backbone!r}; "
                           f"known: {', '.join(sorted(BACKBONES))}"])
    if cfg.head not in HEADS:
        raise ConfigError([f"model.head: unknown head {cfg.head!r}; known: "
                           f"{', '.join(sorted(HEADS))}"])
    backbone = BACKBONES[cfg.backbone](cfg, spec)
    head = HEADS[cfg.head](cfg, backbone.feature_dim, spec)
    return Policy(backbone, head, spec, aux_input=cfg.aux_input)
