"""The backbone interface and the embedded small vision-language backbone.

A backbone turns one observation window into one feature vector per history step::

    Observation                                   -> BackboneOutput
      images[cam]    float (B, h, 3, H, W)          features  (B, h, F)
      mask           bool  (B, h)                    mask      (B, h)
      state          float (B, h, D) or None         lm_logits (B, h, c*A, V) or None
      language       float (B, E) or None          keypoints (B, h, K) or None (tiny backbone)
      language_mask  bool  (B,) or None
      instruction    list[str] (B)

Images arrive already resized and normalised for the backbone: ``augment.prepare`` reads
``backbone.image_spec(camera)`` (size, mean, std) and does the work on the training device, so
a VLM adapter states its processor's resolution and normalisation there and never touches bytes.
A backbone whose features already mix the history (an interleaved VLM that reads the whole
window in one sequence) sets ``fuses_history = True``; the policy heads are causal over time
either way. A backbone that predicts action tokens through its own language-model head returns
``lm_logits`` for a head that consumes them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vladata.errors import ConfigError
from vlatrain.config import ModelConfig
from vlatrain.spec import DataSpec


@dataclass(frozen=True)
class ImageSpec:
    """How a backbone wants its frames: (height, width) and per-channel mean/std on [0, 1] pixels,
    optionally after a fixed crop of the stored frame."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) of the stored frame


@dataclass
class Observation:
    """One batch of observation windows, on the device, prepared for the backbone."""

    images: dict[str, Tensor]            # cam -> float (B, h, 3, H, W)
    mask: Tensor                         # bool (B, h): the history step exists
    state: Tensor | None = None          # float (B, h, D), normalised
    language: Tensor | None = None       # float (B, E): stored instruction embedding
    language_mask: Tensor | None = None  # bool (B,): an embedding exists
    instruction: list[str] | None = None  # (B,)
    action_tokens: Tensor | None = None  # int64 (B, h, T): teacher-forcing input of an
    #                                      autoregressive head (training/validation only)


@dataclass
class BackboneOutput:
    features: Tensor                     # (B, h, F)
    mask: Tensor                         # bool (B, h)
    lm_logits: Tensor | None = None      # (B, h, c*A, V): action-token logits of an LM head
    keypoints: Tensor | None = None      # (B, h, K): the tiny backbone's spatial-softmax
    #                                      keypoints, every camera's (an auxiliary head's input)


@runtime_checkable
class Backbone(Protocol):
    """What the trainer needs of a backbone (an ``nn.Module``).

    - ``feature_dim``: F, the width of ``BackboneOutput.features``.
    - ``fuses_history``: whether ``features[:, t]`` already depends on steps ``<= t``.
    - ``image_spec(camera)``: the resolution and normalisation the frames must arrive in.
    - ``forward(obs)``: :class:`Observation` -> :class:`BackboneOutput`.
    - ``param_groups()`` (optional): lists of parameters with their own ``lr``/``weight_decay``
      (a pretrained tower trained at a lower rate); parameters not listed use ``optim.*``.
    """

    feature_dim: int
    fuses_history: bool

    def image_spec(self, camera: str) -> ImageSpec: ...

    def __call__(self, obs: Observation) -> BackboneOutput: ...


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) -> (N, 2C): the expected (x, y) of each channel's softmax over pixels.

    ``learned``: a learnable temperature divides the logits first (initially 1), so a channel
    can sharpen its softmax around a small object instead of averaging towards the centre.
    """

    def __init__(self, learned: bool = False):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(())) if learned else None

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if self.log_temperature is not None:
            x = x * torch.exp(-self.log_temperature)
        attn = torch.softmax(x.flatten(2), dim=-1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        ex = (attn.sum(2) * xs).sum(-1)  # (N, C)
        ey = (attn.sum(3) * ys).sum(-1)  # (N, C)
        return torch.cat([ex, ey], dim=-1)


class ConvEncoder(nn.Module):
    """A small CNN with FiLM conditioning on the last blocks: (N, 3, S, S), (N, L) ->
    (features (N, F), spatial-softmax keypoints (N, 2C))."""

    def __init__(self, width: int, cond_dim: int, channels=(16, 32, 64, 64), stride: int = 8,
                 keypoints: str = "relu"):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 5, stride=2, padding=2), nn.GroupNorm(4, c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GroupNorm(8, c2), nn.ReLU())
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c2, c3, 3, stride=stride // 4, padding=1), nn.GroupNorm(8, c3)),
            nn.Sequential(nn.Conv2d(c3, c4, 3, stride=1, padding=1), nn.GroupNorm(8, c4))])
        self.film = nn.ModuleList([nn.Linear(cond_dim, 2 * c) for c in (c3, c4)]) if cond_dim else None
        if self.film is not None:
            for lin in self.film:  # start as the identity: gamma = 1, beta = 0
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        # keypoints "relu": the softmax reads the last block's ReLU output (the original encoder);
        # "learned": a 1x1 convolution of its pre-ReLU output, with a learnable temperature
        self.keypoints = nn.Conv2d(c4, c4, 1) if keypoints == "learned" else None
        self.pool = SpatialSoftmax(learned=keypoints == "learned")
        self.proj = nn.Linear(2 * c4, width)

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> (features (N, F), keypoints (N, 2C): each channel's expected x then y)."""
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.film is not None and cond is not None:
                gamma, beta = self.film[i](cond).chunk(2, dim=-1)  # (N, C) each
                x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            if self.keypoints is None or i < len(self.blocks) - 1:
                x = torch.relu(x)
        if self.keypoints is not None:  # "learned": keypoint maps from the pre-ReLU features
            x = self.keypoints(x)
        kp = self.pool(x)
        return self.proj(kp), kp


