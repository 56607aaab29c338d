"""Device-side batch preparation: images resized, augmented and normalised; targets built.

The loader hands over uint8 frames as stored (channels last) and low-dimensional observations
already normalised with each store's statistics (vladata, ``normalize_observations``; the
spec's ``observation_norm`` records how); everything else happens here, on
the training device, in one pass per camera::

    uint8 (B, h, H, W, 3) -> [the backbone's fixed crop] -> float (B*h, 3, H, W) / 255
      -> resize to the backbone's size
      -> [train] random shift: replicate-pad by ``shift`` px, crop at one offset per window
      -> [train] colour jitter: brightness, contrast, saturation, one factor each per window
      -> (x - mean) / std  (the backbone's ImageSpec)   -> float (B, h, 3, S, S)

One offset/factor per window ("per trajectory") keeps the frames of a history consistent, as
RoboVLMs' and Octo's trajectory-level augmentation does. Action noise (train only) adds
N(0, ``action_noise``) to the normalised arm targets, clipped to [-1, 1]. For an autoregressive
head (``sequence_head``) the target token sequences are built here too (bins of
``action.tokens`` or FAST ids of ``action.fast``, :meth:`AutoregressiveHead.targets`) and handed
to the model as ``Observation.action_tokens`` for teacher forcing (``teacher_bins``: the bins
(B, h, c*A), for the autoregressive VLM LM head). All randomness comes
from the ``generator`` passed in (a ``torch.Generator`` on the device, saved in checkpoints), so
augmentation never disturbs the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vladata.store.layout import ACTION_TOKENS, IMAGE_PREFIX, STATE
from vladata.loading.windows import FAST, FAST_MASK
from vlatrain.config import AugmentConfig
from vlatrain.model.backbone import ImageSpec, Observation
from vlatrain.spec import DataSpec


@dataclass
class Targets:
    action: Tensor                # float (B, h, c, A), normalised (gripper -1/+1)
    mask: Tensor                  # bool (B, h, c): action_mask & obs_mask
    bins: Tensor | None = None    # int64 (B, h, c, A): bin of each token (discrete heads)
    tokens: Tensor | None = None  # int64 (B, h, T): target sequences (autoregressive heads)
    token_mask: Tensor | None = None  # bool (B, h, T): the tokens that count in the loss
    aux: Tensor | None = None     # float (B, h, D): data.aux_targets, normalised, concatenated
    obs_mask: Tensor | None = None  # bool (B, h): the history steps that exist (aux targets)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def random_shift(x: Tensor, pad: int, per: int, gen: torch.Generator) -> Tensor:
    """(N, C, S, S) -> same shape, shifted by up to ``pad`` px; one offset per ``per`` frames."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (n // per, 2), generator=gen, device=x.device)
    off = off.repeat_interleave(per, dim=0)  # (N, 2)
    rows = off[:, 0, None] + torch.arange(h, device=x.device)  # (N, S)
    cols = off[:, 1, None] + torch.arange(w, device=x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def color_jitter(x: Tensor, cfg: AugmentConfig, per: int, gen: torch.Generator) -> Tensor:
    """(N, 3, S, S) in [0, 1] -> jittered, clamped to [0, 1]; one factor set per ``per`` frames."""
    n = x.shape[0] // per

    def factor(s: float) -> Tensor:
        f = _uniform(n, 1 - s, 1 + s, gen, x.device).repeat_interleave(per)
        return f[:, None, None, None].to(x.dtype)

    if cfg.brightness:
        x = x * factor(cfg.brightness)
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(cfg.contrast) + mean
    if cfg.saturation:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - grey) * factor(cfg.saturation) + grey
    return x.clamp(0, 1)


def prepare_images(frames: Tensor, spec: ImageSpec, cfg: AugmentConfig, train: bool,
                   gen: torch.Generator | None) -> Tensor:
    """uint8 (B, h, H, W, 3) on the device -> float (B, h, 3, S, S) for the backbone."""
    b, h = frames.shape[:2]
    x = frames.flatten(0, 1).permute(0, 3, 1, 2)  # (B*h, 3, H, W) uint8
    if spec.crop is not None:
        top, left, ch, cw = spec.crop
        x = x[..., top:top + ch, left:left + cw]
    x = x.contiguous().float().div_(255)  # channels-last strides make the convolutions crawl
    if tuple(x.shape[-2:]) != tuple(spec.size):
        down = x.shape[-2] > spec.size[0] or x.shape[-1] > spec.size[1]
        x = F.interpolate(x, size=spec.size, mode="bilinear", align_corners=False, antialias=down)
    if train and cfg.shift:
        x = random_shift(x, cfg.shift, h, gen)
    if train and (cfg.brightness or cfg.contrast or cfg.saturation):
        x = color_jitter(x, cfg, h, gen)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype)[:, None, None]
    return ((x - mean) / std).view(b, h, *x.shape[1:])


