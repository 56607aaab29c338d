"""vlatrain/checkpoint.py: RNG capture, weights_only loading, keep-last-N and best."""

import random

import numpy as np
import pytest
import torch

from vlatrain.checkpoint import (CheckpointError, CheckpointManager, latest, load, rng_state,
                                 save, set_rng_state, step_checkpoints)


def draws(gen):
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=gen).tolist(), np.random.randn(1).tolist())


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(3)
    np.random.randn(1)  # leave a cached gaussian in numpy's state
    state = rng_state(gen)
    save(tmp_path / "r.pt", {"format_version": 1, "step": 0, "config": {}, "spec": {}, "model": {},
                             "rng": [state]})
    first = draws(gen)
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    set_rng_state(load(tmp_path / "r.pt")["rng"][0], gen)
    assert draws(gen) == first


def payload(i):
    return {"config": {"out": "x", "train": {"steps": 3}}, "spec": {"cameras": ["a"]},
            "model": {"w": torch.full((2,), float(i))}, "loader": {"epoch": 0, "position": i}}


def test_keep_last_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, metric="val/arm_mae")
    for step, value in ((1, 0.5), (2, 0.3), (3, 0.4), (4, None)):
        mgr.save(step, payload(step), None if value is None else {"val/arm_mae": value})
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_0000003.pt", "step_0000004.pt"]
    assert latest(tmp_path).name == "step_0000004.pt"
    best = load(tmp_path / "best.pt")
    assert best["step"] == 2 and best["best"] == {"metric": "val/arm_mae", "value": 0.3, "step": 2}
    assert torch.equal(best["model"]["w"], torch.full((2,), 2.0))
    assert load(tmp_path / "step_0000004.pt")["best"]["step"] == 2
    # a resumed manager keeps the best so far
    again = CheckpointManager(tmp_path, 2, "val/arm_mae", best_value=0.3, best_step=2)
    again.save(5, payload(5), {"val/arm_mae": 0.35})
    assert load(tmp_path / "best.pt")["step"] == 2


class Evil:
    """Any pickled object: weights_only loading must refuse it."""


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"format_version": 99, "step": 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 1"):
        load(tmp_path / "new.pt")
    torch.save({"format_version": 1, "step": 1, "config": Evil()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(tmp_path / "obj.pt")  # weights_only refuses pickled objects
