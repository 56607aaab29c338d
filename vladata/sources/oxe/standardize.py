"""Per-dataset standardisation of Open X-Embodiment datasets: a declarative table + transforms.

Every dataset in :data:`OXE_TABLE` maps to the canonical episode as Octo
(``octo/data/oxe/oxe_dataset_configs.py`` + ``oxe_standardization_transforms.py``) and OpenVLA
(``prismatic/vla/datasets/rlds/oxe/{configs,transforms}.py``) define it:

- ``action`` float32 (7,): end-effector delta xyz (3), delta roll-pitch-yaw (3), gripper (1) with
  **1 = open, 0 = closed** (their ``ActionEncoding.EEF_POS``); each dataset's transform below
  says how it is computed from the raw action;
- ``observation.state`` float32 (8,): the proprio parts the entry lists, a ``None`` part being
  one zero pad (OpenVLA's ``state_obs_keys``): POS_EULER = xyz, rpy, pad, gripper; POS_QUAT =
  xyz, quaternion, gripper. The gripper *state* keeps the dataset's own convention;
- ``observation.images.<primary|secondary|wrist>`` and ``observation.depth.<role>`` from the
  camera keys; the language instruction from the step (``language_instruction``) or the
  observation (``natural_language_instruction``; language_table's int32 UTF-8 code points).

``trim = (a, b)`` drops the first ``a`` and last ``b`` steps of every episode, as the reference
transforms do: bridge's first step has an all-zero action (OpenVLA drops it) and the
state-difference relabelling has no action for the last step.

Transforms are functions of the whole (untrimmed) episode, ``steps[key] -> (T, ...)`` with keys
relative to a step (``action/world_vector``), returning ``(T, 7)``; the trim is applied after.
To add a dataset, add an :class:`OxeConfig` (and a transform if none fits) to the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
GRIPPER_CONVENTION = "0/1"  # "<closed>/<open>" (vladata.normalization): 1 = open, 0 = closed
ROLES = ("primary", "secondary", "wrist")


# -- gripper helpers (numpy versions of the Octo/OpenVLA scans) ---------------------------------

def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative gripper commands (+1 close, -1 open, ~0 no change) -> absolute (1 open, 0 closed).

    Thresholds +-0.1; each step holds the last command given. Before the first command the
    gripper is taken to be in the state opposite to that command (open when nothing is ever
    commanded) -- Octo's ``rel2abs_gripper_actions``.
    """
    a = np.asarray(actions, np.float32).reshape(-1)
    th = np.where(a < -0.1, 1, np.where(a > 0.1, -1, 0))  # 1 = opening, -1 = closing
    nz = np.flatnonzero(th)
    state = -th[nz[0]] if len(nz) else 1
    out = np.empty(len(a), np.float32)
    for t, v in enumerate(th):
        state = v if v != 0 else state
        out[t] = state
    return out / 2 + 0.5


def binarize_gripper(actions: np.ndarray, open_at: float = 0.95, close_at: float = 0.05
                     ) -> np.ndarray:
    """Continuous gripper (1 open) -> {0, 1}; values in between take the next decided value.

    A reverse scan starting from the last value (kept as is if it is itself undecided) --
    Octo's ``binarize_gripper_actions``.
    """
    a = np.asarray(actions, np.float32).reshape(-1)
    out = np.empty(len(a), np.float32)
    carry = a[-1] if len(a) else 0.0
    for t in range(len(a) - 1, -1, -1):
        if a[t] > open_at:
            carry = 1.0
        elif a[t] < close_at:
            carry = 0.0
        out[t] = carry
    return out


def state_deltas(state: np.ndarray) -> np.ndarray:
    """``state[t+1, :6] - state[t, :6]``; the last step gets zeros (it is trimmed away)."""
    s = np.asarray(state, np.float32)[:, :6]
    d = np.zeros_like(s)
    d[:-1] = s[1:] - s[:-1]
    return d


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


# -- per-dataset action transforms --------------------------------------------------------------

def rt1_action(steps: dict) -> np.ndarray:
    """RT-1: world_vector, rotation_delta, rel2abs(gripper_closedness_action)."""
    g = rel2abs_gripper(steps["action/gripper_closedness_action"][:, 0])
    return np.concatenate([_col(steps["action/world_vector"]),
                           _col(steps["action/rotation_delta"]), g[:, None]], axis=1)


def bridge_oxe_action(steps: dict) -> np.ndarray:
    """Bridge (OXE copy): state deltas (relabelled), open_gripper (bool, 1 = open)."""
    return np.concatenate([state_deltas(steps["observation/state"]),
                           _col(steps["action/open_gripper"])], axis=1)


