"""Fitting a big VLM into memory: frozen towers, LoRA adapters, activation checkpointing.

- Freezing (``model.vlm.freeze_vision`` / ``freeze_language``) switches ``requires_grad`` off
  for a tower: no gradients, no optimiser state for it.
- LoRA (``model.vlm.lora``) injects peft's low-rank adapters into every linear layer of the
  language model in place (``peft.inject_adapter_in_model``: the module tree and its state-dict
  keys stay those of the transformers model, plus ``lora_A``/``lora_B``) and freezes the
  language model's own weights, so only the adapters train there.
- Activation checkpointing recomputes each transformer layer's activations during backward
  (non-reentrant ``torch.utils.checkpoint``), trading compute for memory; gradients are the same.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from vladata.errors import ConfigError


def linear_names(module: nn.Module, exclude: tuple[str, ...] = ()) -> list[str]:
    """Full names of the ``nn.Linear`` layers in ``module`` outside the ``exclude`` subtrees."""
    return sorted(name for name, m in module.named_modules()
                  if isinstance(m, nn.Linear) and name and not any(e in name for e in exclude))


def add_lora(language_model: nn.Module, r: int, alpha: int, dropout: float,
             exclude: tuple[str, ...] = ()) -> list[str]:
    """Inject LoRA adapters into ``language_model``'s linear layers; train only them there.

    Layers whose name contains one of ``exclude`` (layers new to the model, trained in full)
    are neither adapted nor frozen. Returns the adapted layers' names. The output head is not
    adapted (pass the decoder, not the causal-LM wrapper).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(["model.vlm.lora: LoRA needs the peft package (pip install peft)"]) from None
    targets = linear_names(language_model, exclude)
    if not targets:
        raise ConfigError(["model.vlm.lora: the language model has no linear layers to adapt"])
    pattern = "^(?:" + "|".join(re.escape(t) for t in targets) + ")$"  # exact full names
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                     bias="none")
    inject_adapter_in_model(cfg, language_model)
    for name, p in language_model.named_parameters():
        if "lora_" in name and p.dtype != torch.float32:
            p.data = p.data.float()  # adapters train in float32 beside bf16 base weights
        if not any(e in name for e in exclude):
            p.requires_grad_("lora_" in name)
    return targets


def freeze(module: nn.Module | None) -> None:
    if module is not None:
        module.requires_grad_(False)


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of a transformers model's layers."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
