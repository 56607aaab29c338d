"""Greedy autoregressive decoding of the LM head's action tokens (``model.vlm.autoregressive``).

The frames are encoded once; then the c*A action queries of every row are decoded one token at
a time, query j reading the token chosen at j-1 (see :mod:`vlatrain.vlm.common`). Two loops give
the same tokens:

- :func:`generate_cached` (``model.vlm.kv_cache``, adapters with ``supports_kv_cache``): the
  prefix of every row -- everything before its first action query -- goes through the language
  model once with a transformers ``DynamicCache``; then each step feeds one query per row with
  the cache. Rows keep their right padding: the prefix is padded to the longest one, each new
  query is appended after it, and the attention mask hides the gap a shorter row leaves; the
  queries get the position ids they have in the whole (uncached) sequence, so the language model
  sees exactly the same tokens at the same positions. One LM call per token over one new token.
- :func:`generate_uncached`: one pass of the whole sequence per token (c*A passes over the full
  length) -- the fallback for adapters whose language model takes no cache (Flamingo's gated
  cross-attention layers read the media of each token's latest marker) and for layouts whose
  action queries are not the last tokens of each row.

Both return the step features (the ACTION token's last hidden state) and, per query, the logits
its token was chosen from, so their argmax is the generated chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlatrain.model.backbone import BackboneOutput, Observation
from vlatrain.vlm.sequence import ACTION, SLOT, Layout


def step_features(hidden: Tensor, layout: Layout, flat: Tensor, n: int) -> Tensor:
    """(n, D): the last hidden state of each row's ACTION token at its step's index in B*h."""
    r, c = layout.where(ACTION)
    return hidden.new_zeros(n, hidden.shape[-1]).index_put((flat[layout.ref[r, c]],), hidden[r, c])


def trailing_queries(layout: Layout, n_slots: int) -> bool:
    """Whether row i is step i's sequence and ends with its ``n_slots`` action queries (what the
    cached loop needs: one-step and history modes)."""
    return all(row and row[-1].kind == SLOT and row[-1].length == n_slots and row[-1].ref == i
               for i, row in enumerate(layout.rows))


@torch.no_grad()
def generate_uncached(bb, layout: Layout, media, obs: Observation, steps: Tensor, flat: Tensor,
                      b: int, h: int) -> BackboneOutput:
    """One whole language-model pass per token (``bb`` a :class:`VLMBackbone`)."""
    tokens = torch.zeros(len(steps), bb.n_slots, dtype=torch.long, device=obs.mask.device)
    chosen = feats = None
    for j in range(bb.n_slots):
        hidden = bb.run_language_model(bb.embed(layout, media, obs, steps, tokens), layout, media)
        logits = bb.action_logits(hidden, layout, flat, b * h)   # (B*h, c*A, K)
        if chosen is None:
            chosen = logits.clone()
            feats = step_features(hidden, layout, flat, b * h)
        chosen[:, j] = logits[:, j]
        tokens[:, j] = logits[flat, j].argmax(-1)
    out = BackboneOutput(features=feats.view(b, h, -1).float(), mask=obs.mask)
    out.lm_logits = chosen.view(b, h, bb.n_slots, -1)
    return out


@torch.no_grad()
def generate_cached(bb, layout: Layout, media, obs: Observation, steps: Tensor, flat: Tensor,
                    b: int, h: int) -> BackboneOutput:
    """The prefix once into a key/value cache, then one new token per row and step. ``layout``
    must satisfy :func:`trailing_queries`."""
    n, rows = bb.n_slots, len(layout.rows)
    prefix = Layout.build([row[:-1] for row in layout.rows], bb.placeholder).to(layout.mask.device)
    cache = bb.new_cache()
    emb = bb.embed(prefix, media, obs, steps)
    hidden = bb.run_cached(emb, prefix.mask, bb.positions(prefix), cache, prefix=prefix.prefix)
    feats = step_features(hidden, prefix, flat, b * h)
    r, c = layout.where(SLOT)                                     # row-major: row i's n queries
    pos = bb.positions(layout)[..., r, c].unflatten(-1, (rows, n))  # (R, n) or (3, R, n)
    at = flat[layout.ref[r, c]].view(rows, n)[:, 0]               # (R,) each row's step in B*h
    tokens = torch.zeros(rows, n, dtype=torch.long, device=flat.device)
    chosen = None
    mask = prefix.mask
    for j in range(n):
        sub = torch.full((rows,), j, dtype=torch.long, device=flat.device)
        x = bb.query_embeds(sub, tokens[:, max(j - 1, 0)]).to(emb.dtype)[:, None]  # (R, 1, D)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
        out = bb.run_cached(x, mask, pos[..., j:j + 1].contiguous(), cache)
        logits = bb.head_logits(out[:, 0])                        # (R, K) float
        if chosen is None:
            chosen = logits.new_zeros(b * h, n, logits.shape[-1])
        chosen[at, j] = logits
        tokens[:, j] = logits.argmax(-1)
    res = BackboneOutput(features=feats.view(b, h, -1).float(), mask=obs.mask)
    res.lm_logits = chosen.view(b, h, n, -1)
    return res
