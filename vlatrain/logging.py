"""Run logging on rank 0: ``metrics.jsonl``, TensorBoard events and a progress bar.

``metrics.jsonl`` has one JSON object per line, each with ``step``, ``loss`` (averaged over the
steps since the previous line), the loss parts (``arm``, ``gripper`` or ``ce``), ``lr``,
``grad_norm``, ``samples_per_s`` and ``data_wait`` (the fraction of wall time spent waiting for
the loader); at evaluation steps the same line also carries the ``val/...`` metrics. On resume the file is cut back to the checkpoint's step and
TensorBoard purges the later events, so a resumed run reads as one run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tqdm import tqdm

from vlatrain.errors import RunDirError


def lines_upto(path: Path, step: int) -> tuple[list[str], str | None]:
    """The lines of ``metrics.jsonl`` up to ``step``, and a note if a torn last line was dropped.

    A run killed while writing leaves a partial last line: it is dropped (with the note). Any
    other line that is not a JSON object is damage we did not cause: a :class:`RunDirError`
    naming the file and line.
    """
    lines = path.read_text(errors="replace").splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    keep, note = [], None
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            d = json.loads(ln)
        except ValueError:
            d = None
        if not isinstance(d, dict):
            if i == last:
                note = (f"{path}: dropped its torn last line {i + 1} ({ln[:40]!r}...), left by "
                        "an interrupted run")
                break
            raise RunDirError(f"{path}: line {i + 1} is not a JSON object ({ln[:60]!r}); "
                              "remove or repair that line to resume")
        if d.get("step", 0) <= step:
            keep.append(ln)
    return keep, note


class NullLogger:
    """What ranks other than 0 use: logs nothing."""

    def log(self, step: int, metrics: dict, *, progress: bool = True) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    """Writes ``metrics.jsonl`` and TensorBoard events under ``run_dir``; shows a progress bar."""

    def __init__(self, run_dir: str | Path, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        note = None
        if start_step and self.path.exists():  # resume: drop lines past the checkpoint
            keep, note = lines_upto(self.path, start_step)
            tmp = self.path.with_name(self.path.name + ".tmp")  # a kill now keeps the old file
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        elif not start_step:
            self.path.write_text("")
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress,
                        dynamic_ncols=True, desc="train")
        if note:
            self.message(note)

    def log(self, step: int, metrics: dict, *, progress: bool = True) -> None:
        clean = {k: (float(v) if isinstance(v, float) or hasattr(v, "item") else v)
                 for k, v in metrics.items()}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in clean.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        if progress:
            self.bar.update(step - self.bar.n)
            shown = {k: clean[k] for k in ("loss", "samples_per_s", "data_wait")
                     if clean.get(k) is not None}
            if shown:
                self.bar.set_postfix_str(
                    f"loss {shown.get('loss', 0):.4f} | {shown.get('samples_per_s', 0):.0f} "
                    f"samples/s | data wait {100 * shown.get('data_wait', 0):.1f}%")

    def message(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def run_header(*, device, precision: str, params: tuple[int, int], windows: dict[str, int],
               batches_per_epoch: int, batch_size: int, steps: int, run_dir: str | Path,
               tensorboard: bool) -> str:
    """What ``vlatrain run`` says before step 1: where it runs, how big, where it writes."""
    trainable, total = params
    lines = [f"device     {device} | precision {precision}",
             f"parameters {trainable:,} trainable / {total:,} total",
             "windows    " + " | ".join(f"{k} {v:,}" for k, v in windows.items()),
             f"batches    {batches_per_epoch:,} per epoch of batch {batch_size} "
             f"({steps:,} steps = {steps / max(batches_per_epoch, 1):.1f} epochs)",
             f"run dir    {run_dir}"]
    if tensorboard:
        lines.append(f"tensorboard --logdir {Path(run_dir) / 'tensorboard'}")
    return "\n".join(lines)
