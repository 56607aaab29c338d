"""vladata/stats.py: exact quantiles (bit for bit against numpy), merging, errors, stats.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from vladata.errors import NonFiniteError, StatsError
from vladata.stats import (ImageStatsAccumulator, QuantileRefiner, StatsAccumulator,
                           compute_stats, float_keys, keys_to_floats, locate_nonfinite,
                           quantile_key, rank_plan, stats_from_json, stats_to_json)

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "stats.schema.json"
QUANTILE_LISTS = [(0.01, 0.99), (0.0, 1.0), (0.0, 0.001, 0.05, 0.25, 0.5, 0.75, 0.95, 0.995, 1.0),
                  (1 / 3, 0.7, 0.999999)]


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and \
        a.tobytes() == b.tobytes()


def _chunks(x, size):
    return lambda: (x[i:i + size] for i in range(0, len(x), size))


def _check_against_numpy(x, quantiles, chunk=997):
    """Quantiles equal np.quantile of the float32 data bit for bit, for float and list q."""
    x32 = np.asarray(x).astype(np.float32)
    r = compute_stats(_chunks(x, chunk), quantiles)
    acc = StatsAccumulator(x32.shape[1]).update(x)
    r64 = acc.refiner(quantiles).update(x).result(dtype=np.float64)
    for q in quantiles:
        want32 = np.array([np.quantile(x32[:, d], q) for d in range(x32.shape[1])])
        want64 = np.array([np.quantile(x32[:, d], [q])[0] for d in range(x32.shape[1])])
        assert _same_bits(r[quantile_key(q)], want32), (q, r[quantile_key(q)], want32)
        assert _same_bits(r64[quantile_key(q)], want64), (q, r64[quantile_key(q)], want64)
    assert _same_bits(r["count"], np.full(x32.shape[1], len(x32), np.int64))
    assert np.array_equal(r["min"], x32.min(0)) and np.array_equal(r["max"], x32.max(0))
    # float64 rounding, relative to the data's magnitude (values of 3e38 cancel small ones)
    x64 = x32.astype(np.float64)
    big = np.abs(x64).max(0)
    assert (np.abs(r["mean"] - x64.mean(0)) <= 1e-12 * np.abs(x64.mean(0))
            + 1e-15 * len(x64) * big).all()
    assert (np.abs(r["std"] - x64.std(0)) <= 1e-9 * x64.std(0) + 1e-12 * big).all()
    return r


def test_quantile_key():
    assert [quantile_key(q) for q in (0.01, 0.99, 0.5, 0.995, 0.05, 0.001, 0, 1, 0.07)] == \
        ["q01", "q99", "q50", "q99.5", "q05", "q00.1", "q00", "q100", "q07"]
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError):
            quantile_key(bad)


def test_keys_preserve_order_and_round_trip():
    v = np.array([-np.inf, -3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3e38, np.inf], np.float32)
    k = float_keys(v)
    assert (np.diff(k.astype(np.int64)) > 0).all()   # -0.0 sorts before +0.0
    assert _same_bits(keys_to_floats(k), v)


@pytest.mark.parametrize("quantiles", QUANTILE_LISTS)
def test_adversarial_data_matches_numpy(quantiles):
    rng = np.random.default_rng(7)
    n = 20_000
    cols = [
        rng.standard_cauchy(n),                                       # heavy tails
        np.where(rng.random(n) < 0.5, 0.0, 1.0),                      # atoms at 0 and 1
        np.where(rng.random(n) < 0.9, 0.0, rng.normal(size=n)),       # mostly exact zeros
        np.where(rng.random(n) < 0.5, -0.0, rng.normal(size=n)),      # negative zeros
        np.full(n, 3.25),                                             # constant
        rng.normal(size=n) * 1e-30,                                   # tiny values, subnormals
        rng.pareto(0.5, n) * rng.choice([-1, 1], n),                  # very heavy tails
        np.round(rng.normal(size=n), 1) + 0.0,           # many ties (+ 0.0: no mixed zeros)
    ]
    _check_against_numpy(np.stack(cols, 1), quantiles)


@pytest.mark.parametrize("quantiles", QUANTILE_LISTS)
@pytest.mark.parametrize("values", [[2.5], [-0.0], [0.0], [1.0, -1.0], [-0.0, -0.0],
                                    [0.0, 0.0], [3.0, 3.0], [-0.0] * 7, [-1.0, -0.0, -0.0]])
def test_tiny_inputs_match_numpy_including_sign_of_zero(values, quantiles):
    _check_against_numpy(np.array(values, np.float32)[:, None], quantiles)


def test_random_small_inputs_match_numpy():
    """Fuzz: small arrays from a pool rich in ties, zeros of one sign, extremes and subnormals."""
    rng = np.random.default_rng(2024)
    tiny = np.float32(1e-45)
    for case in range(150):
        zero = -0.0 if case % 2 else 0.0
        pool = np.array([zero, 1.0, -1.0, 0.5, 3e38, -3e38, tiny, -tiny, 1e-30, 7.0], np.float32)
        n = int(rng.integers(1, 40))
        x = np.where(rng.random(n) < 0.7, rng.choice(pool, n),
                     rng.standard_cauchy(n)).astype(np.float32)[:, None]
        qs = tuple(float(q) for q in np.unique(np.concatenate([rng.random(3), [0.0, 1.0]])))
        chunk = int(rng.integers(1, n + 1))
        _check_against_numpy(x, qs, chunk=chunk)


def test_float64_input_is_cast_to_float32_first():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(5000, 2))
    # values a float32 cast rounds differently: halfway points between adjacent float32s
    f = base.astype(np.float32)
    nxt = np.nextafter(f, np.float32(np.inf))
    x = (f.astype(np.float64) + nxt.astype(np.float64)) / 2
    r = _check_against_numpy(x, (0.01, 0.5, 0.99))
    assert r["min"].dtype == np.float32 and r["mean"].dtype == np.float64


def test_mixed_signed_zeros_have_numpy_value():
    """With both zeros present numpy's sign depends on the arrangement; the value is equal."""
    rng = np.random.default_rng(0)
    x = rng.permutation(np.array([-0.0] * 50 + [0.0] * 50 + [1.0] * 10, np.float32))[:, None]
    r = compute_stats(lambda: [x], (0.2, 0.5))
    assert r["q20"][0] == np.quantile(x[:, 0], 0.2) == 0.0
    assert np.signbit(r["min"][0]) and not np.signbit(r["max"][0])   # total order: -0 < +0 < 1


