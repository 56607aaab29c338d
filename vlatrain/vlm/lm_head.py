"""The discrete head through the language model's own logits (``model.head=lm``).

A VLM backbone built with ``model.head=lm`` returns ``BackboneOutput.lm_logits``: the LM head's
scores of c*A action queries per history step over the vocabulary ids of the K action-token
bins, (B, h, c*A, K) (see :mod:`vlatrain.vlm.common`). This head only reshapes them to the
trainer's discrete layout (B, h, c, A, K) -- class k is bin k of the store's token layout, the
classes ``discrete_loss`` and ``Policy.decode`` expect. It has no parameters of its own: the
prediction is the language model's. A full-vocabulary tensor (B, h, c*A, V) is accepted too and
narrowed to the action-token columns with ``token_ids``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.model.backbone import BackboneOutput
from vlatrain.spec import DataSpec


class LMLogitsHead(nn.Module):
    """BackboneOutput.lm_logits (B, h, c*A, K) -> logits (B, h, c, A, K)."""

    discrete = True

    def __init__(self, spec: DataSpec):
        super().__init__()
        if spec.n_bins < 2:
            raise ConfigError(["model.head=lm needs the store's action tokenizer "
                               "(info['tokenizer']); this store records none"])
        self.shape = (spec.chunk, spec.action_dim, spec.n_bins)
        self.register_buffer("token_ids", torch.tensor(spec.token_ids, dtype=torch.long),
                             persistent=False)

    def forward(self, out: BackboneOutput) -> Tensor:
        logits = out.lm_logits
        if logits is None:
            raise ValueError("model.head=lm reads the language model's logits, but the backbone "
                             "returned none; use a VLM backbone (kosmos2, llava, paligemma, "
                             "qwen2vl, flamingo)")
        b, h, n, k = logits.shape
        c, a, bins = self.shape
        if n != c * a:
            raise ValueError(f"lm_logits has {n} action queries per step, expected chunk x "
                             f"action dims = {c} x {a}")
        if k != bins:  # a full-vocabulary tensor: keep the action-token columns
            logits = logits.index_select(-1, self.token_ids)
        return logits.float().reshape(b, h, c, a, bins)


def build_lm_head(cfg, feature_dim: int, spec: DataSpec) -> LMLogitsHead:
    """The ``model.head=lm`` head (the signature of ``vlatrain.model.heads.build_head``)."""
    return LMLogitsHead(spec)
