"""LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf`` and every ``LlavaForConditionalGeneration`` checkpoint).

A CLIP ViT-L/14-336 vision tower (features of its second-to-last layer, CLS dropped) through a
two-layer MLP projector into a Llama/Vicuna language model; each frame is 576 visual tokens in
the place of the prompt's ``<image>``. The default prompt is LLaVA-1.5's conversation format::

    <s>USER: [576 visual tokens]\\nWhat action should the robot take to {instruction}? ASSISTANT: [ACTION]

The tokenizer adds BOS itself, as with ``LlavaProcessor``; checkpoints fine-tuned on another
chat format take ``model.vlm.prompt``. Autoregressive decoding uses the Llama decoder's
key/value cache (``supports_kv_cache``).
"""

from __future__ import annotations

import torch

from vladata.errors import ConfigError
from vlatrain.vlm.common import VLMBackbone, pooled
from vlatrain.vlm.loading import image_spec
from vlatrain.vlm.sequence import IMAGE, Piece


class LlavaBackbone(VLMBackbone):
    default_prompt = "USER: {image}\nWhat action should the robot take to {instruction}? ASSISTANT:"
    add_special_tokens = True  # LlavaProcessor lets the tokenizer add BOS
    supports_kv_cache = True

    def load(self, path) -> None:
        from transformers import LlavaForConditionalGeneration
        self.load_pretrained(LlavaForConditionalGeneration, path, ("llava",))
        cfg = self.model.config
        vc = cfg.vision_config
        self.spec_image = image_spec(path, vc.image_size)
        if not isinstance(cfg.vision_feature_layer, int):
            raise ConfigError([f"{path}: vision_feature_layer={cfg.vision_feature_layer} (several "
                               f"layers) is not supported; use a LLaVA-1.5 checkpoint"])
        self.image_token = self.tokenizer.convert_ids_to_tokens(int(cfg.image_token_id))
        cls = 0 if cfg.vision_feature_select_strategy == "default" else 1
        self.n_image_tokens = (vc.image_size // vc.patch_size) ** 2 + cls

    def unused(self):
        """Besides the LM head: the vision layers after ``vision_feature_layer`` and the final
        layer norm (LLaVA reads the second-to-last layer's output)."""
        tower = self.vision_tower()
        tower = getattr(tower, "vision_model", tower)  # transformers 4 / 5 layout
        layers = tower.encoder.layers
        k = self.model.config.vision_feature_layer % (len(layers) + 1)  # index into hidden_states
        return super().unused() + list(layers[k:]) + [tower.post_layernorm]

    def encode_frames(self, pixels):
        feats = pooled(self.model.model.get_image_features(
            pixel_values=pixels.to(self.vision_dtype())))
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def image_pieces(self, frames, step):
        return [Piece(IMAGE, self.n_image_tokens, ref=f) for f in frames]

    def run_language_model(self, embeds, layout, media):
        return self.language_tower()(inputs_embeds=embeds, attention_mask=layout.mask.long(),
                                     use_cache=False).last_hidden_state
