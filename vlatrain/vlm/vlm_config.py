"""The options of the VLM backbones: one typed section, ``model.vlm``, beside ``ModelConfig``.

:class:`VLMConfig` holds what only a pretrained VLM needs (how it is tuned, how the window goes
through it, its prompt). It is a plain dataclass of ``bool``/``int``/``float``/``str`` fields with
``validate() -> list[str]``, the shape ``vlatrain.config`` builds sections from, so it can sit in
``ModelConfig`` as ``vlm: VLMConfig`` and be set as ``model.vlm.lora=true``. Until it does,
:func:`vlm_config` reads a ``vlm`` attribute of the model config if there is one (a
``VLMConfig`` or a plain dict) and falls back to the defaults. This module imports neither torch
nor transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from vladata.errors import ConfigError
from vlatrain.typed import build

HISTORY_MODES = ("one-step", "history", "interleaved")
DTYPES = ("float32", "bfloat16")


@dataclass
class VLMConfig:
    """How a pretrained VLM is plugged into the policy (``model.vlm.*``)."""

    # The prompt around the instruction; ``{image}`` marks where the frames go, ``{instruction}``
    # the instruction, ``{bos}`` the tokenizer's BOS token. None = the adapter's default.
    prompt: Optional[str] = None
    freeze_vision: bool = False        # no gradients into the vision encoder
    freeze_language: bool = False      # no gradients into the language model (embeddings, LM head)
    lora: bool = False                 # LoRA adapters on the language model's linear layers (peft)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    grad_checkpointing: bool = False   # recompute activations in backward (vision and language)
    dtype: str = "float32"             # dtype the pretrained weights are loaded in (bfloat16 halves them)
    attn_implementation: Optional[str] = None  # sdpa | eager | flash_attention_2 (None: transformers')
    lr_scale: float = 1.0              # learning-rate multiplier of the pretrained parameters
    # model.head=lm: predict the action tokens one by one (teacher forced in training, greedy
    # generation at inference) instead of every action query in parallel
    autoregressive: bool = False
    # autoregressive decoding with the language model's key/value cache where the adapter has one
    # (same tokens; false runs the whole sequence once per token, to compare)
    kv_cache: bool = True
    # Flamingo-style backbone only (the new layers between a vision encoder and a causal LM).
    cross_attn_every: int = 4          # a gated cross-attention layer before every n-th LM layer
    resampler_depth: int = 6
    resampler_latents: int = 64        # visual tokens per history step after the perceiver
    resampler_heads: int = 8
    xattn_heads: int = 8
    xattn_dim_head: int = 64

    def validate(self) -> list[str]:
        errs = []
        if self.dtype not in DTYPES:
            errs.append(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.prompt is not None and self.prompt.count("{image}") != 1:
            errs.append(f"prompt: must contain {{image}} exactly once, got {self.prompt!r}")
        if self.prompt is not None and self.prompt.count("{instruction}") > 1:
            errs.append(f"prompt: may contain {{instruction}} at most once, got {self.prompt!r}")
        errs += [f"{k}: must be >= 1, got {getattr(self, k)}" for k in
                 ("lora_r", "lora_alpha", "cross_attn_every", "resampler_depth",
                  "resampler_latents", "resampler_heads", "xattn_heads", "xattn_dim_head")
                 if getattr(self, k) < 1]
        if not 0 <= self.lora_dropout < 1:
            errs.append(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.lr_scale <= 0:
            errs.append(f"lr_scale: must be > 0, got {self.lr_scale}")
        return errs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        """Build and validate with the typed config parser (:func:`vlatrain.typed.build`); raises
        :class:`ConfigError` naming every bad key (``model.vlm.*``)."""
        errors: list[str] = []
        cfg = build(cls, d, "model.vlm.", errors)
        if errors:
            raise ConfigError(errors)
        cfg.check()
        return cfg

    def check(self) -> None:
        errs = self.validate()
        if errs:
            raise ConfigError([f"model.vlm.{e}" for e in errs])


def vlm_config(model_cfg) -> VLMConfig:
    """The :class:`VLMConfig` of a ``ModelConfig`` (its ``vlm`` section, else the defaults)."""
    v = getattr(model_cfg, "vlm", None)
    if v is None:
        cfg = VLMConfig()
    elif isinstance(v, VLMConfig):
        cfg = v
        cfg.check()
    else:
        cfg = VLMConfig.from_dict(v)
    return cfg


def history_mode(model_cfg, vcfg: VLMConfig) -> str:
    """``model.history`` (one of :data:`HISTORY_MODES`, checked by ``ModelConfig``): ``one-step``
    and ``history`` run one sequence per history step (the policy head fuses the steps);
    ``interleaved`` runs the whole window as one sequence of observation and action tokens
    (RoboVLMs' "pre" mode)."""
    return getattr(model_cfg, "history", "one-step")