def bridge_orig_action(steps: dict) -> np.ndarray:
    """Bridge V2 (Berkeley release): state deltas (relabelled), binarized action[:, 6]."""
    g = binarize_gripper(steps["action"][:, -1])
    return np.concatenate([state_deltas(steps["observation/state"]), g[:, None]], axis=1)


def taco_action(steps: dict) -> np.ndarray:
    """taco_play: rel_actions_world with the gripper (-1 close / +1 open) clipped to [0, 1]."""
    a = _col(steps["action/rel_actions_world"])
    return np.concatenate([a[:, :6], np.clip(a[:, 6:7], 0, 1)], axis=1)


def language_table_action(steps: dict) -> np.ndarray:
    """language_table: the 2-d planar action, zeros for z and rotation, gripper always open."""
    a = _col(steps["action"])
    z = np.zeros_like(a)
    return np.concatenate([a, z, z, np.ones_like(a[:, :1])], axis=1)


def droid_action(steps: dict) -> np.ndarray:
    """DROID: cartesian_velocity (base frame), 1 - gripper_position (recorded 1 = closed)."""
    return np.concatenate([_col(steps["action_dict/cartesian_velocity"])[:, :6],
                           1 - _col(steps["action_dict/gripper_position"])], axis=1)


# -- the table ----------------------------------------------------------------------------------

#: A state part: (key relative to a step, start, stop) slices that key; ``None`` is one zero pad.
StatePart = tuple[str, int, int] | None


@dataclass(frozen=True)
class OxeConfig:
    """How one OXE dataset maps to the canonical episode (see the module docstring)."""

    fps: float
    robot: str
    cameras: dict[str, str]                 # role -> observation image key
    state: tuple[StatePart, ...]
    state_names: tuple[str, ...]
    state_encoding: str                     # pos_euler | pos_quat | joint | none
    action: Callable[[dict], np.ndarray]
    action_encoding: str                    # what the 7-d action means, in words
    language: str | None = None             # step key of the instruction (Text)
    language_codes: bool = False            # the instruction is int32 UTF-8 code points
    language_embedding: str | None = None   # step key of a per-step sentence embedding
    depth: dict[str, str] = field(default_factory=dict)  # role -> observation depth key
    trim: tuple[int, int] = (0, 0)
    alt_language: tuple[str, ...] = ()      # other Text keys kept as episode metadata
    notes: str = ""

    def needed_keys(self) -> set[str]:
        """Step keys the entry reads (checked against features.json up front)."""
        keys = {f"observation/{k}" for k in (*self.cameras.values(), *self.depth.values())}
        keys |= {p[0] for p in self.state if p is not None}
        keys |= {k for k in (self.language, self.language_embedding) if k}
        return keys

    def optional_keys(self) -> dict[str, str]:
        """Step keys read only for an optional feature -> that feature: depth cameras, the
        secondary and wrist cameras, the instruction embedding. A dataset without them is
        converted without those features."""
        out = {f"observation/{k}": f"observation.depth.{role}" for role, k in self.depth.items()}
        out |= {f"observation/{k}": f"observation.images.{role}"
                for role, k in self.cameras.items() if role != "primary"}
        if self.language_embedding:
            out[self.language_embedding] = "the instruction embedding"
        return out

    def without(self, keys: set[str]) -> "OxeConfig":
        """This entry minus the optional features read from ``keys``."""
        def keep(k: str) -> bool:
            return f"observation/{k}" not in keys
        return replace(self, cameras={r: k for r, k in self.cameras.items()
                                      if r == "primary" or keep(k)},
                       depth={r: k for r, k in self.depth.items() if keep(k)},
                       language_embedding=None if self.language_embedding in keys
                       else self.language_embedding)


_EULER = ("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper")

