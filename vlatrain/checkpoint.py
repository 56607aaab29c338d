"""Checkpoints: everything a run needs to continue exactly, in a file ``torch.load(weights_only=True)`` reads.

A run directory holds::

    <out>/checkpoints/step_0000500.pt   the last ``train.keep_last`` step checkpoints
    <out>/checkpoints/best.pt           a copy of the one with the best ``eval.best_metric``
                                        (lowest, or highest for a success rate: ``eval.best_mode``)

Each file is one dict of tensors and plain containers (no pickled objects)::

    format_version   1
    step             optimiser steps done
    config           Config.to_dict() -- how the run was configured (resolved)
    spec             DataSpec.to_dict() -- what the policy was built for, with the observation
                     normalisation it was trained with (``observation_norm``; per store in
                     ``extra["mixture"]`` for a mixture)
    model            the policy's state_dict
    optimizer        AdamW state_dict (the schedule is a pure function of ``step``)
    scaler           GradScaler state_dict ({} when unused)
    loader           the training loader's state_dict (JSON-able: epoch, position, ...)
    rng              list, one per rank: torch, cuda, numpy, python and augmentation RNG states
    best             {"metric": name, "value": float or None, "step": int or None}
    metrics          the last evaluation's metrics (name -> float)
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from vladata.errors import ConfigError
from vlatrain.errors import CheckpointError
from vlatrain.spec import DataSpec

__all__ = ["CheckpointError", "CheckpointManager", "latest", "load", "load_state", "load_weights", "payload",
           "read_spec", "restore", "rng_state", "save", "set_rng_state", "step_checkpoints"]

FORMAT_VERSION = 1
STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def rng_state(gen: torch.Generator | None = None) -> dict:
    """Every RNG this process uses, as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, py_state, py_gauss = random.getstate()
    d = {"torch": torch.get_rng_state(),
         "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)},
         "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                    "gauss": py_gauss},
         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
         "augment": gen.get_state() if gen is not None else None}
    return d


