"""Pretrained vision-language models as vlatrain backbones, loaded from local directories.

``model.backbone`` names one of :data:`VLM_BACKBONES` and ``model.path`` the local weights
directory (see docs/vlm.md for getting them)::

    kosmos2    Kosmos-2            (Kosmos2ForConditionalGeneration)
    llava      LLaVA-1.5           (LlavaForConditionalGeneration)
    paligemma  PaliGemma 1/2       (PaliGemmaForConditionalGeneration)
    qwen2vl    Qwen2-VL            (Qwen2VLForConditionalGeneration)
    flamingo   Flamingo-style      (vision encoder + perceiver resampler + gated cross-attention
                                    into any causal LM; model.path holds vision/ and lm/)

Each constructor has the trainer's signature ``(ModelConfig, DataSpec) -> Backbone``; the
modules that import ``transformers`` are imported when a backbone is built, not here.
``model.head=lm`` is the discrete head through the VLM's own logits (:class:`LMLogitsHead`);
``model.vlm`` (:class:`VLMConfig`) holds the VLM options (history mode, freezing, LoRA,
activation checkpointing, dtype, prompt).
"""

from __future__ import annotations

# Only the light modules here: vlatrain.config and vlatrain.model import this package.
from vlatrain.vlm.vlm_config import HISTORY_MODES, VLMConfig, vlm_config
from vlatrain.vlm.registry import VLM_BACKBONES, backbone_class, register


def __getattr__(name: str):
    if name in ("LMLogitsHead", "build_lm_head"):  # imports vlatrain.model: on first use
        from vlatrain.vlm import lm_head
        return getattr(lm_head, name)
    raise AttributeError(f"module 'vlatrain.vlm' has no attribute {name!r}")


__all__ = ["VLM_BACKBONES", "HISTORY_MODES", "VLMConfig", "vlm_config", "LMLogitsHead",
           "build_lm_head", "backbone_class", "register"]