def test_merge_of_parts_equals_whole_including_state_dict_round_trip():
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_cauchy((9000, 3)), np.zeros((1000, 3))]).astype(np.float32)
    x = rng.permutation(x)
    parts = np.array_split(x, [1, 700, 701, 5000, 8000])             # includes a 0-row part
    whole = StatsAccumulator(3).update(x)

    def saved(state):  # through np.savez / np.load like store parts do
        buf = io.BytesIO()
        np.savez(buf, **state)
        buf.seek(0)
        return dict(np.load(buf, allow_pickle=False))

    accs = [StatsAccumulator.from_state_dict(saved(StatsAccumulator(3).update(p).state_dict()))
            for p in parts]
    merged = accs[0]
    for a in accs[1:]:
        merged.merge(a)
    assert np.array_equal(merged.hist, whole.hist) and np.array_equal(merged.count, whole.count)
    qs = (0.0, 0.01, 0.5, 0.99, 1.0)
    template = saved(merged.refiner(qs).state_dict())
    refs = [QuantileRefiner.from_state_dict(template) for _ in parts]
    for r, p in zip(refs, reversed(parts)):                           # another order, other splits
        r.update(p)
    total = QuantileRefiner.from_state_dict(saved(refs[0].state_dict()))
    for r in refs[1:]:
        total.merge(QuantileRefiner.from_state_dict(saved(r.state_dict())))
    got, want = total.result(), whole.refiner(qs).update(x).result()
    for k in want:
        if k in ("mean", "std"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
        else:
            assert _same_bits(got[k], want[k]), k
    for q in qs:
        assert _same_bits(got[quantile_key(q)], np.quantile(x, q, axis=0))


def test_state_memory_is_independent_of_n():
    small = StatsAccumulator(7).update(np.zeros((10, 7), np.float32))
    big = StatsAccumulator(7).update(np.random.default_rng(0).normal(size=(200_000, 7)))
    assert small.nbytes == big.nbytes < 8 * 2**20
    assert big.refiner((0.01, 0.99)).nbytes < 32 * 2**20


def test_nonfinite_reported_with_row_and_dim():
    x = np.zeros((50, 4), np.float32)
    x[17, 2] = np.nan
    x[30, 0] = np.inf
    acc = StatsAccumulator(4).update(np.ones((5, 4)))
    with pytest.raises(NonFiniteError) as ei:
        acc.update(x)
    assert (ei.value.row, ei.value.dim) == (17, 2)
    assert acc.count.tolist() == [5] * 4                  # the failed update left no trace
    err = locate_nonfinite(ei.value, feature="action", episode=12, first_frame=100)
    assert (err.feature, err.episode, err.frame, err.dim) == ("action", 12, 117, 2)
    assert "'action'" in str(err) and "episode 12" in str(err) and "frame 117" in str(err)


def test_empty_feature_and_wrong_input_raise():
    with pytest.raises(StatsError, match="no values"):
        StatsAccumulator(2, name="action").refiner()
    with pytest.raises(StatsError, match="no values|nothing"):
        compute_stats(lambda: iter(()))
    with pytest.raises(StatsError, match=r"shape \(n, 3\)"):
        StatsAccumulator(3).update(np.zeros((4, 2)))
    with pytest.raises(StatsError, match="real numbers"):
        StatsAccumulator(1).update(np.array(["a"]))
    with pytest.raises(StatsError, match="merge"):
        StatsAccumulator(3).merge(StatsAccumulator(2))
    with pytest.raises(StatsError, match="kind"):
        QuantileRefiner.from_state_dict(StatsAccumulator(2).state_dict())


def test_pass2_with_other_data_is_detected():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    acc = StatsAccumulator(2).update(x)
    with pytest.raises(StatsError, match="same data"):
        acc.refiner().update(x[:-1]).result()
    with pytest.raises(StatsError, match="same data"):
        acc.refiner().update(x + 1000).result()
    other = StatsAccumulator(2).update(x + 1).refiner()
    with pytest.raises(StatsError, match="different pass-1"):
        acc.refiner().merge(other)


def test_counts_are_int64_beyond_2_31():
    """rank_plan and merging keep exact int64 counts past 2**31 values (no data needed)."""
    acc = StatsAccumulator(1)
    acc.update(np.array([[1.0], [2.0]], np.float32))
    big = StatsAccumulator.from_state_dict({**acc.state_dict(),
                                            "hist": acc.hist * 2**31, "count": acc.count * 2**31})
    big.merge(acc)
    assert big.count.dtype == np.int64 and int(big.count[0]) == 2**32 + 2
    n = 2**32 + 2
    assert rank_plan(n, 0.5) == (2**31, 2**31 + 1, 0.5)
    ref = big.refiner((0.25, 0.75))
    assert ref.plan["slot_base"].dtype == np.int64


def test_image_stats_exact_and_mergeable():
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    a = ImageStatsAccumulator().update(imgs[:2])
    b = ImageStatsAccumulator.from_state_dict(ImageStatsAccumulator().update(imgs[2:]).state_dict())
    r = a.merge(b).result()
    flat = imgs.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(r["mean"], flat.mean(0), rtol=1e-14)
    np.testing.assert_allclose(r["std"], flat.std(0), rtol=1e-12)
    assert r["count"].tolist() == [120] * 3
    with pytest.raises(StatsError, match="uint8"):
        ImageStatsAccumulator().update(imgs.astype(np.float32))
    with pytest.raises(StatsError):
        ImageStatsAccumulator().result()


def _stats_doc():
    rng = np.random.default_rng(2)
    x = rng.standard_cauchy((500, 7)).astype(np.float32)
    s = compute_stats(lambda: [x], (0.01, 0.5, 0.99, 0.995))
    st = compute_stats(lambda: [x[:, :3] * 1e-7], (0.01, 0.5, 0.99, 0.995))
    img = ImageStatsAccumulator().update(rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8))
    return {"action": s, "observation.state": st}, img.result()