class BatchPreparer:
    """Moves a loader batch to the device and turns it into (Observation, Targets)."""

    def __init__(self, spec: DataSpec, image_specs: dict[str, ImageSpec], cfg: AugmentConfig,
                 device: torch.device, *, discrete: bool, use_state: bool = True,
                 sequence_head=None, language=None, teacher_bins: bool = False):
        self.spec, self.image_specs, self.cfg, self.device = spec, image_specs, cfg, device
        self.discrete, self.use_state = discrete, use_state and spec.state_dim > 0
        self.arm = torch.tensor(spec.arm_dims, dtype=torch.long, device=device)
        self.state_index = (torch.tensor(spec.state_index, dtype=torch.long, device=device)
                            if spec.state_index else None)
        self.teacher_bins = teacher_bins  # the bins as Observation.action_tokens (VLM LM head)
        self.language = language  # a vlatrain.language.LanguageAugmenter (training only)
        self.sequence = sequence_head  # an AutoregressiveHead: builds its target sequences
        self.sequence_bins = sequence_head is not None and sequence_head.eos is None
        if discrete or self.sequence_bins:  # token id -> bin, for any injective layout: sort ids
            ids = torch.tensor(spec.token_ids, dtype=torch.long, device=device)
            self.sorted_ids, self.order = torch.sort(ids)
        self.aux = [(t["key"], torch.tensor(t["dims"], dtype=torch.long, device=device))
                    for t in spec.extra.get("aux_targets") or []]
        self.checks_left = 3  # the first batches' tokens are checked against the layout
        self.copies: list = []  # CUDA events of host->device copies still in flight

    def release(self) -> None:
        """Wait until the host->device copies of the batches prepared so far are done.

        The loader reuses a batch's host buffers once two newer batches were fetched (and
        ``vlatrain.prefetch`` fetches one ahead); call this before taking the next batch. A
        no-op on the CPU, where nothing is copied asynchronously.
        """
        while self.copies:
            self.copies.pop(0).synchronize()

    def to_bins(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """int64 token ids (B, h, c, A) -> bins under the store's layout."""
        pos = torch.searchsorted(self.sorted_ids, tokens).clamp(max=len(self.sorted_ids) - 1)
        if self.checks_left > 0:
            self.checks_left -= 1
            bad = (self.sorted_ids[pos] != tokens) & mask[..., None]
            if bool(bad.any()):
                raise ValueError(f"action.tokens holds ids outside the store's token layout "
                                 f"(e.g. {tokens[bad][:8].tolist()}; layout ids "
                                 f"{int(self.sorted_ids[0])}..{int(self.sorted_ids[-1])}): the "
                                 f"tokens and info['tokenizer'] disagree; rerun `vladata stats`")
        return self.order[pos]

    def __call__(self, batch: dict, *, train: bool, gen: torch.Generator | None = None,
                 ) -> tuple[Observation, Targets]:
        dev, nb = self.device, self.device.type == "cuda"
        obs = self.observation(batch, train=train, gen=gen)
        action = batch["action"].to(dev, non_blocking=nb).float()  # (B, h, c, A)
        mask = batch["action_mask"].to(dev, non_blocking=nb) & obs.mask[..., None]  # (B, h, c)
        if train and self.cfg.action_noise and len(self.spec.arm_dims):
            noise = torch.randn(action[..., self.arm].shape, generator=gen, device=dev)
            action = action.clone()
            action[..., self.arm] = (action[..., self.arm] + self.cfg.action_noise * noise).clamp(-1, 1)
        bins = None
        if self.discrete or self.sequence_bins:
            bins = self.to_bins(batch[ACTION_TOKENS].to(dev, non_blocking=nb).long(), mask)
        tokens = token_mask = None
        if self.teacher_bins:  # (B, h, c*A): teacher forcing of an autoregressive VLM LM head
            obs.action_tokens = bins.flatten(2)
        if self.sequence is not None:
            if self.sequence_bins:
                tokens, token_mask = self.sequence.targets(bins, mask, obs.mask)
            else:
                tokens, token_mask = self.sequence.targets(
                    batch[FAST].to(dev, non_blocking=nb).long(),
                    batch[FAST_MASK].to(dev, non_blocking=nb), obs.mask)
            obs.action_tokens = tokens
        if nb:
            self.copies.append(torch.cuda.Event())
            self.copies[-1].record()
        aux = None
        if self.aux:  # (B, h, D): the auxiliary targets' dims, as the loader normalised them
            aux = torch.cat([batch[k].to(dev, non_blocking=nb).float().index_select(-1, d)
                             for k, d in self.aux], dim=-1)
        return obs, Targets(action=action, mask=mask, bins=bins, tokens=tokens,
                            token_mask=token_mask, aux=aux, obs_mask=obs.mask)

    def observation(self, batch: dict, *, train: bool, gen: torch.Generator | None = None,
                    ) -> Observation:
        """The observation part of a batch (images, obs_mask, state, language) on the device:
        what a policy runtime prepares from its own history windows (``train=False``)."""
        dev, nb = self.device, self.device.type == "cuda"
        images = {cam: prepare_images(batch[IMAGE_PREFIX + cam].to(dev, non_blocking=nb),
                                      self.image_specs[cam], self.cfg, train, gen)
                  for cam in self.spec.cameras}
        obs_mask = batch["obs_mask"].to(dev, non_blocking=nb)  # (B, h)
        state = None
        if self.use_state:
            state = batch[STATE].to(dev, non_blocking=nb)  # (B, h, D), normalised by the loader
            if self.state_index is not None:
                state = state.index_select(-1, self.state_index)
        lang = batch.get("language.embedding")
        lang = None if lang is None else lang.to(dev, non_blocking=nb)
        lmask = batch.get("language_mask")
        instruction = list(batch.get("instruction") or [])
        if train and self.language is not None:  # another phrasing of the same task
            instruction, lang = self.language(batch, lang, gen)
        return Observation(images=images, mask=obs_mask, state=state, language=lang,
                           language_mask=None if lmask is None else lmask.to(dev, non_blocking=nb),
                           instruction=instruction)
