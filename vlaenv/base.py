"""The environment interface a closed-loop evaluation talks to.

A policy trained on a vlakit store sees frames named like the store's features, so an environment
speaks the same language:

- ``reset(seed) -> obs`` draws a fresh initial state from ``seed`` (the same seed gives the same
  state; different seeds give different ones);
- ``step(action) -> (obs, reward, done, info)`` applies one control step; ``info["success"]`` is
  the simulator's (or the robot's) own success signal, ``done`` is success or the step limit;
- ``obs`` maps ``observation.images.<camera>`` (uint8 HxWx3) and ``observation.state`` (float32,
  one name per dimension) to one frame, exactly as :attr:`EnvSpec.features` declares them;
- ``instruction`` is the one-sentence language instruction of the current task.

Meta-World (:mod:`vlaenv.metaworld`) is the implementation that runs on a CPU; CALVIN, LIBERO or a
real robot plug in by fulfilling :class:`Env`. Lower-level than ``vladata``'s package root: this
module imports only :mod:`vladata.episode` and :mod:`vladata.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from vladata.episode import FeatureSpec
from vladata.errors import EnvError, UnknownTaskError  # noqa: F401 -- re-exported

#: The end-effector action every environment accepts: deltas of position and orientation, gripper.
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


@dataclass(frozen=True)
class EnvSpec:
    """What an environment produces and accepts.

    ``features`` names the observation features exactly as a store names them; ``action`` is the
    action feature (names, shape); ``gripper`` records the gripper convention of the action's last
    dimension (e.g. ``"+1 = close, -1 = open"``); ``fps`` the control rate; ``max_steps`` the
    episode length limit.
    """

    features: dict[str, FeatureSpec]
    action: FeatureSpec
    gripper: str
    fps: float
    max_steps: int
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def cameras(self) -> tuple[str, ...]:
        prefix = "observation.images."
        return tuple(k[len(prefix):] for k in self.features if k.startswith(prefix))

    def check_obs(self, obs: dict[str, np.ndarray]) -> None:
        """Raise :class:`EnvError` naming every key whose presence, shape or dtype disagrees."""
        problems = []
        for name, f in self.features.items():
            if name not in obs:
                problems.append(f"{name}: missing")
                continue
            a = np.asarray(obs[name])
            if tuple(a.shape) != f.shape or a.dtype != np.dtype(f.dtype):
                problems.append(f"{name}: expected {f.dtype} {f.shape}, got {a.dtype} "
                                f"{tuple(a.shape)}")
        extra = sorted(set(obs) - set(self.features))
        problems += [f"{k}: not a declared feature" for k in extra]
        if problems:
            raise EnvError("observation disagrees with the spec: " + "; ".join(problems))

    def check_action(self, action) -> np.ndarray:
        """``action`` as a float32 vector of the declared shape, or :class:`EnvError`."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action.shape:
            raise EnvError(f"expected an action of shape {self.action.shape} "
                           f"({', '.join(self.action.names or ())}), got {tuple(a.shape)}")
        if not np.all(np.isfinite(a)):
            raise EnvError(f"action has non-finite values: {a.tolist()}")
        return a

    def describe(self) -> dict:
        return {"features": {k: v.to_dict() for k, v in self.features.items()},
                "action": self.action.to_dict(), "gripper": self.gripper, "fps": self.fps,
                "max_steps": self.max_steps, **({"notes": dict(self.notes)} if self.notes else {})}


@runtime_checkable
class Env(Protocol):
    """One task of a simulator (or robot) that a policy acts in; see the module docstring."""

    task: str
    instruction: str
    spec: EnvSpec

    def reset(self, seed: int) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]: ...

    def close(self) -> None: ...


@runtime_checkable
class Policy(Protocol):
    """What a rollout needs of a policy: ``reset`` at each episode start, ``act`` per step.

    ``act`` returns one action of the environment's action shape. A policy that can act for
    several environments at once also offers ``reset_batch(instructions)`` (one per environment,
    at the start of the episodes) and ``act_batch(list_of_obs) -> (B, A)``; the batch keeps its
    size for the whole episode (a finished environment keeps showing its last observation).
    """

    def reset(self, instruction: str) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...