def set_rng_state(d: dict, gen: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(d["torch"])
    n = d["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = d["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if d["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])
    if gen is not None and d.get("augment") is not None:
        gen.set_state(d["augment"])


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (on the CPU) and check its version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- name the file whatever torch raised
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a vlatrain checkpoint of format version "
                              f"{FORMAT_VERSION}")
    missing = [k for k in ("step", "config", "spec", "model") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def load_weights(module: torch.nn.Module, state, path: str | Path, key: str = "model") -> None:
    """``module.load_state_dict(state)``, or a :class:`CheckpointError` naming the file and every
    missing, unexpected or wrong-shaped weight (the first few of each)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: key {key!r} is {type(state).__name__}, not a state dict")
    own = module.state_dict()
    errors = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{key}.{k}: {_shape(state[k])} in the checkpoint, the policy has {tuple(v.shape)}"
              for k, v in own.items() if k in state and _shape(state[k]) != tuple(v.shape)]
    if missing:
        errors.append(f"{len(missing)} weights missing ({', '.join(missing[:5])}{', ...' * (len(missing) > 5)})")
    if unexpected:
        errors.append(f"{len(unexpected)} unexpected weights ({', '.join(unexpected[:5])}"
                      f"{', ...' * (len(unexpected) > 5)})")
    errors += shapes[:5] + ([f"... {len(shapes) - 5} more shapes differ"] if len(shapes) > 5 else [])
    if errors:
        raise CheckpointError(f"{path}: the weights do not fit the policy its config and spec "
                              "build: " + "; ".join(errors))
    load_state(module, state, path, key)


def _shape(v) -> tuple | str:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__


def load_state(obj, state, path: str | Path, key: str) -> None:
    """``obj.load_state_dict(state)`` (an optimizer, scaler, loader ...) naming file and key on
    failure."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: key {key!r} does not fit ({first})") from None


_SPEC_TYPES = {"cameras": str, "action_names": str,
               "gripper_dims": int, "token_ids": int, "bin_centers": float, "state_index": int}


def read_spec(ckpt: dict, path: str | Path) -> DataSpec:
    """The checkpoint's DataSpec, or a :class:`CheckpointError` naming the malformed field."""
    d = ckpt.get("spec")
    where = f"{path}: key 'spec'"
    if not isinstance(d, dict):
        raise CheckpointError(f"{where} is {type(d).__name__}, not a dict")
    try:
        spec = DataSpec.from_dict(d)
        spec.observation_normalizer()  # the recorded observation normalisation must rebuild
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{where} is malformed ({type(e).__name__}: {e})") from None
    bad = [k for k in ("state_dim", "action_dim", "language_dim", "history", "chunk")
           if not (isinstance(getattr(spec, k), int) and getattr(spec, k) >= 0)]
    bad += [k for k, t in _SPEC_TYPES.items()
            if not all(isinstance(x, t) or (t is float and isinstance(x, int))
                       for x in getattr(spec, k))]
    bad += [f"image_shapes[{c!r}]" for c, s in spec.image_shapes.items() if len(s) != 3]
    if set(spec.cameras) != set(spec.image_shapes):
        bad.append("cameras/image_shapes")
    if len(spec.action_names) != spec.action_dim or any(not 0 <= i < spec.action_dim
                                                       for i in spec.gripper_dims):
        bad.append("action_names/gripper_dims")
    if bad:
        raise CheckpointError(f"{where} is malformed: {', '.join(bad)}")
    return spec


def step_checkpoints(directory: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    ckpts = step_checkpoints(directory)
    return ckpts[-1] if ckpts else None


class CheckpointManager:
    """Writes step checkpoints, keeps the last ``keep_last`` and a copy of the best."""

    def __init__(self, directory: str | Path, keep_last: int, metric: str,
                 best_value: float | None = None, best_step: int | None = None,
                 mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.dir = Path(directory)
        self.keep_last, self.metric, self.mode = keep_last, metric, mode
        self.best_value, self.best_step = best_value, best_step

    def best_state(self) -> dict:
        return {"metric": self.metric, "value": self.best_value, "step": self.best_step}

    def is_better(self, metrics: dict | None) -> bool:
        """Whether ``metrics[metric]`` beats the best so far (lower for ``min``, higher for
        ``max``; the first finite value always does)."""
        if not metrics or self.metric not in metrics:
            return False
        v = float(metrics[self.metric])
        if not np.isfinite(v):
            return False
        if self.best_value is None:
            return True
        return v < self.best_value if self.mode == "min" else v > self.best_value

    def save(self, step: int, payload: dict, metrics: dict | None = None) -> Path:
        """Save step ``step``; update best.pt if ``metrics[metric]`` improved; prune old steps."""
        better = self.is_better(metrics)
        if better:
            self.best_value, self.best_step = float(metrics[self.metric]), step
        payload = {**payload, "format_version": FORMAT_VERSION, "step": step,
                   "best": self.best_state(), "metrics": dict(metrics or {})}
        path = save(self.dir / f"step_{step:07d}.pt", payload)
        if better:
            tmp = self.dir / "best.pt.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.dir / "best.pt")
        for old in step_checkpoints(self.dir)[:-self.keep_last]:
            old.unlink()
        return path


def payload(st, spec, rng: list) -> dict:
    """What a checkpoint of the run ``st`` (a ``vlatrain.loop.TrainState``) holds besides
    step/best/metrics; ``rng`` is every rank's :func:`rng_state`.

    No partial loss sums: a checkpoint step always writes its metrics line first, so a resumed
    run's lines average the same steps as the uninterrupted run's.
    """
    return {"config": st.cfg.to_dict(), "spec": spec.to_dict(), "model": st.policy.state_dict(),
            "optimizer": st.optimizer.state_dict(), "scaler": st.scaler.state_dict(),
            "loader": st.loader.state_dict(), "rng": rng}


def restore(st, path: Path) -> dict:
    """Load checkpoint ``path`` into ``st`` (this rank's RNG states included); return its best."""
    ckpt = load(path)
    load_weights(st.policy, ckpt["model"], path)
    for key, obj in (("optimizer", st.optimizer), ("scaler", st.scaler), ("loader", st.loader)):
        load_state(obj, ckpt.get(key), path, key)
    rngs = ckpt["rng"]
    if len(rngs) != st.dist.world_size:
        raise ConfigError([f"{path}: saved by {len(rngs)} processes, resumed by "
                           f"{st.dist.world_size}: resume with the same number of processes"])
    set_rng_state(rngs[st.dist.rank], st.gen)
    st.step = int(ckpt["step"])
    return ckpt.get("best") or {}
