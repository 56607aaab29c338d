"""A Flamingo-style backbone (OpenFlamingo / RoboFlamingo) built from a local vision encoder and LM.

``model.path`` is a directory with two ``save_pretrained`` directories (or links to them)::

    <model.path>/vision/   a CLIP or SigLIP vision model (CLIPVisionModel / CLIPModel / SigLIP)
                           + its preprocessor_config.json
    <model.path>/lm/       any transformers causal LM (Llama, Qwen2, Gemma, MPT, ...) + tokenizer

Each frame's patch features (CLIP: last layer, CLS dropped, post-layernorm, as OpenFlamingo's
visual tokens) go through a :class:`~vlatrain.vlm.perceiver.PerceiverResampler` to
``resampler_latents`` tokens; a history step's media are the latents of all its cameras side by
side (RoboFlamingo). The language model gets a :class:`~vlatrain.vlm.perceiver.GatedCrossAttention`
before every ``cross_attn_every``-th decoder layer; text tokens attend to the media of the latest
media marker before them. The token sequence carries one learned media marker per step where
``{image}`` is::

    <bos>[MEDIA] {instruction} [ACTION]        (interleaved: ... [MEDIA] [ACTION] [MEDIA] [ACTION] ...)

The resampler, the cross-attention layers and the media marker are new (randomly initialised,
gates at 0): they train even when ``freeze_vision``/``freeze_language`` freeze the pretrained
towers, which is OpenFlamingo's and RoboFlamingo's recipe. Autoregressive decoding runs the whole
sequence once per token (no ``supports_kv_cache``): the cross-attention layers are conditioned on
the media index of every position of the sequence and keep no cache of their own.
"""

from __future__ import annotations

import torch
from torch import nn

from vlatrain.vlm.common import VLMBackbone
from vlatrain.vlm.loading import (WeightsError, image_spec, load_model, load_tokenizer,
                                  model_type, weights_dir)
from vlatrain.vlm.perceiver import FlamingoLayer, GatedCrossAttention, PerceiverResampler
from vlatrain.vlm.sequence import MEDIA, Piece

VISION_TYPES = {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
                "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel"}


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder's list of transformer layers (``layers``, ``blocks`` or ``h``)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    for attr in ("layers", "blocks", "h"):
        layers = getattr(decoder, attr, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise WeightsError(f"cannot find the decoder layers of {type(lm).__name__} "
                       f"(no layers/blocks/h list)")


class FlamingoBackbone(VLMBackbone):
    default_prompt = "{bos}{image}{instruction}"
    new_layers = ("xattn.",)
    needs = ()  # model.path holds vision/ and lm/

    def load(self, path) -> None:
        import transformers
        vdir = weights_dir(path / "vision", "model.path/vision")
        ldir = weights_dir(path / "lm", "model.path/lm")
        vtype = model_type(vdir)
        if vtype not in VISION_TYPES:
            raise WeightsError(f"{vdir}: model_type={vtype!r}; the Flamingo vision encoder must be "
                               f"one of {', '.join(sorted(VISION_TYPES))}")
        v = self.vcfg
        self.vision = load_model(getattr(transformers, VISION_TYPES[vtype]), vdir, dtype=v.dtype,
                                 attn_implementation=v.attn_implementation)
        self.model = load_model(transformers.AutoModelForCausalLM, ldir, dtype=v.dtype,
                                attn_implementation=v.attn_implementation)
        self.tokenizer = load_tokenizer(ldir)
        vc = self.vision.config
        self.spec_image = image_spec(vdir, vc.image_size)
        self.clip = vtype.startswith("clip")
        self.resampler = PerceiverResampler(vc.hidden_size, v.resampler_depth, v.resampler_heads,
                                            64, v.resampler_latents)
        layers = decoder_layers(self.model)
        self.flamingo_layers = []  # a plain list: the modules are registered inside the LM
        for i in range(len(layers)):
            if (i + 1) % v.cross_attn_every == 0:
                xattn = GatedCrossAttention(self.hidden_size, vc.hidden_size, v.xattn_heads,
                                            v.xattn_dim_head)
                layers[i] = FlamingoLayer(xattn, layers[i])
                self.flamingo_layers.append(layers[i])
        if not self.flamingo_layers:
            raise WeightsError(f"{ldir}: {len(layers)} decoder layers and cross_attn_every="
                               f"{v.cross_attn_every} leave no cross-attention layer")
        self.media_token = nn.Parameter(torch.randn(self.hidden_size) * self._embedding_std())

    @property
    def hidden_size(self) -> int:
        cfg = self.text_config()
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    def vision_tower(self):
        return self.vision

    def language_tower(self):
        return self.model.get_decoder()

    def pretrained(self):
        return [self.vision, self.model]

    def unused(self):
        """Besides the LM head: SigLIP's attention-pooling head, if the encoder has one."""
        tower = getattr(self.vision, "vision_model", self.vision)
        head = getattr(tower, "head", None)
        return super().unused() + ([head] if isinstance(head, nn.Module) else [])

    def _setup_tuning(self) -> None:
        super()._setup_tuning()
        if self.vcfg.grad_checkpointing:
            for layer in self.flamingo_layers:
                layer.checkpointing = True

    def encode_frames(self, pixels):
        """(S*cams, 3, H, W) -> (S, cams*latents, Dv): each step's media."""
        out = self.vision(pixel_values=pixels.to(self.vision_dtype())).last_hidden_state
        if self.clip:  # OpenFlamingo's visual tokens: patches after the final layer norm
            tower = getattr(self.vision, "vision_model", self.vision)  # transformers 4 / 5 layout
            out = tower.post_layernorm(out[:, 1:])
        lat = self.resampler(out.float())  # (S*cams, n, Dv), float32 like the resampler
        return lat.reshape(-1, len(self.cameras) * lat.shape[1], lat.shape[2])

    def image_pieces(self, frames, step):
        return [Piece(MEDIA, 1, ref=step)]

    def embed(self, layout, media, obs, steps, teacher=None):
        emb = super().embed(layout, media, obs, steps, teacher)
        r, c = layout.where(MEDIA)
        return emb.index_put((r, c), self.media_token.to(emb.dtype).expand(len(r), -1))

    def run_language_model(self, embeds, layout, media):
        is_media = layout.kind == MEDIA
        media_idx = is_media.long().cumsum(1)  # (R, L): 1-based index of the latest media
        r, c = is_media.nonzero(as_tuple=True)
        rows = media.new_zeros(embeds.shape[0], int(media_idx[:, -1].max()), *media.shape[1:])
        rows = rows.index_put((r, media_idx[r, c] - 1), media[layout.ref[r, c]])  # (R, M, n, Dv)
        for layer in self.flamingo_layers:
            layer.condition(rows, media_idx)
        try:
            return self.language_tower()(inputs_embeds=embeds, attention_mask=layout.mask.long(),
                                         use_cache=False).last_hidden_state
        finally:
            for layer in self.flamingo_layers:
                layer.condition(None, None)

