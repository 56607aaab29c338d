"""The distributed, resumable window sampler: pure index logic."""

from __future__ import annotations

import json

import pytest

from vladata.loading.sampler import SamplerStateError, WindowSampler


@pytest.mark.parametrize("n,world,workers,b", [(1000, 4, 3, 8), (997, 3, 2, 5), (64, 1, 1, 64), (50, 8, 2, 3)])
def test_ranks_and_workers_disjoint_and_complete(n, world, workers, b):
    seen = []
    counts = set()
    for rank in range(world):
        s = WindowSampler(n, b, seed=3, rank=rank, world_size=world, drop_last=True)
        counts.add(s.num_batches)
        ks = [k for w in range(workers) for k in s.worker_batches(w, workers)]
        assert sorted(ks) == list(range(s.num_batches))  # workers partition the rank's batches
        for k in ks:
            assert len(s.batch(k)) == b
            seen.extend(s.batch(k).tolist())
    assert len(counts) == 1  # the same number of batches on every rank
    assert len(seen) == len(set(seen))  # no window twice in an epoch
    nb = counts.pop()
    assert len(seen) == nb * b * world
    assert nb == (n // world) // b
    assert set(seen) <= set(range(n))


def test_without_drop_last_every_window_is_seen():
    n, world, b = 103, 4, 10
    seen, counts = [], set()
    for rank in range(world):
        s = WindowSampler(n, b, seed=1, rank=rank, world_size=world, drop_last=False)
        batches = list(s)
        counts.add(len(batches))
        assert all(len(x) == b for x in batches[:-1]) and 0 < len(batches[-1]) <= b
        seen.extend(i for x in batches for i in x)
    assert len(counts) == 1 and set(seen) == set(range(n))
    assert len(seen) == 104  # 103 padded to a multiple of 4 by wrapping around


def test_reshuffles_per_epoch_from_seed():
    a, b = WindowSampler(500, 10, seed=7), WindowSampler(500, 10, seed=7)
    e0 = list(a)
    assert a.epoch == 1 and a.position == 0  # finishing an epoch moves to the next
    e1 = list(a)
    assert e0 != e1 and sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(500))
    b.set_epoch(1)
    assert list(b) == e1
    assert list(WindowSampler(500, 10, seed=8)) != e0
    assert sum(list(WindowSampler(30, 10, shuffle=False)), []) == list(range(30))


def test_resume_mid_epoch_gives_the_same_sequence():
    full = WindowSampler(400, 16, seed=11, rank=1, world_size=2)
    full.set_epoch(2)
    want = list(full)
    part = WindowSampler(400, 16, seed=11, rank=1, world_size=2)
    part.set_epoch(2)
    it = iter(part)
    got = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(part.state_dict()))  # JSON-able
    assert state["epoch"] == 2 and state["position"] == 5
    fresh = WindowSampler(400, 16, seed=11, rank=1, world_size=2)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the usual loop calls set_epoch again: it must not rewind
    assert got + list(fresh) == want
    assert fresh.epoch == 3


def test_worker_batches_start_at_the_position():
    s = WindowSampler(320, 10)
    s.advance(5)
    assert list(s.worker_batches(0, 2)) == list(range(6, 32, 2))
    assert list(s.worker_batches(1, 2)) == list(range(5, 32, 2))


def test_bad_states_and_arguments():
    s = WindowSampler(100, 10, seed=0)
    with pytest.raises(SamplerStateError, match="batch_size: saved 8, here 10"):
        s.load_state_dict({**s.state_dict(), "batch_size": 8})
    with pytest.raises(SamplerStateError, match="outside"):
        s.load_state_dict({**s.state_dict(), "position": 99})
    with pytest.raises(SamplerStateError, match="lacks"):
        s.load_state_dict({"seed": 0})
    with pytest.raises(ValueError, match="rank 2"):
        WindowSampler(100, 10, rank=2, world_size=2)
    with pytest.raises(IndexError):
        s.batch(10)
    assert WindowSampler(5, 10).num_batches == 0 and list(WindowSampler(0, 4, drop_last=False)) == []