OXE_TABLE: dict[str, OxeConfig] = {
    "fractal20220817_data": OxeConfig(
        fps=3.0, robot="Google Robot (RT-1)",
        cameras={"primary": "image"},
        state=(("observation/base_pose_tool_reached", 0, 7), ("observation/gripper_closed", 0, 1)),
        state_names=("x", "y", "z", "qx", "qy", "qz", "qw", "gripper_closed"),
        state_encoding="pos_quat", action=rt1_action,
        action_encoding="EEF delta xyz + delta rpy (world_vector, rotation_delta) + absolute "
                        "gripper from rel2abs(gripper_closedness_action)",
        language="observation/natural_language_instruction",
        language_embedding="observation/natural_language_embedding"),
    "bridge": OxeConfig(  # the Open X-Embodiment copy of Bridge V2 (OpenVLA's "bridge_oxe")
        fps=5.0, robot="WidowX 250",
        cameras={"primary": "image"},
        state=(("observation/state", 0, 6), None, ("observation/state", 6, 7)),
        state_names=_EULER, state_encoding="pos_euler", action=bridge_oxe_action,
        action_encoding="EEF delta xyz + delta rpy relabelled from state[t+1]-state[t], "
                        "gripper = open_gripper",
        language="observation/natural_language_instruction",
        language_embedding="observation/natural_language_embedding", trim=(1, 1),
        notes="first step (all-zero action) and last step (no next state) dropped, as OpenVLA"),
    "bridge_dataset": OxeConfig(  # Bridge V2 from the Berkeley site (Octo's name)
        fps=5.0, robot="WidowX 250",
        cameras={"primary": "image_0", "secondary": "image_1"},
        state=(("observation/state", 0, 6), None, ("observation/state", 6, 7)),
        state_names=_EULER, state_encoding="pos_euler", action=bridge_orig_action,
        action_encoding="EEF delta xyz + delta rpy relabelled from state[t+1]-state[t], "
                        "gripper = binarize(action[6])",
        language="language_instruction", language_embedding="language_embedding", trim=(1, 1),
        notes="first step (all-zero action) and last step (no next state) dropped, as OpenVLA"),
    "taco_play": OxeConfig(
        fps=15.0, robot="Franka Panda",
        cameras={"primary": "rgb_static", "wrist": "rgb_gripper"},
        depth={"primary": "depth_static", "wrist": "depth_gripper"},
        state=(("observation/robot_obs", 0, 6), None, ("observation/robot_obs", 7, 8)),
        state_names=_EULER, state_encoding="pos_euler", action=taco_action,
        action_encoding="EEF delta xyz + delta rpy (rel_actions_world) + gripper clipped to "
                        "[0, 1]",
        language="observation/natural_language_instruction",
        language_embedding="observation/natural_language_embedding",
        alt_language=("observation/structured_language_instruction",)),
    "language_table": OxeConfig(
        fps=10.0, robot="xArm (planar pusher)",
        cameras={"primary": "rgb"},
        state=(("observation/effector_translation", 0, 2), None, None, None, None, None, None),
        state_names=("x", "y", "pad0", "pad1", "pad2", "pad3", "pad4", "pad5"),
        state_encoding="pos_euler", action=language_table_action,
        action_encoding="planar delta xy, zeros for z and rpy, gripper always 1 (open)",
        language="observation/instruction", language_codes=True),
    "droid": OxeConfig(
        fps=15.0, robot="Franka Panda (DROID)",
        cameras={"primary": "exterior_image_1_left", "secondary": "exterior_image_2_left",
                 "wrist": "wrist_image_left"},
        state=(("observation/cartesian_position", 0, 6), None,
               ("observation/gripper_position", 0, 1)),
        state_names=_EULER, state_encoding="pos_euler", action=droid_action,
        action_encoding="EEF cartesian velocity xyz + rpy in the robot base frame "
                        "(action_dict/cartesian_velocity) + 1 - gripper_position",
        language="language_instruction",
        alt_language=("language_instruction_2", "language_instruction_3"),
        notes="exterior cameras are not randomly swapped (OpenVLA does that at training time)"),
}
OXE_TABLE["bridge_orig"] = OXE_TABLE["bridge_dataset"]  # OpenVLA's name for the same release

#: Language keys tried, in order, for datasets not in the table.
DEFAULT_LANGUAGE = ("language_instruction", "observation/natural_language_instruction")
DEFAULT_EMBEDDING = ("language_embedding", "observation/natural_language_embedding")


def state_vector(cfg: OxeConfig, steps: dict, T: int) -> np.ndarray:
    """The (T, len(cfg.state_names)) proprio vector of an episode."""
    parts = []
    for p in cfg.state:
        if p is None:
            parts.append(np.zeros((T, 1), np.float32))
        else:
            key, a, b = p
            parts.append(_col(steps[key])[:, a:b])
    return np.concatenate(parts, axis=1)


def decode_codes(codes: np.ndarray) -> list[str]:
    """language_table: int32 Unicode code points per step, zero-padded -> strings."""
    out = []
    for row in np.asarray(codes).reshape(len(codes), -1):
        z = np.flatnonzero(row == 0)
        row = row[: z[0]] if len(z) else row
        out.append("".join(map(chr, row.tolist())))
    return out
