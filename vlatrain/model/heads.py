"""Policy heads: features of a window -> an action chunk per history step.

A head is a temporal *trunk* (how the steps of the window are fused, always causally: step t
sees steps <= t) followed by an *output* layer::

    features (B, h, F), mask (B, h)  --trunk-->  (B, h, hidden)  --output-->
        continuous: (B, h, c, A)      arm dims as normalised values, gripper dims as logits
        discrete:   (B, h, c, A, K)   logits over the K bins of the store's token layout

Trunks: ``fc`` (an MLP on [f_t, masked mean of f_<=t]), ``lstm`` and ``gpt`` (a small causal
transformer). Heads: ``fc``/``lstm``/``gpt`` are continuous with that trunk; ``discrete`` is
classification with ``model.discrete_trunk``. In one-step modelling h = 1 and every trunk sees a
single step. Padded history steps (mask false) are zeroed and never attended to.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.config import ModelConfig
from vlatrain.model.backbone import BackboneOutput
from vlatrain.spec import DataSpec


@runtime_checkable
class PolicyHead(Protocol):
    """What the trainer needs of a head (an ``nn.Module``).

    ``discrete`` says which loss applies; ``forward(BackboneOutput)`` returns (B, h, c, A)
    continuous predictions or (B, h, c, A, K) logits whose class k is bin k of the store's token
    layout (``DataSpec.token_ids[k]``). A head reading a VLM's own LM logits maps
    ``BackboneOutput.lm_logits`` over the vocabulary to those K classes by gathering
    ``token_ids``.
    """

    discrete: bool

    def __call__(self, out: BackboneOutput) -> Tensor: ...


def causal_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, h, F), (B, h) -> (B, h, F): mean of the valid steps <= t."""
    m = mask.to(x.dtype)[..., None]
    return torch.cumsum(x * m, dim=1) / torch.cumsum(m, dim=1).clamp(min=1)


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class FCTrunk(nn.Module):
    """Per-step MLP on [f_t, mean of valid f_<=t]: (B, h, F) -> (B, h, hidden)."""

    def __init__(self, width: int, hidden: int, layers: int, dropout: float, history: int):
        super().__init__()
        self.net = mlp([2 * width] + [hidden] * layers, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.net(torch.cat([x, causal_mean(x, mask)], dim=-1))


class LSTMTrunk(nn.Module):
    """A unidirectional LSTM over the history: (B, h, F) -> (B, h, hidden)."""

    def __init__(self, width: int, hidden: int, layers: int, dropout: float, history: int):
        super().__init__()
        self.lstm = nn.LSTM(width, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out, _ = self.lstm(x * mask[..., None].to(x.dtype))
        return out


class Block(nn.Module):
    """Pre-norm transformer block with masked self-attention."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)  # 3 x (B, heads, h, d/heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPTTrunk(nn.Module):
    """A small causal transformer over the history: (B, h, F) -> (B, h, hidden)."""

    def __init__(self, width: int, hidden: int, layers: int, dropout: float, history: int,
                 heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(width, hidden)
        self.pos = nn.Parameter(torch.zeros(1, history, hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([Block(hidden, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=x.device)
        allowed = (causal & mask[:, None, :]) | eye  # (B, h, h): a step always sees itself
        x = self.inp(x) + self.pos[:, -t:]
        for blk in self.blocks:
            x = blk(x, allowed[:, None])
        return self.ln(x)


TRUNKS = {"fc": FCTrunk, "lstm": LSTMTrunk, "gpt": GPTTrunk}


class ActionHead(nn.Module):
    """A trunk and an output layer: continuous (B, h, c, A) or discrete (B, h, c, A, K)."""

    def __init__(self, trunk: nn.Module, hidden: int, chunk: int, action_dim: int, bins: int = 0):
        super().__init__()
        self.trunk = trunk
        self.discrete = bins > 0
        self.shape = (chunk, action_dim, bins) if self.discrete else (chunk, action_dim)
        self.out = nn.Linear(hidden, math.prod(self.shape))
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, out: BackboneOutput) -> Tensor:
        x = self.trunk(out.features * out.mask[..., None].to(out.features.dtype), out.mask)
        b, h, _ = x.shape
        return self.out(x).view(b, h, *self.shape)


def build_head(cfg: ModelConfig, feature_dim: int, spec: DataSpec) -> ActionHead:
    """The head ``cfg.head`` for features of width ``feature_dim``."""
    name = cfg.discrete_trunk if cfg.head == "discrete" else cfg.head
    kwargs = {"heads": cfg.heads} if name == "gpt" else {}
    trunk = TRUNKS[name](feature_dim, cfg.hidden, cfg.layers, cfg.dropout, spec.history, **kwargs)
    if cfg.head == "discrete" and spec.n_bins < 2:
        raise ConfigError(["model.head: discrete needs the store's action tokenizer "
                           "(info['tokenizer']); this store records none"])
    return ActionHead(trunk, cfg.hidden, spec.chunk, spec.action_dim,
                      bins=spec.n_bins if cfg.head == "discrete" else 0)
