"""vladata/normalization.py: modes, masks, constant dimensions, gripper conventions, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vladata
from vladata.errors import ConfigError, StatsError
from vladata.normalization import (GripperConvention, Normalization, NormalizationError, denormalize,
                               normalize, parse_convention, parse_normalization)
from vladata.stats import compute_stats

STATS = {
    "q01": np.array([-1.0, 0.0, 2.0, 0.0], np.float32),
    "q99": np.array([1.0, 4.0, 2.0, 1.0], np.float32),      # dim 2 is constant
    "min": np.array([-2.0, -1.0, 2.0, 0.0], np.float32),
    "max": np.array([2.0, 5.0, 2.0, 1.0], np.float32),
    "mean": np.array([0.0, 2.0, 2.0, 0.5]),
    "std": np.array([0.5, 2.0, 0.0, 0.5]),
}


def test_quantile_mode_formula_clip_and_constant_dim():
    x = np.array([[0.0, 1.0, 2.0, 0.3], [5.0, -3.0, 7.0, 1.0], [-1.0, 4.0, -7.0, 0.0]], np.float32)
    y = normalize(x, STATS, Normalization())
    want = np.array([[0.0, -0.5, 0.0, -0.4], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, -1.0]])
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, want, atol=1e-6)
    assert (y[:, 2] == 0).all() and not np.signbit(y[:, 2]).any()   # constant dim -> +0
    back = denormalize(y, STATS, Normalization())
    inside = np.array([[0.0, 1.0, 2.0, 0.3]], np.float32)
    np.testing.assert_allclose(denormalize(normalize(inside, STATS), STATS), inside, atol=1e-6)
    assert (back[:, 2] == 2.0).all()                                 # the constant comes back
    np.testing.assert_allclose(back[1], [1.0, 0.0, 2.0, 1.0])        # clipped to the bounds


def test_other_bounds_minmax_and_meanstd():
    x = np.array([[1.0, 2.0, 2.0, 0.75]], np.float32)
    st = dict(STATS, **{"q05": STATS["q01"] - 1, "q95": STATS["q99"] + 1})
    np.testing.assert_allclose(normalize(x, st, Normalization(low="q05", high="q95")),
                               [[2 * 3 / 4 - 1, 2 * 3 / 6 - 1, 0.0, 2 * 1.75 / 3 - 1]], atol=1e-6)
    np.testing.assert_allclose(normalize(x, STATS, Normalization(mode="minmax")),
                               [[0.5, 2 * 3 / 6 - 1, 0.0, 0.5]], atol=1e-6)
    y = normalize(x, STATS, Normalization(mode="meanstd"))
    np.testing.assert_allclose(y, [[2.0, 0.0, 0.0, 0.5]], atol=1e-6)   # std 0 -> 0, not clipped
    np.testing.assert_allclose(denormalize(y, STATS, Normalization(mode="meanstd")), x, atol=1e-6)
    for mode in ("minmax", "meanstd"):
        n = Normalization(mode=mode)
        np.testing.assert_allclose(denormalize(normalize(x, STATS, n), STATS, n), x, atol=1e-6)


def test_mask_passes_dims_through_and_gripper_conversion():
    norm = Normalization.for_action(dim=4, gripper=GripperConvention(source="0/1", target="-1/1"))
    assert norm.mask == (True, True, True, False) and norm.mode == "quantile"
    x = np.array([[0.0, 1.0, 2.0, 1.0], [0.0, 1.0, 2.0, 0.0], [0, 1, 2, 0.5], [0, 1, 2, 0.51]],
                 np.float32)
    y = normalize(x, STATS, norm)
    assert y[:, 3].tolist() == [1.0, -1.0, -1.0, 1.0]                 # 0.5 (threshold) is closed
    assert denormalize(y, STATS, norm)[:, 3].tolist() == [1.0, 0.0, 0.0, 1.0]
    plain = Normalization.for_action(dim=4)                          # no conversion: unchanged
    assert normalize(x, STATS, plain)[:, 3].tolist() == x[:, 3].tolist()
    # RT-1 style (1 = closed, -1 = open) to OXE 0/1, affine keeps intermediate positions
    rt1 = GripperConvention(source="1/-1", target="0/1", binarize=False)
    n2 = Normalization(mask=(True, True, True, False), gripper=rt1)
    g = np.array([[0, 0, 0, 1.0], [0, 0, 0, -1.0], [0, 0, 0, 0.5]], np.float32)
    assert normalize(g, STATS, n2)[:, 3].tolist() == [0.0, 1.0, 0.25]
    np.testing.assert_allclose(denormalize(normalize(g, STATS, n2), STATS, n2)[:, 3], g[:, 3])
    assert parse_convention("-1/1") == (-1.0, 1.0)


def test_missing_statistic_raises_and_names_it():
    x = np.zeros((2, 4), np.float32)
    for norm, missing in [(Normalization(), "q99"), (Normalization(mode="meanstd"), "std"),
                          (Normalization(low="q05", high="q95"), "q05")]:
        st = {k: v for k, v in STATS.items() if k != missing}
        with pytest.raises(StatsError, match=missing):
            normalize(x, st, norm)
        with pytest.raises(StatsError, match=missing):
            denormalize(x, st, norm)


def test_bad_statistics_and_shapes_raise():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(StatsError, match="not finite"):
        normalize(x, dict(STATS, q01=np.array([0.0, np.nan, 0, 0])), Normalization())
    with pytest.raises(StatsError, match="3 dimensions"):
        normalize(np.zeros((2, 3)), STATS, Normalization())
    with pytest.raises(StatsError, match="corrupt"):
        normalize(x, dict(STATS, q01=STATS["q99"] + 1), Normalization())
    with pytest.raises(StatsError, match="mask has 3"):
        normalize(x, STATS, Normalization(mask=(True, True, False)))


def test_invalid_settings_list_every_problem():
    with pytest.raises(NormalizationError) as ei:
        Normalization(mode="zscore", low="p1", mask=(True, "no"))
    assert len(ei.value.errors) == 3 and isinstance(ei.value, (ConfigError, ValueError))
    with pytest.raises(NormalizationError, match="normalised by the mask"):
        Normalization(mask=(True, True), gripper=GripperConvention())
    with pytest.raises(NormalizationError, match="outside"):
        Normalization(mask=(True, False), gripper=GripperConvention(dim=2))
    with pytest.raises(NormalizationError, match="needs a mask"):
        Normalization(gripper=GripperConvention())
    with pytest.raises(NormalizationError, match="closed"):
        GripperConvention(source="open/closed")
    with pytest.raises(NormalizationError, match="different"):
        GripperConvention(target="1/1")
    with pytest.raises(NormalizationError, match="unknown key 'clip'"):
        Normalization.from_dict({"mode": "quantile", "clip": True})


def test_to_dict_from_dict_round_trip():
    for norm in [Normalization(), Normalization(mode="meanstd", mask=(True, False)),
                 Normalization.for_action(7, gripper=GripperConvention("1/-1", "0/1", -1, False,
                                                                       0.2))]:
        d = norm.to_dict()
        assert Normalization.from_dict(d) == norm
        assert parse_normalization(d) == norm
    assert parse_normalization("minmax") == Normalization(mode="minmax")


def test_torch_tensors_match_numpy():
    x = np.array([[0.3, 1.0, 2.0, 1.0], [-4.0, 3.9, 2.0, 0.0]], np.float32)
    norm = Normalization.for_action(4, gripper=GripperConvention())
    y = normalize(torch.from_numpy(x), STATS, norm)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert np.array_equal(y.numpy(), normalize(x, STATS, norm))
    back = denormalize(y, STATS, norm)
    assert np.array_equal(back.numpy(), denormalize(y.numpy(), STATS, norm))


def test_with_computed_statistics():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_cauchy((1000, 6)), rng.integers(0, 2, (1000, 1))], 1)
    st = compute_stats(lambda: [a])
    y = normalize(a, st, Normalization.for_action(7))
    assert (np.abs(y[:, :6]) <= 1).all() and (y[:, 6] == a[:, 6]).all()
    inside = (a[:, :6] >= st["q01"][:6]) & (a[:, :6] <= st["q99"][:6])
    np.testing.assert_allclose(denormalize(y, st, Normalization.for_action(7))[:, :6][inside],
                               a[:, :6].astype(np.float32)[inside], rtol=1e-5, atol=1e-5)


def test_observation_normalizer_is_one_object_for_loader_checkpoint_and_policy(calvin_store):
    from vladata.normalization import ObservationNormalizer
    ds = vladata.open(calvin_store)
    norm = ObservationNormalizer.from_dataset(ds, ["observation.state"])
    again = ObservationNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm and again.keys == ("observation.state",)
    st = ds.stats["observation.state"]
    std = np.where(st["std"] > 1e-6, st["std"], 1.0)   # a constant dim is only centred
    frame = ds.episode(0, ["observation.state"])["observation.state"][5]        # (D,)
    got = norm.apply({"observation.state": frame, "other": "kept"})
    assert got["other"] == "kept" and got["observation.state"].dtype == np.float32
    assert np.allclose(got["observation.state"], (frame - st["mean"]) / std, atol=1e-6)
    # the loader normalises with the same object: one live frame gives the loader's row
    win = ds.windows(history=2, chunk=3, normalize_observations="meanstd")
    assert win.observation_norm == norm
    loader = win.loader(batch_size=4, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    loader.close()
    rows = [int(e) for e in batch["frame_index"][0]]
    frames = ds.episode(int(batch["episode_index"][0]), ["observation.state"])["observation.state"]
    for slot, f in enumerate(rows):
        live = norm.apply({"observation.state": frames[f]})["observation.state"]
        assert np.array_equal(live, batch["observation.state"][0, slot].numpy())
    assert np.array_equal(win[0]["observation.state"], batch["observation.state"][0].numpy())
    raw = ds.windows(history=2, chunk=3)[0]["observation.state"]
    assert np.array_equal(norm.apply({"observation.state": raw})["observation.state"],
                          batch["observation.state"][0].numpy())


def test_observation_normalizer_refuses_missing_statistics(calvin_store):
    from vladata.normalization import ObservationNormalizer
    ds = vladata.open(calvin_store)
    with pytest.raises(StatsError, match=r"no q01/q99 statistics of 'action.norm'"):
        ObservationNormalizer.from_dataset(ds, ["action.norm"], mode="quantile")
    with pytest.raises(NormalizationError, match="unknown key 'stat'"):
        ObservationNormalizer.from_dict({"features": {"s": {"normalization": {}, "stat": {}}}})


def test_a_given_observation_normalizer_must_fit_the_windows(calvin_store):
    from vladata.errors import StoreError
    from vladata.normalization import ObservationNormalizer
    ds = vladata.open(calvin_store)
    norm = ObservationNormalizer.from_dataset(ds, ["observation.state"])
    assert ds.windows(history=2, chunk=3, normalize_observations=norm).observation_norm is norm
    with pytest.raises(StoreError, match=r"covers \[\], the windows serve the low-dim features "
                                         r"\['observation.state'\]"):
        ds.windows(history=2, chunk=3, normalize_observations=ObservationNormalizer())
    n, st = norm.features["observation.state"]
    short = ObservationNormalizer({"observation.state": (n, {k: v[:3] for k, v in st.items()})})
    with pytest.raises(StoreError, match="statistics of 3 dims"):
        ds.windows(history=2, chunk=3, normalize_observations=short)
