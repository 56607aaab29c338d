"""Kosmos-2 (``microsoft/kosmos-2-patch14-224``): the RoboVLMs paper's strongest backbone.

A CLIP ViT-L/14 vision encoder whose patch features pass through an ``image_to_text_projection``
(64 learned latent queries attending to the patches) into a 24-layer Magneto decoder. The
model's own format puts the 64 image embeddings between ``<image>`` and ``</image>`` after BOS,
then the text; Kosmos-2 is prompted for grounded captions with ``<grounding>``::

    <s><image> [64 image embeddings] </image><grounding>An image of a robot {instruction} [ACTION]

With several cameras each frame gets its own ``<image> ... </image>`` block. Autoregressive
decoding uses the decoder's key/value cache (``supports_kv_cache``); its sinusoidal positions
start at the padding index + 1, as the text model counts them itself.
"""

from __future__ import annotations

from vlatrain.vlm.common import VLMBackbone, pooled
from vlatrain.vlm.loading import image_spec, token_id
from vlatrain.vlm.sequence import IMAGE, Piece, text


class Kosmos2Backbone(VLMBackbone):
    default_prompt = "{bos}{image}<grounding>An image of a robot {instruction}"
    image_token = "<image>"
    supports_kv_cache = True

    def load(self, path) -> None:
        from transformers import Kosmos2ForConditionalGeneration
        self.load_pretrained(Kosmos2ForConditionalGeneration, path, ("kosmos-2",))
        self.spec_image = image_spec(path, self.model.config.vision_config.image_size)
        self.n_image_tokens = int(self.model.config.latent_query_num)
        self.boi = token_id(self.tokenizer, "<image>", path)
        self.eoi = token_id(self.tokenizer, "</image>", path)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.embed_dim

    @property
    def position_offset(self) -> int:
        return int(self.language_tower().embed_positions.padding_idx) + 1

    def vision_tower(self):
        return self.model.vision_model

    def language_tower(self):
        return self.model.text_model.model

    def encode_frames(self, pixels):
        return pooled(self.model.get_image_features(pixel_values=pixels.to(self.vision_dtype())))

    def image_pieces(self, frames, step):
        out = []
        for f in frames:
            out += text([self.boi]) + [Piece(IMAGE, self.n_image_tokens, ref=f)] + text([self.eoi])
        return out

    def run_language_model(self, embeds, layout, media):
        # Kosmos-2 scales the embeddings and adds sinusoidal positions itself.
        return self.language_tower()(inputs_embeds=embeds, attention_mask=layout.mask.long(),
                                     use_cache=False).last_hidden_state