class HashedTextEncoder(nn.Module):
    """A small text encoder: lower-cased words hashed into ``vocab`` buckets, mean of embeddings."""

    def __init__(self, width: int, vocab: int = 4096):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.EmbeddingBag(vocab, width, mode="mean")

    def token_ids(self, text: str) -> list[int]:
        words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
        return [zlib.crc32(w.encode()) % self.vocab for w in words]

    def forward(self, texts: list[str], device) -> Tensor:
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            ids.extend(self.token_ids(t))
        ids_t = torch.tensor(ids, dtype=torch.long, device=device)
        off_t = torch.tensor(offsets, dtype=torch.long, device=device)
        return self.embed(ids_t, off_t)  # (B, F); zeros for empty texts


class TinyBackbone(nn.Module):
    """The embedded vision-language backbone: trains on a CPU in minutes.

    Each camera frame goes through its own FiLM-conditioned CNN (spatial-softmax keypoints),
    the state through a linear layer, the instruction through the stored sentence embedding
    (``language=embedding``) or a hashed bag-of-words encoder (``language=text``); the parts are
    concatenated and mixed by an MLP into one F-wide feature per history step.
    """

    fuses_history = False

    def __init__(self, cfg: ModelConfig, spec: DataSpec):
        super().__init__()
        if not spec.cameras and not (cfg.use_state and spec.state_dim):
            raise ConfigError(["data.cameras: the tiny backbone needs at least one camera or "
                               "the state (model.use_state)"])
        if cfg.language == "embedding" and spec.language_dim == 0:
            raise ConfigError(["model.language: 'embedding' but the store has no language "
                               "embeddings; use model.language=text (a small text encoder) or none"])
        w = self.feature_dim = cfg.width
        self.size = cfg.image_size
        self.views = {v.camera: v for v in cfg.views or []}
        for cam, v in self.views.items():
            if cam not in spec.cameras:
                raise ValueError(f"model.views: camera {cam!r} is not one of the policy's "
                                 f"cameras {list(spec.cameras)}")
            hh, ww = spec.image_shapes[cam][:2]
            if v.crop is not None and (v.crop[0] + v.crop[2] > hh or v.crop[1] + v.crop[3] > ww):
                raise ValueError(f"model.views: the crop {v.crop} of {cam!r} leaves its stored "
                                 f"{hh}x{ww} frame")
        self.language = cfg.language
        self.lang_proj = (nn.Sequential(nn.Linear(spec.language_dim, w), nn.GELU())
                          if cfg.language == "embedding" else None)
        self.text = HashedTextEncoder(w) if cfg.language == "text" else None
        cond = w if cfg.language != "none" else 0
        self.cams = nn.ModuleDict({c: ConvEncoder(w, cond, stride=cfg.encoder_stride,
                                                  keypoints=cfg.keypoints)
                                   for c in spec.cameras})
        self.keypoint_dim = sum(enc.proj.in_features for enc in self.cams.values())  # 2C each
        self.state = (nn.Linear(spec.state_dim, w) if cfg.use_state and spec.state_dim else None)
        parts = len(self.cams) + (self.state is not None) + (cond > 0)
        self.mix = nn.Sequential(nn.Linear(parts * w, w), nn.GELU(), nn.Linear(w, w),
                                 nn.LayerNorm(w))

    def image_spec(self, camera: str) -> ImageSpec:
        v = self.views.get(camera)
        if v is None:
            return ImageSpec((self.size, self.size))
        size = v.size or self.size
        return ImageSpec((size, size), crop=None if v.crop is None else tuple(v.crop))

    def encode_language(self, obs: Observation, batch: int, device) -> Tensor | None:
        if self.lang_proj is not None:
            lang = obs.language  # (B, E)
            if obs.language_mask is not None:
                lang = lang * obs.language_mask[:, None].to(lang.dtype)
            return self.lang_proj(lang)  # (B, F)
        if self.text is not None:
            return self.text(obs.instruction or [""] * batch, device)  # (B, F)
        return None

    def forward(self, obs: Observation) -> BackboneOutput:
        b, h = obs.mask.shape
        device = obs.mask.device
        lang = self.encode_language(obs, b, device)  # (B, F) or None
        cond = lang.repeat_interleave(h, dim=0) if lang is not None else None  # (B*h, F)
        parts, keypoints = [], []
        for cam, enc in self.cams.items():
            x = obs.images[cam]  # (B, h, 3, S, S)
            feat, kp = enc(x.flatten(0, 1), cond)
            parts.append(feat.view(b, h, -1))
            keypoints.append(kp.view(b, h, -1))
        if self.state is not None:
            parts.append(self.state(obs.state))  # (B, h, F)
        if lang is not None:
            parts.append(lang[:, None].expand(b, h, -1))
        feats = self.mix(torch.cat(parts, dim=-1))  # (B, h, F)
        return BackboneOutput(features=feats, mask=obs.mask,
                              keypoints=torch.cat(keypoints, dim=-1) if keypoints else None)
