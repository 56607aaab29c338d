"""The run directory: what vlatrain may write into, the paths a run records, how it resumes.

A run directory is recognised by vlatrain's own marker, ``<out>/vlatrain-run.json`` (written when
the run starts, before anything else). ``vlatrain run out=DIR``

- creates DIR when it does not exist, or uses it when it is empty;
- reuses a marked run directory that holds no checkpoint yet (a run stopped before its first one:
  its metrics.jsonl and TensorBoard events are replaced);
- refuses a marked one with checkpoints (``--resume`` it, or choose another ``out``), a non-empty
  directory without the marker (never vlatrain's to overwrite), a file, and a directory equal to,
  inside or containing a store the run reads.

A run directory written before the marker existed (config.yaml + checkpoints) is recognised by
``--resume``, which adds the marker. Store and weight paths are made absolute when the run starts
(:func:`absolute_paths`), so the saved config.yaml resumes from any working directory.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from vlatrain import checkpoint
from vlatrain.errors import RunDirError

MARKER = "vlatrain-run.json"
FORMAT = "vlatrain-run"


def is_run(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def check_out(cfg, *, resume: bool) -> None:
    """Raise unless ``cfg.out`` is a directory this run may write into (see the module); writes
    nothing."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out: {out} is a file, not a run directory; choose another out=DIR")
    for store in store_paths(cfg):
        a, b = Path(os.path.abspath(out)), Path(os.path.abspath(store))
        if a == b or b in a.parents or a in b.parents:
            raise RunDirError(f"out: {out} overlaps the store {store} the run reads; choose an "
                              "out=DIR outside every store")
    if resume or not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run(out):
        raise RunDirError(f"out: {out} is not empty and is not a vlatrain run directory (no "
                          f"{MARKER}); vlatrain writes only into a new or empty directory or its "
                          "own runs: choose another out=DIR")
    if checkpoint.latest(out / "checkpoints") is not None:
        raise RunDirError(f"out: {out} already holds a run with checkpoints; continue it with "
                          f"`{resume_command(out)}` or choose another out=DIR")


def create(out: str | Path) -> Path:
    """Make the run directory and mark it; clear what a checkpoint-less earlier attempt logged."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        marked = is_run(out)
        write_atomic(out / MARKER, json.dumps({"format": FORMAT, "version": 1}) + "\n")
    except OSError as e:
        raise RunDirError(f"out: cannot write the run directory {out} ({e.strerror or e})") from None
    if marked and checkpoint.latest(out / "checkpoints") is None:  # an attempt that saved nothing
        for old in (out / "tensorboard").glob("events.out.tfevents.*"):
            old.unlink()
    return out


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary name, then rename it over ``path`` (a kill leaves the old
    file or the new one, never half of one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def store_paths(cfg) -> list[str]:
    """The local store paths the run reads (URLs are not directories we could overlap)."""
    return [p for p, _ in cfg.data.stores() if p and "://" not in p]


def absolute_paths(cfg) -> None:
    """Make ``out``, the store paths and ``model.path`` absolute (relative to the current
    directory), in place, so the saved config.yaml means the same from any directory."""
    def absolute(p):
        return p if p is None or "://" in p else os.path.abspath(os.path.expanduser(p))
    cfg.out = absolute(cfg.out)
    cfg.data.path = absolute(cfg.data.path)
    for entry in cfg.data.mixture or ():
        entry.path = absolute(entry.path)
    cfg.model.path = absolute(cfg.model.path)


def checkpoint_step(out: str | Path) -> int | None:
    """The step of the latest checkpoint in run directory ``out`` (None: there is none)."""
    path = checkpoint.latest(Path(out) / "checkpoints")
    return None if path is None else int(checkpoint.STEP_RE.match(path.name).group(1))


def already_done(cfg) -> str | None:
    """On resume: a message if the run is at or past ``train.steps`` (nothing to train), else None."""
    step = checkpoint_step(cfg.out)
    if step is None or cfg.train.steps > step:
        return None
    return (f"{cfg.out} is already at step {step} (train.steps={cfg.train.steps}): nothing to "
            f"train; continue with `{resume_command(cfg.out)} train.steps=N` for an N > {step}")


def resume_command(out: str | Path) -> str:
    return f"vlatrain run --resume {shlex.quote(os.path.abspath(out))}"


def interrupted_message(out: str | Path) -> str:
    """What to tell a user whose run was interrupted: the exact command to continue it."""
    step = checkpoint_step(out)
    if step is None:
        return (f"interrupted before the first checkpoint: nothing to resume in {out}; start "
                "the same command again (the run directory is reused)")
    return f"interrupted: {out} holds the checkpoint of step {step}; continue with\n  " \
           f"{resume_command(out)}"
