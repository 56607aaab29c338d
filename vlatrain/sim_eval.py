"""Rollouts during training (``eval.rollout``): closed-loop success as an evaluation metric.

At the evaluation steps that :func:`due` selects, the training recipe calls
:func:`rollout_metrics`: the policy's current weights are written as a policy-only checkpoint
(``<out>/rollouts/policy_<step>.pt``: config, spec and weights, no optimiser), rolled out with
``vlatrain.rollout.run`` exactly as ``vlatrain rollout`` would (held-out initial states, the
policy runtime, ``eval.rollout.workers`` processes), then deleted; the report is kept as
``<out>/rollouts/step_<step>.json``. The metrics::

    rollout/success            mean over tasks of the per-task success rate (best_metric-able)
    rollout/success/<task>     each task's success rate
    rollout/episodes_success   successes / episodes over all tasks
    rollout/length             mean episode length (steps)
"""

from __future__ import annotations

import json
from pathlib import Path

from vlatrain import checkpoint, rollout
from vlatrain.config import Config


def due(cfg: Config, step: int) -> bool:
    """Whether the evaluation at ``step`` rolls out (every ``eval.rollout.every`` steps, and
    after the last step)."""
    every = cfg.eval.rollout.every
    return step == cfg.train.steps or bool(every and step % every == 0)


def rollout_metrics(policy, spec, cfg: Config, step: int, out: str | Path, logger=None) -> dict:
    """Roll the current weights of ``policy`` (built for ``spec``) out; see the module doc."""
    r = cfg.eval.rollout
    d = Path(out) / "rollouts"
    path = d / f"policy_{step:07d}.pt"
    checkpoint.save(path, {"format_version": checkpoint.FORMAT_VERSION, "step": step,
                           "config": cfg.to_dict(), "spec": spec.to_dict(),
                           "model": policy.state_dict()})
    size = r.image_size or int(next(iter(spec.image_shapes.values()))[0])
    who = rollout.PolicySpec("checkpoint", checkpoint=str(path), execute=r.execute,
                             ensemble=r.ensemble)
    try:
        report = rollout.run(who, r.tasks, env=rollout.EnvConfig(r.env, size, r.max_steps,
                                                                tuple(spec.cameras)),
                             episodes=r.episodes, seed=r.seed, workers=r.workers, batch=r.batch,
                             progress=False)
    finally:
        path.unlink(missing_ok=True)
        rollout.forget(str(path))
    summary = report.to_dict()
    tmp = d / f"step_{step:07d}.json.tmp"
    tmp.write_text(json.dumps({"step": step, **summary}, indent=1))
    tmp.replace(d / f"step_{step:07d}.json")
    if logger is not None:
        logger.message(f"rollouts at step {step}:\n{report}")
    metrics = {"rollout/success": summary["overall"]["mean_task_success"],
               "rollout/episodes_success": summary["overall"]["success_rate"],
               "rollout/length": float(sum(t.mean_length * t.episodes for t in report.tasks)
                                       / max(report.episodes, 1))}
    metrics.update({f"rollout/success/{t.task}": t.rate for t in report.tasks})
    return metrics
