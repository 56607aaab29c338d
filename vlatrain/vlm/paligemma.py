"""PaliGemma 1 and 2 (``google/paligemma-3b-pt-224``, ``google/paligemma2-3b-pt-224``, ...).

A SigLIP-So400m vision tower (256 tokens per 224 px frame) through a linear projector into
Gemma (2B) or Gemma 2. PaliGemma's format is image tokens, then BOS, the prefix text and a
newline; the prefix (image + prompt) attends to itself bidirectionally and what follows (here:
state, action token, action queries, later steps) causally -- the model's prefix-LM mask, built
from ``token_type_ids`` exactly as for its own training::

    [256 visual tokens per camera]<bos>What action should the robot take to {instruction}?\\n [ACTION]

Autoregressive decoding uses the key/value cache (``supports_kv_cache``): the prompt's
prefix-LM mask applies to the first (prefix) call; the action queries after it attend causally
to everything before them. PaliGemma counts positions from 1.
"""

from __future__ import annotations

from torch import nn

from vlatrain.vlm.common import VLMBackbone, pooled
from vlatrain.vlm.loading import image_spec
from vlatrain.vlm.sequence import IMAGE, Piece


class PaliGemmaBackbone(VLMBackbone):
    default_prompt = "{image}{bos}What action should the robot take to {instruction}?\n"
    image_token = "<image>"
    supports_kv_cache = True
    position_offset = 1  # PaliGemmaModel's positions are 1-indexed

    def load(self, path) -> None:
        from transformers import PaliGemmaForConditionalGeneration
        self.load_pretrained(PaliGemmaForConditionalGeneration, path, ("paligemma",))
        vc = self.model.config.vision_config
        self.spec_image = image_spec(path, vc.image_size)
        self.n_image_tokens = (vc.image_size // vc.patch_size) ** 2

    def unused(self):
        """Besides the LM head: SigLIP's attention-pooling head, if the checkpoint has one."""
        head = getattr(self.vision_tower(), "head", None)
        return super().unused() + ([head] if isinstance(head, nn.Module) else [])

    def encode_frames(self, pixels):
        return pooled(self.model.model.get_image_features(pixels.to(self.vision_dtype())))

    def image_pieces(self, frames, step):
        return [Piece(IMAGE, self.n_image_tokens, ref=f) for f in frames]

    def run_language_model(self, embeds, layout, media):
        # PaliGemmaModel builds the prefix-LM mask: token type 0 = prefix, 1 = suffix.
        return self.model.model(inputs_embeds=embeds, attention_mask=layout.mask.long(),
                                token_type_ids=(~layout.prefix).long(),
                                use_cache=False).last_hidden_state

    def run_cached(self, embeds, mask, positions, cache, prefix=None):
        types = None if prefix is None else (~prefix).long()  # the prefix-LM mask, first call
        return self.model.model(inputs_embeds=embeds, attention_mask=mask.long(),
                                position_ids=positions, token_type_ids=types, cache=cache,
                                use_cache=True).last_hidden_state
