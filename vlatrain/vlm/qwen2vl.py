"""Qwen2-VL (``Qwen/Qwen2-VL-2B-Instruct``, ``Qwen/Qwen2-VL-7B-Instruct``).

A native-resolution ViT (14 px patches, a pair of identical frames per temporal patch, 2x2
patch merging) into Qwen2 with multimodal rotary positions (M-RoPE: a (temporal, height, width)
position per token). Frames arrive at ``model.image_size`` (a multiple of 28), giving
(size/28)^2 visual tokens each, inside the Instruct chat format::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|>[visual tokens]<|vision_end|>What action should the robot take to {instruction}?
    <|im_end|>\\n<|im_start|>assistant\\n [ACTION]

Positions follow the model's rule: text tokens count up; a frame's tokens sit on its merged
(h, w) grid offset by the count so far, which then advances by max(h, w). Autoregressive
decoding uses the decoder's key/value cache (``supports_kv_cache``), each new action query at
its M-RoPE position in the whole sequence.
"""

from __future__ import annotations

import numpy as np
import torch

from vladata.errors import ConfigError
from vlatrain.vlm.common import VLMBackbone, pooled
from vlatrain.vlm.loading import image_spec, read_preprocessor, token_id
from vlatrain.vlm.sequence import IMAGE, Piece, text


class Qwen2VLBackbone(VLMBackbone):
    default_prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n{image}What action should the robot take to "
                      "{instruction}?<|im_end|>\n<|im_start|>assistant\n")
    image_token = "<|image_pad|>"
    supports_kv_cache = True

    def load(self, path) -> None:
        from transformers import Qwen2VLForConditionalGeneration
        self.load_pretrained(Qwen2VLForConditionalGeneration, path, ("qwen2_vl",))
        vc = self.model.config.vision_config
        pre = read_preprocessor(path)
        self.patch = int(pre.get("patch_size", vc.patch_size))
        self.merge = int(pre.get("merge_size", vc.spatial_merge_size))
        self.tps = int(pre.get("temporal_patch_size", vc.temporal_patch_size))
        size, unit = int(self.model_cfg.image_size), self.patch * self.merge
        if size % unit:
            raise ConfigError([f"model.image_size: Qwen2-VL needs a multiple of {unit} "
                               f"(patch {self.patch} x merge {self.merge}), got {size}; e.g. "
                               f"{max(unit, round(size / unit) * unit)}"])
        self.spec_image = image_spec(path, size)
        self.grid = size // self.patch  # patches per side
        self.side = self.grid // self.merge  # visual tokens per side
        self.vision_start = token_id(self.tokenizer, "<|vision_start|>", path)
        self.vision_end = token_id(self.tokenizer, "<|vision_end|>", path)

    def vision_tower(self):
        return self.model.model.visual

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N*g*g, C*tps*p*p): the image processor's flat patch layout, each frame
        repeated over the temporal patch as the processor does for still images."""
        n, c = pixels.shape[:2]
        g, m, p = self.grid, self.merge, self.patch
        x = pixels.reshape(n, c, g // m, m, p, g // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, self.tps, -1, -1)
        return x.reshape(n * g * g, c * self.tps * p * p)

    def encode_frames(self, pixels):
        n = pixels.shape[0]
        grid = torch.tensor([[1, self.grid, self.grid]], device=pixels.device).repeat(n, 1)
        feats = pooled(self.model.model.get_image_features(
            self.patchify(pixels.to(self.vision_dtype())), image_grid_thw=grid))
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
        return feats.view(n, self.side * self.side, -1)

    def image_pieces(self, frames, step):
        out = []
        for f in frames:
            out += (text([self.vision_start]) + [Piece(IMAGE, self.side ** 2, ref=f)]
                    + text([self.vision_end]))
        return out

    def mrope_positions(self, layout) -> torch.Tensor:
        """int64 (3, R, L): M-RoPE (temporal, height, width) positions of every token."""
        r, length = layout.ids.shape
        pos = np.zeros((3, r, length), np.int64)
        k = np.arange(self.side ** 2)
        for i, row in enumerate(layout.rows):
            at = cur = 0
            for p in row:
                if p.kind == IMAGE:
                    pos[0, i, at:at + p.length] = cur
                    pos[1, i, at:at + p.length] = cur + k // self.side
                    pos[2, i, at:at + p.length] = cur + k % self.side
                    cur += self.side
                else:
                    pos[:, i, at:at + p.length] = cur + np.arange(p.length)
                    cur += p.length
                at += p.length
            pos[:, i, at:] = cur + np.arange(length - at)
        return torch.from_numpy(pos).to(layout.ids.device)

    def positions(self, layout):
        return self.mrope_positions(layout)

    def run_language_model(self, embeds, layout, media):
        return self.language_tower()(inputs_embeds=embeds, attention_mask=layout.mask.long(),
                                     position_ids=self.mrope_positions(layout),
                                     use_cache=False).last_hidden_state
