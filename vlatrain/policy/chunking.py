"""How a predicted action chunk becomes the action executed at each step.

A policy trained with chunk ``c`` predicts, at every step it is asked to, the next ``c`` actions.
Two execution rules, both per environment and on normalised actions (the gripper as -1/+1):

- :class:`OpenLoop` (``execute=k``): plan, execute the first ``k`` actions of the chunk without
  looking, plan again (``k=1``: re-plan every step; ``k=c``: the whole chunk, as ACT without
  ensembling or Diffusion Policy's action horizon).
- :class:`TemporalEnsemble` (``ensemble=m``): plan at every step and execute, for step ``t``, the
  weighted mean of every prediction made for ``t`` by the chunks still covering it, with weights
  ``exp(-m * i)``, ``i = 0`` the *oldest* prediction (ACT's temporal ensembling, Zhao et al.
  2023: a larger ``m`` follows new observations faster). Gripper values are averaged too; the
  denormalisation binarises them.

A rule says when the policy must plan (:meth:`needs_plan`), takes the chunk it planned
(:meth:`push`, (c, A)) and hands out one action per step (:meth:`pop`).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from vladata.errors import ConfigError


class OpenLoop:
    """Execute the first ``k`` actions of each chunk, then plan again."""

    def __init__(self, k: int, chunk: int):
        if not 1 <= k <= chunk:
            raise ConfigError([f"execute: must be in 1..{chunk} (the policy's chunk), got {k}"])
        self.k, self.chunk = int(k), int(chunk)
        self.queue: deque[np.ndarray] = deque()

    def __repr__(self) -> str:
        return f"execute={self.k}"

    def reset(self) -> None:
        self.queue.clear()

    def needs_plan(self) -> bool:
        return not self.queue

    def push(self, chunk: np.ndarray) -> None:
        self.queue.extend(np.asarray(chunk[:self.k], np.float64))

    def pop(self) -> np.ndarray:
        return self.queue.popleft()


class TemporalEnsemble:
    """ACT's temporal ensembling over every chunk that still covers the current step."""

    def __init__(self, m: float, chunk: int):
        if not (m >= 0 and math.isfinite(m)):
            raise ConfigError([f"ensemble: the weight decay m must be a finite number >= 0, "
                               f"got {m}"])
        self.m, self.chunk = float(m), int(chunk)
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (planned at, (c, A)), oldest 1st
        self.t = 0

    def __repr__(self) -> str:
        return f"ensemble={self.m:g}"

    def reset(self) -> None:
        self.chunks.clear()
        self.t = 0

    def needs_plan(self) -> bool:
        return True

    def push(self, chunk: np.ndarray) -> None:
        self.chunks.append((self.t, np.asarray(chunk, np.float64)))

    def pop(self) -> np.ndarray:
        while self.chunks and self.t - self.chunks[0][0] >= self.chunk:
            self.chunks.popleft()  # no longer covers step t
        if not self.chunks:
            raise RuntimeError("temporal ensembling: no chunk covers this step (push one first)")
        preds = np.stack([c[self.t - t0] for t0, c in self.chunks])  # (n, A), oldest first
        w = np.exp(-self.m * np.arange(len(preds)))
        self.t += 1
        return (w[:, None] * preds).sum(0) / w.sum()


def make_rule(chunk: int, execute: int | None = None, ensemble: float | None = None):
    """The rule ``execute=k`` or ``ensemble=m`` (not both); neither: ``execute=1`` (re-plan at
    every step)."""
    if execute is not None and ensemble is not None:
        raise ConfigError([f"choose one chunk execution rule: execute={execute} or "
                           f"ensemble={ensemble}, not both"])
    if ensemble is not None:
        return TemporalEnsemble(ensemble, chunk)
    return OpenLoop(1 if execute is None else execute, chunk)
