"""Action losses. Every loss is a masked, weighted mean over (batch, history step, chunk step).

Continuous (``fc``/``lstm``/``gpt`` heads): MSE or Huber on the arm dimensions (normalised
units) plus ``gripper_weight`` x BCE-with-logits on the gripper dimensions, whose target is
1 = open from the stored -1/+1. Discrete: cross-entropy over the K bins of every action
dimension. Steps where ``mask`` is false (the chunk ran past its segment or episode, or the
history step is padding) contribute nothing -- not to the value, not to the gradient -- even
when their targets hold garbage. ``step_weights`` (h,) weights history steps (RoboVLMs'
history loss weighting); the mean divides by the total weight of the valid steps.

Each function returns the parts it logs: ``{"loss": total, "arm": ..., "gripper": ...}`` or
``{"loss": total, "ce": ...}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _weights(mask: Tensor, step_weights: Tensor | None) -> Tensor:
    """(B, h, c) bool, (h,) -> (B, h, c) float weights, 0 where masked."""
    w = mask.float()
    if step_weights is not None:
        w = w * step_weights.to(w)[None, :, None]
    return w


def _wmean(per_step: Tensor, mask: Tensor, w: Tensor) -> Tensor:
    """Weighted mean of (B, h, c) values over the valid steps; 0 when none is valid."""
    per_step = torch.where(mask, per_step, torch.zeros((), dtype=per_step.dtype,
                                                       device=per_step.device))
    return (per_step * w).sum() / w.sum().clamp_min(1e-12)


def continuous_loss(pred: Tensor, target: Tensor, mask: Tensor, *, arm_dims: list[int],
                    gripper_dims: list[int], kind: str = "mse", huber_delta: float = 1.0,
                    gripper_weight: float = 0.1, step_weights: Tensor | None = None,
                    ) -> dict[str, Tensor]:
    """pred, target (B, h, c, A); mask (B, h, c) bool -> {"loss", "arm", "gripper"}."""
    pred = pred.float()
    w = _weights(mask, step_weights)
    zero = pred.new_zeros(())
    arm = grip = zero
    if arm_dims:
        p, t = pred[..., arm_dims], target[..., arm_dims]
        t = torch.where(mask[..., None], t, p.detach())  # garbage in masked targets stays out
        if kind == "huber":
            err = F.huber_loss(p, t, reduction="none", delta=huber_delta)
        else:
            err = F.mse_loss(p, t, reduction="none")
        arm = _wmean(err.mean(-1), mask, w)
    if gripper_dims:
        logits = pred[..., gripper_dims]
        opened = (target[..., gripper_dims] > 0).float()  # -1/+1 -> 0/1 (NaN -> 0)
        bce = F.binary_cross_entropy_with_logits(logits, opened, reduction="none")
        grip = _wmean(bce.mean(-1), mask, w)
    return {"loss": arm + gripper_weight * grip, "arm": arm.detach(), "gripper": grip.detach()}


def discrete_loss(logits: Tensor, bins: Tensor, mask: Tensor, *,
                  step_weights: Tensor | None = None) -> dict[str, Tensor]:
    """logits (B, h, c, A, K); bins (B, h, c, A) int64; mask (B, h, c) -> {"loss", "ce"}."""
    k = logits.shape[-1]
    safe = torch.where(mask[..., None], bins, torch.zeros_like(bins)).clamp(0, k - 1)
    ce = F.cross_entropy(logits.float().reshape(-1, k), safe.reshape(-1), reduction="none")
    ce = _wmean(ce.view(bins.shape).mean(-1), mask, _weights(mask, step_weights))
    return {"loss": ce, "ce": ce.detach()}


def aux_loss(pred: Tensor, target: Tensor, mask: Tensor, widths: list[int],
             weights: list[float]) -> tuple[Tensor, Tensor]:
    """Auxiliary targets: pred, target (B, h, D) with D = sum(widths); mask (B, h) bool ->
    (sum over targets of weight x MSE over the valid steps and the target's dims, the plain MSE
    over all dims). Padded history steps contribute nothing."""
    w = mask.float()
    err = F.mse_loss(pred.float(), torch.where(mask[..., None], target, pred.detach().float()),
                     reduction="none")  # (B, h, D)
    total, lo = pred.new_zeros(()).float(), 0
    for width, weight in zip(widths, weights):
        total = total + weight * _wmean(err[..., lo:lo + width].mean(-1), mask, w)
        lo += width
    return total, _wmean(err.mean(-1), mask, w).detach()


def make_loss(cfg, policy, device: torch.device):
    """The loss of ``policy`` as the run's ``cfg.train`` configures it: (head output, Targets) ->
    parts (``discrete_loss`` for discrete heads, ``continuous_loss`` otherwise), plus the
    auxiliary targets' weighted MSE (part ``aux``) when the policy has an auxiliary head."""
    base = _action_loss(cfg, policy, device)
    targets = policy.spec.extra.get("aux_targets") or []
    if getattr(policy, "aux_head", None) is None or not targets:
        return base
    widths = [len(t["dims"]) for t in targets]
    weights = [float(t["weight"]) for t in targets]

    def with_aux(out, tgt):
        parts = base(out, tgt)
        pred, policy.aux_pred = policy.aux_pred, None  # this forward's, used once
        total, mse = aux_loss(pred, tgt.aux, tgt.obs_mask, widths, weights)
        return {**parts, "loss": parts["loss"] + total, "aux": mse}
    return with_aux


def _action_loss(cfg, policy, device: torch.device):
    spec, t = policy.spec, cfg.train
    weights = (torch.tensor(t.history_weights, dtype=torch.float32, device=device)
               if t.history_weights is not None else None)
    if getattr(policy, "autoregressive", False):
        from vlatrain.model.autoregressive import sequence_loss
        return lambda out, tgt: sequence_loss(out, tgt.tokens, tgt.token_mask,
                                              step_weights=weights)
    if policy.discrete:
        return lambda out, tgt: discrete_loss(out, tgt.bins, tgt.mask, step_weights=weights)
    arm, grip = list(spec.arm_dims), list(spec.gripper_dims)
    return lambda out, tgt: continuous_loss(
        out, tgt.action, tgt.mask, arm_dims=arm, gripper_dims=grip, kind=t.loss,
        huber_delta=t.huber_delta, gripper_weight=t.gripper_weight, step_weights=weights)
