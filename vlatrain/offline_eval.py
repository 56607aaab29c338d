"""Offline evaluation on the validation split, against the mean-action baseline.

For each validation window the policy's prediction at the *last* history step (the frame a
deployed policy acts on) is decoded to normalised actions, denormalised into the dataset's
units and compared with the target over the valid chunk steps:

- ``val/mae/<dim>``: mean absolute error of each arm dimension, in dataset units;
  ``val/mae_baseline/<dim>``: the same for the trivial policy that always predicts the mean
  action of the statistics split (``ds.stats["action"]["mean"]``);
- ``val/arm_mae`` / ``val/arm_mae_baseline``: their means over the arm dimensions and
  ``val/arm_mae_ratio`` = model / baseline (below 1: better than the mean action);
- ``val/gripper_acc`` (open/closed agreement) and ``val/gripper_acc_baseline`` (the mean's side);
- ``val/token_acc``: bin accuracy over all dimensions, for discrete heads; for autoregressive
  heads the teacher-forced accuracy of the valid tokens, while the actions (``val/mae``...) are
  *generated* (:meth:`Policy.predict`) and ``val/decodable`` is the share of generated chunks
  that decoded without the FAST fallback; the autoregressive VLM LM head likewise generates its
  actions while ``val/token_acc`` is teacher forced;
- ``val/loss``: the training loss over every valid step of the window (auxiliary part included);
- ``val/aux_mse``: with ``data.aux_targets``, the auxiliary head's MSE (normalised units).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

from vladata.errors import StoreError
from vlatrain.augment import BatchPreparer


@torch.no_grad()
def evaluate(policy, loader, prep: BatchPreparer, loss_fn: Callable, *,
             to_units: Callable[[Tensor], Tensor], mean_action: Tensor, mean_action_norm: Tensor,
             max_batches: int | None = None, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Metrics over (up to ``max_batches`` batches of) ``loader``; see the module docstring."""
    spec = policy.spec
    autoregressive = getattr(policy, "autoregressive", False)
    arm, grip = list(spec.arm_dims), list(spec.gripper_dims)
    dev = prep.device
    was_training = policy.training
    policy.eval()
    abs_err = torch.zeros(spec.action_dim, dtype=torch.float64, device=dev)
    base_err = torch.zeros_like(abs_err)
    grip_ok = base_ok = tok_ok = tok_n = n = torch.zeros((), dtype=torch.float64, device=dev)
    dec_ok = dec_n = torch.zeros((), dtype=torch.float64, device=dev)
    loss_sum, aux_sum, batches = 0.0, None, 0
    mean_u = mean_action.to(dev)
    base_open = mean_action_norm.to(dev)[grip] > 0 if grip else None
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        obs, tgt = prep(batch, train=False)
        prep.release()
        with autocast():
            out = policy(obs)
        parts = loss_fn(out, tgt)
        loss_sum += float(parts["loss"])
        if "aux" in parts:  # the auxiliary targets' MSE (normalised units)
            aux_sum = (aux_sum or 0.0) + float(parts["aux"])
        batches += 1
        if obs.action_tokens is not None:              # teacher forced: generate the actions
            pred = policy.predict(obs)[:, -1]          # (B, c, A) normalised
        else:
            pred = policy.decode(out)[:, -1]
        if autoregressive:
            dec_ok = dec_ok + policy.decodable[:, -1].sum()
            dec_n = dec_n + policy.decodable.shape[0]
            hit = (out.argmax(-1) == tgt.tokens)[:, -1].to(torch.float64)  # (B, T)
            tok_ok = tok_ok + (hit * tgt.token_mask[:, -1]).sum()
            tok_n = tok_n + tgt.token_mask[:, -1].sum()
        target, m = tgt.action[:, -1], tgt.mask[:, -1]  # (B, c, A), (B, c)
        mf = m.to(torch.float64)[..., None]
        pu, tu = to_units(pred).double(), to_units(target).double()
        abs_err += ((pu - tu).abs() * mf).sum((0, 1))
        base_err += ((mean_u.double() - tu).abs() * mf).sum((0, 1))
        n = n + mf.sum()
        if grip:
            t_open = target[..., grip] > 0
            grip_ok = grip_ok + (((pred[..., grip] > 0) == t_open) * mf).sum()
            base_ok = base_ok + ((base_open == t_open) * mf).sum()
        if policy.discrete:
            hit = (out[:, -1].argmax(-1) == tgt.bins[:, -1]).to(torch.float64)  # (B, c, A)
            tok_ok = tok_ok + (hit * mf).sum()
            tok_n = tok_n + mf.sum() * spec.action_dim
    policy.train(was_training)
    if batches == 0 or float(n) == 0:
        raise StoreError("the validation split yielded no valid windows to evaluate; check "
                         "data.val_split and that it holds episodes longer than data.history")
    count = float(n)
    mae, base = (abs_err / count).tolist(), (base_err / count).tolist()
    names = spec.action_names
    metrics = {"val/loss": loss_sum / batches, "val/samples": count}
    if aux_sum is not None:
        metrics["val/aux_mse"] = aux_sum / batches
    for d in arm:
        metrics[f"val/mae/{names[d]}"] = mae[d]
        metrics[f"val/mae_baseline/{names[d]}"] = base[d]
    if arm:
        metrics["val/arm_mae"] = sum(mae[d] for d in arm) / len(arm)
        metrics["val/arm_mae_baseline"] = sum(base[d] for d in arm) / len(arm)
        metrics["val/arm_mae_ratio"] = metrics["val/arm_mae"] / max(metrics["val/arm_mae_baseline"], 1e-12)
    if grip:
        metrics["val/gripper_acc"] = float(grip_ok) / (count * len(grip))
        metrics["val/gripper_acc_baseline"] = float(base_ok) / (count * len(grip))
    if policy.discrete or autoregressive:
        metrics["val/token_acc"] = float(tok_ok) / max(float(tok_n), 1.0)
    if autoregressive:
        metrics["val/decodable"] = float(dec_ok) / max(float(dec_n), 1.0)
    return metrics


