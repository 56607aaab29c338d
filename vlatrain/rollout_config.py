"""The ``eval.rollout`` section of the trainer's config: closed-loop evaluation during training.

Kept beside :mod:`vlatrain.config` (which imports it) as :mod:`vlatrain.vlm.vlm_config` is: the
section is checked there with the others; :mod:`vlatrain.sim_eval` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ROLLOUT_ENVS = ("metaworld",)  # as vlatrain.rollout.ENVS (not imported: no simulator here)


@dataclass
class RolloutConfig:
    """Closed-loop evaluation during training (``eval.rollout``, ``vlatrain.sim_eval``): at
    evaluation steps, the policy is rolled out in a simulator as ``vlatrain rollout`` does, and
    the success rate per task and its mean are logged (``rollout/success``: the mean over tasks,
    which ``eval.best_metric`` may name)."""

    env: Optional[str] = None      # metaworld; null: no rollouts
    tasks: str = "mt10"            # mt10, mt50 or a comma list of tasks
    episodes: int = 5              # held-out episodes per task
    every: int = 0                 # steps between rollouts (a multiple of eval.every or
    #                                train.checkpoint_every); 0: after the last step only
    workers: int = 1               # processes, each with its own simulator
    batch: int = 1                 # environments per process acting in lockstep
    seed: int = 0
    max_steps: int = 300
    image_size: Optional[int] = None  # rendered camera size; null: the store's
    execute: Optional[int] = None  # chunk execution rule (vlatrain.policy.chunking)
    ensemble: Optional[float] = None

    def validate(self) -> list[str]:
        errs = [f"{k}: must be >= 1, got {getattr(self, k)}" for k in
                ("episodes", "workers", "batch", "max_steps") if getattr(self, k) < 1]
        if self.every < 0:
            errs.append(f"every: must be >= 0, got {self.every}")
        if self.env not in (None, *ROLLOUT_ENVS):
            errs.append(f"env: expected one of {', '.join(ROLLOUT_ENVS)} or null, "
                        f"got {self.env!r}")
        if self.image_size is not None and self.image_size < 1:
            errs.append(f"image_size: must be >= 1 or null, got {self.image_size}")
        if self.execute is not None and self.ensemble is not None:
            errs.append("execute: choose one chunk execution rule, execute or ensemble")
        return errs
