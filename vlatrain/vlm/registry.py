"""The VLM backbones by name: ``(ModelConfig, DataSpec) -> Backbone`` constructors.

Light on purpose (no torch model code, no transformers, no ``vlatrain.model`` import), so the
trainer's registry can include it at import time without an import cycle::

    from vlatrain.vlm.registry import VLM_BACKBONES
    BACKBONES = {"tiny": TinyBackbone, **VLM_BACKBONES}

An adapter module (which imports transformers) is imported when its backbone is first built.
"""

from __future__ import annotations

import importlib
from typing import Callable

ADAPTERS = {"kosmos2": ("kosmos2", "Kosmos2Backbone"), "llava": ("llava", "LlavaBackbone"),
            "paligemma": ("paligemma", "PaliGemmaBackbone"),
            "qwen2vl": ("qwen2vl", "Qwen2VLBackbone"), "flamingo": ("flamingo", "FlamingoBackbone")}


def backbone_class(name: str) -> type:
    """The adapter class of ``name`` (imports its module)."""
    module, cls = ADAPTERS[name]
    return getattr(importlib.import_module(f"vlatrain.vlm.{module}"), cls)


def _constructor(name: str) -> Callable:
    def build(cfg, spec):
        return backbone_class(name)(cfg, spec)

    build.__name__ = build.__qualname__ = ADAPTERS[name][1]
    build.__doc__ = f"Build the {name} backbone (imports transformers on first use)."
    return build


VLM_BACKBONES: dict[str, Callable] = {name: _constructor(name) for name in ADAPTERS}


def register(registry: dict) -> dict:
    """Add :data:`VLM_BACKBONES` to a backbone registry (``vlatrain.model.BACKBONES``)."""
    registry.update(VLM_BACKBONES)
    return registry