def format_report(metrics: dict[str, float], action_names: list[str] | tuple[str, ...]) -> str:
    """A table of per-dimension errors, model vs mean-action baseline, every dimension where the
    model is worse flagged, the summary lines and what the numbers mean."""
    lines = [f"{'dimension':<16}{'model MAE':>14}{'mean-action MAE':>18}{'ratio':>8}"]
    worse = []
    for name in action_names:
        k = f"val/mae/{name}"
        if k in metrics:
            b = metrics[f"val/mae_baseline/{name}"]
            ratio = metrics[k] / max(b, 1e-12)
            flag = "  <- worse than the mean action" if ratio >= 1 else ""
            worse += [name] if ratio >= 1 else []
            lines.append(f"{name:<16}{metrics[k]:>14.5f}{b:>18.5f}{ratio:>8.3f}{flag}")
    if "val/arm_mae" in metrics:
        lines.append(f"{'arm (mean)':<16}{metrics['val/arm_mae']:>14.5f}"
                     f"{metrics['val/arm_mae_baseline']:>18.5f}{metrics['val/arm_mae_ratio']:>8.3f}")
    if "val/gripper_acc" in metrics:
        g, gb = metrics["val/gripper_acc"], metrics["val/gripper_acc_baseline"]
        lines.append(f"gripper accuracy: {g:.3f} (mean-action baseline {gb:.3f})"
                     + ("  <- not above the baseline" if g <= gb else ""))
    if "val/token_acc" in metrics:
        lines.append(f"token accuracy:   {metrics['val/token_acc']:.3f}")
    lines.append(f"validation loss:  {metrics['val/loss']:.5f} over {int(metrics['val/samples'])} "
                 f"predicted actions")
    if "val/arm_mae_ratio" in metrics:
        verdict = "below" if metrics["val/arm_mae_ratio"] < 1 else "NOT below"
        lines.append(f"arm error is {verdict} the mean-action baseline "
                     f"(ratio {metrics['val/arm_mae_ratio']:.3f})")
    if worse:
        lines.append(f"worse than the mean action on {len(worse)} dimension(s): "
                     f"{', '.join(worse)} -- the policy has not learnt them yet (train longer, "
                     "or check that they vary in the data)")
    lines.append("MAE: mean absolute error of each predicted action dimension over the chunk, in "
                 "the dataset's units; the mean-action baseline always predicts the training "
                 "mean; ratio = model / baseline (below 1 beats it)")
    return "\n".join(lines)
