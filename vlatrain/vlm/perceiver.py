"""Flamingo's two new layer types: the perceiver resampler and gated cross-attention.

- :class:`PerceiverResampler`: a fixed number of learned latents attend (with themselves as
  extra keys) to the variable number of patch features of one frame, ``depth`` times with a
  feed-forward after each: (N, v, Dv) -> (N, latents, Dv).
- :class:`GatedCrossAttention`: LM hidden states (queries) attend to the visual latents of the
  most recent media marker at or before them (tokens before any marker see nothing), and the
  result is added through ``tanh(gate)`` with the gates initialised to 0 -- the language model
  computes exactly what it did before training starts.
- :class:`FlamingoLayer` puts one before a decoder layer of a transformers language model,
  leaving the decoder layer (and its state-dict keys under ``.layer``) untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _heads(x: Tensor, h: int) -> Tensor:
    """(N, T, h*d) -> (N, h, T, d)."""
    n, t, _ = x.shape
    return x.view(n, t, h, -1).transpose(1, 2)


class PerceiverAttention(nn.Module):
    """Latents attend to [media, latents]: (N, v, D), (N, n, D) -> (N, n, D)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        lat = self.norm_latents(latents)
        q = self.to_q(lat)
        k, v = self.to_kv(torch.cat([self.norm_media(media), lat], dim=1)).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(*(_heads(t, self.heads) for t in (q, k, v)))
        return self.to_out(y.transpose(1, 2).flatten(2))


class PerceiverResampler(nn.Module):
    """(N, v, D) patch features -> (N, latents, D)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, latents: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, dim) * dim ** -0.5)
        self.layers = nn.ModuleList([nn.ModuleList([PerceiverAttention(dim, heads, dim_head),
                                                    feed_forward(dim)]) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        lat = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            lat = lat + attn(x, lat)
            lat = lat + ff(lat)
        return self.norm(lat)


class GatedCrossAttention(nn.Module):
    """x (R, L, D), media (R, M, n, Dv), media_idx (R, L) -> x + gated attention to media."""

    def __init__(self, dim: int, dim_media: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_media, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor, media: Tensor, media_idx: Tensor) -> Tensor:
        r, m, n, _ = media.shape
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)  # (R, M*n, inner)
        key_media = torch.arange(1, m + 1, device=x.device).repeat_interleave(n)  # (M*n,)
        none = media_idx == 0  # (R, L): no media yet
        allowed = (media_idx[..., None] == key_media) | none[..., None]  # (R, L, M*n)
        y = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads),
                                           _heads(v, self.heads), attn_mask=allowed[:, None])
        y = y.transpose(1, 2).flatten(2) * (~none)[..., None].to(y.dtype)
        return self.to_out(y)

    def forward(self, x: Tensor, media: Tensor, media_idx: Tensor) -> Tensor:
        h = x.float()  # the new layers keep float32 weights beside a bf16 language model
        h = h + torch.tanh(self.attn_gate) * self.attend(h, media.float(), media_idx)
        h = h + torch.tanh(self.ff_gate) * self.ff(h)
        return h.to(x.dtype)


class FlamingoLayer(nn.Module):
    """A decoder layer with a gated cross-attention in front; the media are set per forward.

    The language model calls this wrapper as it called its layer; the first argument (or the
    ``hidden_states`` keyword) goes through the cross-attention first. ``media`` and
    ``media_idx`` are set by the backbone around each language-model call (:meth:`condition`).
    """

    def __init__(self, xattn: GatedCrossAttention, layer: nn.Module):
        super().__init__()
        self.xattn, self.layer = xattn, layer
        self.media: Tensor | None = None
        self.media_idx: Tensor | None = None
        self.checkpointing = False

    def condition(self, media: Tensor | None, media_idx: Tensor | None) -> None:
        self.media, self.media_idx = media, media_idx

    def _cross(self, x: Tensor) -> Tensor:
        if self.media is None:
            raise RuntimeError("FlamingoLayer called without media: the backbone sets them")
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.xattn, x, self.media, self.media_idx, use_reentrant=False)
        return self.xattn(x, self.media, self.media_idx)

    def forward(self, *args, **kwargs):
        if args:
            args = (self._cross(args[0]),) + args[1:]
        else:
            kwargs["hidden_states"] = self._cross(kwargs["hidden_states"])
        return self.layer(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # attributes the decoder reads off its layers (attention_type, ...)
            return getattr(super().__getattr__("layer"), name)
