"""vladata/tokenize.py: binning, every id layout, decode error, invalid ids, records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from vladata.errors import ConfigError, StatsError
from vladata.tokenize import ActionTokenizer

TOKENIZERS = [
    ActionTokenizer(),
    ActionTokenizer(bins=256, layout="offset", offset=3),
    ActionTokenizer(bins=100, layout="offset"),
    ActionTokenizer(layout="openvla", vocab_size=32000),
    ActionTokenizer(layout="robovlms", vocab_size=32000, n_special=3),
    ActionTokenizer(layout="openvla", vocab_size=32000, binning="openvla"),
    ActionTokenizer(layout="robovlms", vocab_size=50257, n_special=1, binning="openvla", bins=64),
]


@pytest.mark.parametrize("tok", TOKENIZERS, ids=lambda t: f"{t.layout}-{t.binning}-{t.bins}")
def test_ids_and_bins_round_trip(tok):
    bins = np.arange(tok.bins)
    ids = tok.id_of_bin(bins)
    lo, hi = tok.vocab_range()
    assert ids.dtype == np.int64 and ids.min() == lo and ids.max() == hi
    assert hi - lo + 1 == tok.bins and len(np.unique(ids)) == tok.bins
    assert np.array_equal(tok.bin_of_id(ids), bins)


@pytest.mark.parametrize("tok", TOKENIZERS, ids=lambda t: f"{t.layout}-{t.binning}-{t.bins}")
def test_decode_within_half_a_bin(tok):
    x = np.concatenate([np.linspace(-1, 1, 20001), [-1.0, 1.0, 0.0, -0.0],
                        np.random.default_rng(0).uniform(-1, 1, 5000)]).astype(np.float32)
    ids = tok.encode(x)
    assert ids.dtype == np.int64 and ids.shape == x.shape
    out = tok.decode(ids)
    assert out.dtype == np.float32
    err = np.abs(out.astype(np.float64) - x)
    assert err.max() <= tok.bin_width() / 2 + 1e-7      # + float32 rounding of the centres
    # decode(encode(centre)) is the centre: the binning is consistent with its centres
    c = tok.centres()
    assert np.array_equal(tok.decode(tok.encode(c)), c)


def test_uniform_bin_formula_and_clipping():
    tok = ActionTokenizer()
    assert tok.bin_of([-1.0, -0.9921875, -0.99, 0.0, 0.99, 1.0, 5.0, -5.0]).tolist() == \
        [0, 1, 1, 128, 254, 255, 255, 0]
    assert tok.encode([-1.0, 1.0]).tolist() == [10, 265]
    assert tok.decode([10, 265]).tolist() == [-1 + 1 / 256, 1 - 1 / 256]
    with pytest.raises(ValueError, match="NaN"):
        tok.encode([0.0, np.nan])


def test_openvla_layout_matches_openvla_formula():
    """OpenVLA: token = vocab_size - np.digitize(x, np.linspace(-1, 1, n_bins)); decode takes
    bin_centers[clip(vocab_size - token - 1, 0, n_bins - 2)]."""
    vocab, n = 32000, 256
    tok = ActionTokenizer(layout="openvla", vocab_size=vocab, binning="openvla")
    x = np.random.default_rng(1).uniform(-1.2, 1.2, 10000)
    x[:4] = [-1.0, 1.0, 0.0, 0.9999999]
    edges = np.linspace(-1, 1, n)
    ref_ids = vocab - np.digitize(np.clip(x, -1, 1), edges)
    assert np.array_equal(tok.encode(x), ref_ids)
    centres = (edges[:-1] + edges[1:]) / 2
    ref_vals = centres[np.clip(vocab - ref_ids - 1, 0, n - 2)]
    np.testing.assert_allclose(tok.decode(ref_ids), ref_vals, rtol=0, atol=1e-7)
    assert tok.vocab_range() == (vocab - n, vocab - 1)


def test_robovlms_layout_matches_robovlms_formula():
    """RoboVLMs: token = (vocab_size - n_special - 10) - np.digitize(x, linspace(-1, 1, n))."""
    vocab, special, n = 32000, 3, 256
    tok = ActionTokenizer(layout="robovlms", vocab_size=vocab, n_special=special,
                          binning="openvla")
    x = np.linspace(-1, 1, 999)
    orig = vocab - special - 10
    assert np.array_equal(tok.encode(x), orig - np.digitize(x, np.linspace(-1, 1, n)))
    assert tok.vocab_range() == (orig - n, orig - 1)


def test_invalid_ids_raise():
    for tok in TOKENIZERS:
        lo, hi = tok.vocab_range()
        for bad in ([lo - 1], [hi + 1], [lo, hi, hi + 7]):
            with pytest.raises(ValueError, match="outside"):
                tok.decode(np.array(bad))
        with pytest.raises(ValueError, match="integers"):
            tok.decode(np.array([float(lo)]))


def test_invalid_settings_list_every_problem():
    with pytest.raises(ConfigError) as ei:
        ActionTokenizer(bins=1, layout="rt2", offset=-1, binning="log")
    assert len(ei.value.errors) == 4
    with pytest.raises(ConfigError, match="needs vocab_size"):
        ActionTokenizer(layout="openvla")
    with pytest.raises(ConfigError, match="n_special"):
        ActionTokenizer(layout="robovlms", vocab_size=1000)
    with pytest.raises(ConfigError, match="too small"):
        ActionTokenizer(layout="openvla", vocab_size=100)
    with pytest.raises(ConfigError, match="unknown key"):
        ActionTokenizer.from_dict({"bins": 256, "layout": "offset", "scale": 2})


def test_to_dict_from_dict_and_from_dataset():
    for tok in TOKENIZERS:
        d = tok.to_dict()
        assert ActionTokenizer.from_dict(d) == tok
        ds = SimpleNamespace(info={"tokenizer": d}, path="x.vla")
        assert ActionTokenizer.from_dataset(ds) == tok
    with pytest.raises(StatsError, match="records no action tokenizer"):
        ActionTokenizer.from_dataset(SimpleNamespace(info={}, path="x.vla"))