def test_stats_json_round_trips_exactly_and_matches_schema():
    stats, img = _stats_doc()
    doc = stats_to_json(stats, split="train", quantiles=(0.01, 0.5, 0.99, 0.995),
                        extra={"episodes": np.int64(3), "ids": np.arange(2)},
                        images={"observation.images.static": img})
    doc = json.loads(json.dumps(doc))                                  # through text
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    back, meta = stats_from_json(doc)
    assert meta["split"] == "train" and meta["quantiles"] == [0.01, 0.5, 0.99, 0.995]
    assert meta["extra"] == {"episodes": 3, "ids": [0, 1]}
    assert _same_bits(meta["images"]["observation.images.static"]["mean"], img["mean"])
    for f in stats:
        assert sorted(back[f]) == sorted(stats[f])
        for k in stats[f]:
            assert _same_bits(back[f][k], stats[f][k]), (f, k)


def test_stats_json_rejects_bad_documents():
    stats, _ = _stats_doc()
    qs = (0.01, 0.5, 0.99, 0.995)
    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(StatsError, match="split"):
        stats_to_json(stats, split="val", quantiles=qs)
    with pytest.raises(StatsError, match="lack"):
        stats_to_json(stats, split="all", quantiles=(0.01, 0.25))
    bad = {k: dict(v) for k, v in stats.items()}
    bad["action"]["q01"] = bad["action"]["q01"].astype(np.float64) + 1e-12
    with pytest.raises(StatsError, match="representable"):
        stats_to_json(bad, split="all", quantiles=qs)
    doc = stats_to_json(stats, split="all", quantiles=qs)
    for mutate, match in [
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d["features"]["action"].pop("q99"), "keys"),
        (lambda d: d["features"]["action"]["min"].append(0.0), "values"),
        (lambda d: d["features"]["action"]["min"].__setitem__(0, 0.1), "representable"),
        (lambda d: d.update(quantiles=[0.01, 2.0]), "quantile"),
    ]:
        d = json.loads(json.dumps(doc))
        mutate(d)
        with pytest.raises(StatsError, match=match):
            stats_from_json(d)
        if match in ("format_version", "quantile"):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(d, schema)
