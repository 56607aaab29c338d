"""What a trained policy expects to see, and the observation history it keeps per environment.

:class:`RuntimeSpec` is the contract between a policy and an environment (or robot): the
observation keys with their shapes and dtypes (named like the store's features), the action's
dimensions, names and units, the chunk, whether an instruction is needed. :meth:`RuntimeSpec.check`
refuses a frame that breaks it, naming every offending key (:class:`ObservationError`).

:class:`History` holds the last ``h`` frames of one environment and cuts the window the window
loader would have cut at the same step (``vladata.windows``): before ``h`` frames exist, the
missing slots repeat the first frame and ``obs_mask`` is false for them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from vladata.errors import ObservationError
from vladata.store.layout import IMAGE_PREFIX, STATE


@dataclass(frozen=True)
class RuntimeSpec:
    """The observation and action contract of a loaded policy (``Policy.spec``).

    ``observations`` maps each key ``act`` needs to ``(shape, dtype)`` of one frame; keys an
    environment offers beyond them are ignored. ``state_dim`` counts the stored state dims the
    observation carries (``state_index`` of them reach the model). Actions come out in the
    dataset's units: ``action_units`` is the stored action feature's description, ``gripper``
    the gripper convention of its actions (``"<closed>/<open>"``, as stored) or None.
    """

    observations: dict[str, tuple[tuple[int, ...], str]]
    cameras: tuple[str, ...]
    image_shapes: dict[str, tuple[int, int, int]]
    state_dim: int
    state_names: tuple[str, ...]
    state_index: tuple[int, ...]
    action_dim: int
    action_names: tuple[str, ...]
    action_units: str
    gripper: str | None
    history: int
    chunk: int
    language: str                     # how the model reads the instruction: embedding/text/none
    instruction_required: bool
    instructions: tuple[str, ...] = ()  # the known ones, when the model needs stored embeddings

    def check(self, obs, where: str = "observation") -> dict[str, np.ndarray]:
        """The frame's arrays this policy reads, or :class:`ObservationError` naming every key that
        is missing or has the wrong type, shape, dtype or non-finite values."""
        if not isinstance(obs, dict):
            raise ObservationError(f"{where}: expected a dict of feature name -> array, got "
                                   f"{type(obs).__name__}")
        problems, out = [], {}
        for key, (shape, dtype) in self.observations.items():
            if key not in obs:
                problems.append(f"{key}: missing (expected {dtype} {shape})")
                continue
            a = obs[key]
            if not isinstance(a, np.ndarray):
                problems.append(f"{key}: expected a numpy array {dtype} {shape}, got "
                                f"{type(a).__name__}")
            elif a.dtype != np.dtype(dtype) or a.shape != shape:
                problems.append(f"{key}: expected {dtype} {shape}, got {a.dtype} {a.shape}")
            elif a.dtype.kind == "f" and not np.isfinite(a).all():
                problems.append(f"{key}: non-finite values {a.tolist()}")
            else:
                out[key] = a.copy()  # an environment may reuse its buffers
        if problems:
            offered = sorted(k for k in obs if k not in self.observations)
            hint = f" (other keys offered: {offered})" if offered else ""
            raise ObservationError(f"{where} does not match the policy's spec: "
                                   + "; ".join(problems) + hint)
        return out

    def describe(self) -> dict:
        """A JSON-able summary (what ``vlatrain`` prints about a policy)."""
        return {"observations": {k: {"shape": list(s), "dtype": d}
                                 for k, (s, d) in self.observations.items()},
                "state_names": list(self.state_names), "action_names": list(self.action_names),
                "action_units": self.action_units, "gripper": self.gripper,
                "history": self.history, "chunk": self.chunk, "language": self.language,
                "instruction_required": self.instruction_required,
                "instructions": list(self.instructions)}


def runtime_spec(spec, model_cfg) -> RuntimeSpec:
    """The :class:`RuntimeSpec` of a policy built for ``spec`` (a ``DataSpec``) with
    ``model_cfg`` (a ``ModelConfig``)."""
    obs = {IMAGE_PREFIX + c: (tuple(spec.image_shapes[c]), "uint8") for c in spec.cameras}
    feats = spec.extra.get("features") or {}
    state_dim, state_names = 0, ()
    if model_cfg.use_state and spec.state_dim:
        norm = spec.observation_normalizer()
        if STATE not in norm.keys:
            raise ObservationError(f"the policy reads {STATE!r} but its checkpoint records no "
                                   f"normalisation of it")
        state_dim = len(next(iter(norm.features[STATE][1].values())))
        obs[STATE] = ((state_dim,), "float32")
        state_names = tuple((feats.get(STATE) or {}).get("names") or ())
    action = feats.get("action") or {}
    grip = (spec.extra.get("normalization") or {}).get("gripper") or {}
    language = model_cfg.language if model_cfg.backbone == "tiny" else "text"
    table = (spec.extra.get("language") or {}).get("instructions") or []
    return RuntimeSpec(
        observations=obs, cameras=tuple(spec.cameras),
        image_shapes={c: tuple(spec.image_shapes[c]) for c in spec.cameras},
        state_dim=state_dim, state_names=state_names, state_index=tuple(spec.state_index),
        action_dim=spec.action_dim, action_names=tuple(spec.action_names),
        action_units=str(action.get("description") or ""),
        gripper=grip.get("source") if grip else None, history=spec.history,
        chunk=spec.chunk, language=language, instruction_required=language != "none",
        instructions=tuple(table) if language == "embedding" else ())


class History:
    """The last ``h`` frames of one environment, as the window loader would cut them."""

    def __init__(self, h: int):
        self.h = int(h)
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.h)

    def clear(self) -> None:
        self.frames.clear()

    def push(self, frame: dict[str, np.ndarray]) -> None:
        self.frames.append(frame)

    def window(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``({key: (h, ...)}, obs_mask (h,))``: padding before the first frame repeats it."""
        if not self.frames:
            raise ObservationError("no observation yet: call reset() and then act(obs)")
        real = list(self.frames)
        pad = self.h - len(real)
        rows = [real[0]] * pad + real
        mask = np.arange(self.h) >= pad
        return {k: np.stack([r[k] for r in rows]) for k in real[0]}, mask
