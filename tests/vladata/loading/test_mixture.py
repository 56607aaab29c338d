"""Mixtures of stores: weighted draws, per-store normalisation, the loader path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vladata
from vladata.errors import ConfigError
from vladata.loading.mixture import Mixture, MixtureSampler, quotas
from vladata.samples.calvin import write_sample
from vladata.sources.calvin import CalvinSource


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixture")
    out = []
    for k, (segs, size) in enumerate([(2, 10), (4, 10), (2, 14)]):
        raw = write_sample(d / f"raw{k}", train_segments=segs, val_segments=1,
                           frames_per_segment=(50, 80), static_size=size, gripper_size=6,
                           depth=False, seed=10 + k)
        vladata.convert(CalvinSource(str(raw)), d / f"s{k}.vla", progress=False)
        out.append(vladata.open(d / f"s{k}.vla"))
    return out


def test_quotas_are_exact_largest_remainder():
    assert quotas(np.array([0.5, 0.25, 0.25]), 10).tolist() == [5, 3, 2]
    assert quotas(np.array([1 / 3] * 3), 100).sum() == 100
    assert quotas(np.array([0.0, 1.0]), 7).tolist() == [0, 7]


@pytest.mark.parametrize("balance", [False, True])
def test_epoch_shares_follow_the_weights(stores, balance):
    mix = Mixture([(stores[0], 3.0), (stores[1], 1.0)], balance=balance, history=3, chunk=2)
    n0, n1 = mix.sizes
    w = np.array([3.0 * (n0 if balance else 1), 1.0 * (n1 if balance else 1)])
    assert np.allclose(mix.probabilities, w / w.sum())
    s = MixtureSampler(mix, 8, epoch_size=1000, seed=1)
    order = s.epoch_order(0)
    per_store = np.bincount([mix.locate(int(i))[0] for i in order], minlength=2)
    assert per_store.tolist() == quotas(w / w.sum(), 1000).tolist()
    # a store drawn more often than it has windows goes round its permutation: all of it is used
    got0 = {int(i) for i in order if i < n0}
    assert got0 == set(range(n0)) if per_store[0] >= n0 else len(got0) == per_store[0]
    assert not np.array_equal(order, s.epoch_order(1))


def test_windows_are_each_stores_own_windows(stores):
    mix = Mixture([stores[0], stores[1]], weights=[1, 1], history=4, chunk=3)
    parts = [s.windows(history=4, chunk=3, cameras=mix.parts[0].cameras, over="episodes") for s in stores[:2]]
    for i in list(range(0, len(mix), 13)) + [len(mix) - 1]:
        j, w = mix.locate(i)
        got, want = mix[i], parts[j][w]
        assert got["dataset_index"] == j and got["index"] == i
        for k, v in want.items():
            if k == "index":
                continue
            if isinstance(v, str):
                assert got[k] == v
            else:
                np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_each_store_is_normalised_with_its_own_statistics(stores):
    mix = Mixture([stores[0], stores[1]], history=1, chunk=1)
    q = [(s.stats["action"]["q01"], s.stats["action"]["q99"]) for s in stores[:2]]
    assert not np.allclose(q[0][0], q[1][0])  # the two stores really differ
    for i in (0, len(mix) - 1):
        j, _ = mix.locate(i)
        x = mix[i]
        ep, f = int(x["episode_index"]), int(x["frame_index"][0])
        raw = stores[j].episode(ep, keys=["action"])["action"][f]
        lo, hi = q[j]
        want = np.clip(2 * (raw[:6] - lo[:6]) / (hi[:6] - lo[:6]) - 1, -1, 1)
        np.testing.assert_allclose(x["action"][0, 0, :6], want, rtol=1e-5, atol=1e-6)


def test_mixture_loader_ranks_and_resume(stores):
    mix = Mixture({stores[0].path: 2.0, stores[1].path: 1.0}, history=2, chunk=2)
    counts = set()
    seen = []
    for rank in range(2):
        ld = mix.loader(batch_size=6, num_workers=0, rank=rank, world_size=2, seed=4, epoch_size=300)
        batches = [b["index"].clone() for b in ld]
        counts.add(len(batches))
        seen.append(torch.cat(batches))
    assert counts == {300 // 2 // 6}
    full = mix.loader(batch_size=6, num_workers=2, seed=4)
    want = [(b["index"].clone(), b["dataset_index"].clone(), b["action"].clone()) for b in full]
    full.close()
    first = mix.loader(batch_size=6, num_workers=2, seed=4)
    got = []
    for b in first:
        got.append((b["index"].clone(), b["dataset_index"].clone(), b["action"].clone()))
        if len(got) == 3:
            break
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    again = mix.loader(batch_size=6, num_workers=2, seed=4)
    again.load_state_dict(state)
    got += [(b["index"].clone(), b["dataset_index"].clone(), b["action"].clone()) for b in again]
    again.close()
    assert len(got) == len(want)
    assert all(all(torch.equal(x, y) for x, y in zip(a, b)) for a, b in zip(got, want))
    assert set(torch.cat([w[1] for w in want]).tolist()) == {0, 1}


def test_incompatible_stores_and_bad_weights(stores):
    with pytest.raises(ConfigError, match=r"rgb_static is \(2, 14, 14, 3\)"):
        Mixture([stores[0], stores[2]], history=2, chunk=2)
    Mixture([stores[0], stores[2]], history=2, chunk=2, cameras=["rgb_gripper"])  # shared camera is fine
    with pytest.raises(ConfigError, match="2 weights for 1 stores"):
        Mixture([stores[0]], weights=[1, 2])
    with pytest.raises(ConfigError, match="not all 0"):
        Mixture([stores[0], stores[1]], weights=[0, 0])
    with pytest.raises(ConfigError, match="at least one store"):
        Mixture([])


def test_each_store_normalises_its_observations_with_its_own_statistics(stores):
    mix = Mixture([stores[0], stores[1]], history=3, chunk=2, normalize_observations="meanstd")
    raw = Mixture([stores[0], stores[1]], history=3, chunk=2)
    a, b = (m.parts[j].observation_norm for m in (mix,) for j in (0, 1))
    assert a != b and raw.observation_norms == [None, None]
    loader = mix.loader(batch_size=8, seed=1, num_workers=1)
    try:
        batch = next(iter(loader))
    finally:
        loader.close()
    j = batch["dataset_index"].numpy()
    for r in range(len(j)):
        window = raw[int(batch["index"][r])]
        st = stores[j[r]].stats["observation.state"]
        want = (window["observation.state"] - st["mean"]) / np.where(st["std"] > 1e-6, st["std"], 1)
        got = batch["observation.state"][r].numpy()
        assert np.allclose(got, want, atol=1e-5)
        assert np.array_equal(mix[int(batch["index"][r])]["observation.state"], got)
    with pytest.raises(ConfigError, match="a mode name or None for a mixture"):
        Mixture([stores[0], stores[1]], normalize_observations=a)
