"""Reused batch slots: a yielded batch is never overwritten while the consumer may hold it.

Slots go round over the loader's whole life, so the first batches of epoch e+1 do not land in the
slots of the last batches of epoch e; and runs of the real trainer log bit-identical losses
across several epochs, whatever the loader worker count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vladata

ROOT = Path(__file__).resolve().parents[3]


def _clone(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _assert_same(batch: dict, copy: dict, where: str) -> None:
    for k, v in copy.items():
        assert torch.equal(batch[k], v), f"{where}: {k} was overwritten while still held"


def _held_across_next(loader, epochs: int) -> list[dict]:
    """Iterate epoch after epoch as the trainer's prefetcher does; check each batch after next()."""
    seen, prev, prev_copy = [], None, None
    for e in range(epochs):
        for i, batch in enumerate(loader):
            if prev is not None:  # the previous batch survived the next() that produced this one
                _assert_same(prev, prev_copy, f"epoch {e}, batch {i}")
            prev, prev_copy = batch, _clone(batch)
            seen.append(prev_copy)
    return seen


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_survive_the_next_batch_across_epochs(calvin_store, workers):
    ds = vladata.open(calvin_store)
    w = ds.windows(history=2, chunk=3, split="train")
    # 7 batches an epoch: an odd count puts epoch e+1's first batch where epoch e's last was
    loader = w.loader(batch_size=max(1, len(w) // 7), num_workers=workers, seed=3, shuffle=True)
    try:
        seen = _held_across_next(loader, epochs=3)
    finally:
        loader.close()
    assert len(seen) == 3 * len(loader)


def test_zero_and_two_workers_give_the_same_batches_over_epochs(calvin_store):
    ds = vladata.open(calvin_store)
    w = ds.windows(history=2, chunk=3, split="train")
    runs = []
    for workers in (0, 2):
        loader = w.loader(batch_size=max(1, len(w) // 5), num_workers=workers, seed=4)
        try:
            runs.append(_held_across_next(loader, epochs=3))
        finally:
            loader.close()
    assert len(runs[0]) == len(runs[1])
    for a, b in zip(*runs):
        _assert_same(a, b, "0 vs 2 workers")


def test_close_releases_the_workers_and_their_queues(calvin_store):
    w = vladata.open(calvin_store).windows(history=2, chunk=3, split="train")
    loader = w.loader(batch_size=8, num_workers=2, seed=0)
    next(iter(loader))
    results, procs = loader._results, list(loader._procs)
    loader.close()
    assert results._closed and not any(p.is_alive() for p in procs)
    assert loader._results is None
    assert len(list(loader)) == len(loader) - 1  # it starts again, at the next batch
    loader.close()


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "cli.vlatrain", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [d["loss"] for d in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in d]


def test_training_runs_are_bit_identical_over_epochs_whatever_the_workers(calvin_store, tmp_path):
    w = vladata.open(calvin_store).windows(history=1, chunk=10, split="train")
    per_epoch = len(w) // 16
    assert per_epoch >= 2
    steps = 3 * per_epoch + 1  # crosses three epoch boundaries
    args = ["run", str(ROOT / "configs" / "calvin.yaml"), f"data.path={calvin_store}",
            "train.threads=1", "data.batch_size=16", "model.width=16", "model.hidden=32",
            "model.layers=1", "model.image_size=24", "log.every=1", "log.progress=false",
            "log.tensorboard=false", "eval.every=0", "optim.warmup_steps=0",
            f"train.steps={steps}", "train.checkpoint_every=1000"]
    runs = {}
    for name, workers in (("a", 0), ("b", 0), ("c", 2)):
        _cli(*args, f"data.num_workers={workers}", f"out={tmp_path / name}")
        runs[name] = _losses(tmp_path / name)
    assert len(runs["a"]) == steps
    assert runs["a"] == runs["b"]  # bit-identical, not approximately equal
    assert runs["a"] == runs["c"]
