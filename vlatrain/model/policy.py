"""A policy = backbone + head, built by name from the config.

``BACKBONES`` maps ``model.backbone`` to a constructor ``(ModelConfig, DataSpec) -> Backbone``;
a VLM adapter registers itself there (``BACKBONES["kosmos2"] = Kosmos2Backbone``). ``HEADS``
maps ``model.head`` to ``(ModelConfig, feature_dim, DataSpec) -> PolicyHead`` the same way (a
head reading the VLM's own logits registers as ``HEADS["lm"]``). The policy's
output is the head's: continuous (B, h, c, A) or discrete logits (B, h, c, A, K);
:meth:`Policy.decode` turns either into normalised actions with the gripper as -1/+1.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.config import ModelConfig
from vlatrain.model.backbone import Backbone, Observation, TinyBackbone
from vlatrain.model.heads import PolicyHead, build_head
from vlatrain.spec import DataSpec
from vlatrain.vlm.registry import VLM_BACKBONES

BACKBONES: dict[str, Callable[[ModelConfig, DataSpec], Backbone]] = {
    "tiny": TinyBackbone, **VLM_BACKBONES}


def _lm_head(cfg: ModelConfig, feature_dim: int, spec: DataSpec) -> PolicyHead:
    """Action tokens through the VLM's own LM logits (imports the VLM code on first use)."""
    from vlatrain.vlm.heads import build_lm_head
    return build_lm_head(cfg, feature_dim, spec)


HEADS: dict[str, Callable[[ModelConfig, int, DataSpec], PolicyHead]] = {
    **{name: build_head for name in ("fc", "lstm", "gpt", "discrete")}, "lm": _lm_head}


class Policy(nn.Module):
    """Backbone and head; ``forward(obs)`` -> the head's output tensor."""

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: DataSpec):
        super().__init__()
        self.backbone, self.head, self.spec = backbone, head, spec
        self.discrete = bool(head.discrete)
        self.register_buffer("bin_centers", torch.tensor(spec.bin_centers or [0.0],
                                                         dtype=torch.float32), persistent=False)

    def forward(self, obs: Observation) -> Tensor:
        return self.head(self.backbone(obs))

    @torch.no_grad()
    def decode(self, pred: Tensor) -> Tensor:
        """Head output -> normalised actions (B, h, c, A): arm in [-1, 1], gripper -1 or +1."""
        if self.discrete:
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
    return Policy(backbone, head, spec)
