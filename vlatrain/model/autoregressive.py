"""An autoregressive action-token head: a causal transformer decoder over the tokens of a chunk.

The parallel ``discrete`` head predicts the c x A bins of a chunk at once, each independent of
the others. This head predicts them one after another, each conditioned on the window's context
and on the tokens before it -- the decoding of RT-2/OpenVLA-style and pi0-FAST policies::

    features (B, h, F) --trunk--> context (B, h, D)                       one sequence per step
    [context, emb(y_0), ..., emb(y_{T-2})] + pos --causal decoder--> logits (B, h, T, V')

Token sequences (``data.action_tokens``):

- ``bins``: the c*A bins of ``action.tokens`` (chunk step major), ``T = c*A``, ``V' = K`` bins;
  every sequence has that length, so no end token.
- ``fast``: the FAST ids of ``action.fast`` (:mod:`vladata.fast`) followed by an end token
  ``EOS = V`` (V = the FAST vocabulary): ``T = c*A + 1``, ``V' = V + 1``; positions after EOS
  are masked out of the loss.

Training is teacher forced: the target sequence is also the decoder input (shifted by one, the
context standing in for a start token), given as ``Observation.action_tokens``; the head then
returns logits (B, h, T, V'). Without it the head *generates*: greedy decoding, one token at a
time, with a KV cache (``use_cache=False`` recomputes the whole prefix at every step and gives
the same tokens). ``model.decoding="constrained"`` only lets through tokens that keep the
sequence decodable: for FAST, no token that would exceed c*A coefficients, EOS exactly when c*A
are reached (so every generated chunk decodes); for bins every class is a valid bin. ``greedy``
takes the argmax over every output, EOS included; an undecodable result then takes the FAST
fallback (:meth:`vladata.fast.FastTokenizer.decode`). Generation returns int64 ids (B, h, T),
padded with EOS after the end for FAST; :meth:`AutoregressiveHead.detokenize` turns them (or the
argmax of teacher-forced logits) into normalised actions (B, h, c, A).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.config import ModelConfig
from vlatrain.model.backbone import BackboneOutput
from vlatrain.model.heads import TRUNKS, Block
from vlatrain.spec import DataSpec

SEQUENCES = ("bins", "fast")


class CachedBlock(Block):
    """The trunk's pre-norm block (same layers), run causally so it can extend a key/value cache."""

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (N, t, D) new positions; cache: keys/values (N, heads, s, D/heads) of the s before.
        Returns (N, t, D) and the cache extended by the t new positions."""
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)  # 3 x (N, heads, t, D/heads)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        s = k.shape[2] - t
        if t == 1:
            mask = None                                   # one new position sees everything
        else:
            mask = torch.ones(t, s + t, dtype=torch.bool, device=x.device).tril(diagonal=s)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.ln2(x)), (k, v)


class AutoregressiveHead(nn.Module):
    """Trunk context + causal token decoder; see the module docstring."""

    discrete = False
    autoregressive = True

    def __init__(self, trunk: nn.Module, hidden: int, spec: DataSpec, *, sequence: str,
                 layers: int, heads: int, dropout: float, decoding: str = "constrained"):
        super().__init__()
        if sequence not in SEQUENCES:
            raise ConfigError([f"data.action_tokens: one of {SEQUENCES}, got {sequence!r}"])
        self.trunk, self.sequence, self.decoding = trunk, sequence, decoding
        self.chunk, self.action_dim = spec.chunk, spec.action_dim
        self.coefficients = spec.chunk * spec.action_dim
        self.fast = None
        if sequence == "bins":
            if spec.n_bins < 2:
                raise ConfigError(["data.action_tokens=bins needs the store's action tokenizer "
                                   "(info['tokenizer']); this store records none"])
            self.vocab, self.length, self.eos = spec.n_bins, self.coefficients, None
            self.register_buffer("centres", torch.tensor(spec.bin_centers, dtype=torch.float32),
                                 persistent=False)
            lengths = torch.ones(self.vocab, dtype=torch.long)
        else:
            from vladata.fast import FastTokenizer
            if "fast" not in spec.extra:
                raise ConfigError(["data.action_tokens=fast needs the store's FAST tokenizer in "
                                   "the data spec (spec.extra['fast']); fit one with "
                                   "`vladata stats STORE --fast`"])
            self.fast = FastTokenizer.from_json(spec.extra["fast"])
            if self.fast.settings.chunk != spec.chunk:
                raise ConfigError([f"data.chunk: the FAST tokenizer encodes "
                                   f"{self.fast.settings.chunk}-step chunks; data.chunk is "
                                   f"{spec.chunk}"])
            self.vocab, self.length = self.fast.vocab_size, self.coefficients + 1
            self.eos = self.vocab
            lengths = torch.tensor(np.append(self.fast.token_lengths, 0), dtype=torch.long)
        self.register_buffer("token_lengths", lengths, persistent=False)  # coefficients per id
        self.outputs = self.vocab + (self.eos is not None)
        self.ctx = nn.Linear(hidden, hidden)
        self.embed = nn.Embedding(self.vocab, hidden)
        self.pos = nn.Parameter(torch.zeros(1, self.length, hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([CachedBlock(hidden, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, self.outputs)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    # -- context and teacher forcing ------------------------------------------------------------
    def context(self, out: BackboneOutput) -> Tensor:
        """(B, h, D): the decoder's start position for each history step."""
        x = self.trunk(out.features * out.mask[..., None].to(out.features.dtype), out.mask)
        return self.ctx(x)

    def forward(self, out: BackboneOutput, teacher: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, h, T, V') for target sequences ``teacher`` (B, h, T); or,
        without them, generated ids (B, h, T) (:meth:`generate`)."""
        ctx = self.context(out)
        b, h, d = ctx.shape
        if teacher is None:
            return self.generate_from(ctx.reshape(b * h, d)).view(b, h, -1)
        y = teacher.reshape(b * h, -1)[:, :-1].clamp(0, self.vocab - 1)   # EOS is never an input
        x = torch.cat([ctx.reshape(b * h, 1, d), self.embed(y)], dim=1) + self.pos
        for blk in self.blocks:
            x, _ = blk(x)
        return self.out(self.ln(x)).view(b, h, self.length, self.outputs)

    # -- generation -----------------------------------------------------------------------------
    def allowed(self, used: Tensor) -> Tensor | None:
        """(N, V') bool: the outputs that keep a sequence with ``used`` coefficients decodable."""
        if self.decoding != "constrained" or self.eos is None:
            return None
        left = (self.coefficients - used)[:, None]                    # (N, 1)
        ok = self.token_lengths[None, :] <= left                       # tokens that still fit
        ok[:, self.eos] = left[:, 0] == 0                               # end exactly when full
        ok[:, :self.eos] &= left > 0
        return ok

    @torch.no_grad()
    def generate_from(self, ctx: Tensor, use_cache: bool = True) -> Tensor:
        """Greedy decoding from contexts (N, D) -> ids (N, T) (EOS-padded after the end)."""
        n = ctx.shape[0]
        ids = torch.full((n, self.length), self.eos if self.eos is not None else 0,
                         dtype=torch.long, device=ctx.device)
        used = torch.zeros(n, dtype=torch.long, device=ctx.device)
        done = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        x = ctx[:, None] + self.pos[:, :1]              # (N, 1, D): the position to run next
        seq, caches = x, [None] * len(self.blocks)
        for i in range(self.length):
            y = x if use_cache else seq
            for j, blk in enumerate(self.blocks):
                y, kv = blk(y, caches[j] if use_cache else None)
                caches[j] = kv
            logits = self.out(self.ln(y[:, -1])).float()   # (N, V')
            ok = self.allowed(used)
            if ok is not None:
                logits = logits.masked_fill(~ok, float("-inf"))
            nxt = logits.argmax(-1)
            if self.eos is not None:
                nxt = torch.where(done, self.eos, nxt)
                done |= nxt == self.eos
            ids[:, i] = nxt
            used += self.token_lengths[nxt]
            if bool(done.all()) or i + 1 == self.length:
                break
            x = self.embed(nxt.clamp(max=self.vocab - 1))[:, None] + self.pos[:, i + 1:i + 2]
            seq = torch.cat([seq, x], dim=1)
        return ids

    # -- tokens <-> actions ---------------------------------------------------------------------
    def targets(self, tokens: Tensor, token_mask: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
        """Target sequences (B, h, T) and their loss mask (B, h, T) from a window's tokens.

        bins: ``tokens`` (B, h, c, A) bins, ``token_mask`` (B, h, c) the valid chunk steps.
        fast: ``tokens`` (B, h, L) ids, ``token_mask`` (B, h, L) the real ones; EOS goes after
        the last. ``steps`` (B, h): the history step is real (else nothing of it counts).
        """
        b, h = tokens.shape[:2]
        if self.eos is None:
            m = token_mask & steps[..., None]
            return (tokens.reshape(b, h, -1),
                    m[..., None].expand(*m.shape, self.action_dim).reshape(b, h, -1))
        n = token_mask.sum(-1, keepdim=True)                            # (B, h, 1)
        pos = torch.arange(self.length, device=tokens.device)
        full = F.pad(tokens, (0, self.length - tokens.shape[-1]))
        seq = torch.where(pos < n, full, self.eos)
        return seq, (pos <= n) & steps[..., None]

    def detokenize(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B, h, T) -> normalised actions (B, h, c, A) and a decodable flag (B, h)."""
        b, h = ids.shape[:2]
        if self.eos is None:
            acts = self.centres[ids.clamp(0, self.vocab - 1)].view(b, h, self.chunk,
                                                                   self.action_dim)
            return acts, torch.ones(b, h, dtype=torch.bool, device=ids.device)
        flat = ids.reshape(b * h, -1).cpu()
        ended = (flat == self.eos).long().cumsum(-1) > 0
        acts, ok = self.fast.decode(flat.numpy(), (~ended).numpy())
        ok &= ended.any(-1).numpy()                                     # no EOS: not finished
        return (torch.from_numpy(acts).to(ids.device).view(b, h, self.chunk, self.action_dim),
                torch.from_numpy(ok).to(ids.device).view(b, h))


def sequence_loss(logits: Tensor, tokens: Tensor, mask: Tensor, *,
                  step_weights: Tensor | None = None) -> dict[str, Tensor]:
    """logits (B, h, T, V'); tokens (B, h, T); mask (B, h, T) -> {"loss", "ce"}: the mean
    cross-entropy of the valid tokens (history step ``i`` weighted by ``step_weights[i]``)."""
    v = logits.shape[-1]
    safe = torch.where(mask, tokens, torch.zeros_like(tokens)).clamp(0, v - 1)
    ce = F.cross_entropy(logits.float().reshape(-1, v), safe.reshape(-1),
                         reduction="none").view(tokens.shape)
    w = mask.float()
    if step_weights is not None:
        w = w * step_weights.to(w)[None, :, None]
    ce = torch.where(mask, ce, torch.zeros((), dtype=ce.dtype, device=ce.device))
    loss = (ce * w).sum() / w.sum().clamp_min(1e-12)
    return {"loss": loss, "ce": loss.detach()}


def build_autoregressive_head(cfg: ModelConfig, feature_dim: int, spec: DataSpec,
                              sequence: str) -> AutoregressiveHead:
    """``model.head=autoregressive``: the ``model.discrete_trunk`` trunk and a decoder of
    ``model.layers`` blocks over ``sequence`` tokens (``data.action_tokens``)."""
    kwargs = {"heads": cfg.heads} if cfg.discrete_trunk == "gpt" else {}
    trunk = TRUNKS[cfg.discrete_trunk](feature_dim, cfg.hidden, cfg.layers, cfg.dropout,
                                       spec.history, **kwargs)
    return AutoregressiveHead(trunk, cfg.hidden, spec, sequence=sequence, layers=cfg.layers,
                              heads=cfg.heads, dropout=cfg.dropout, decoding=cfg.decoding)
