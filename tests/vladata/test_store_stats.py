"""Statistics, normalised and tokenised actions as a converted store holds them (issue 3)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import NonFiniteError
from vladata.normalization import Normalization, denormalize, normalize
from vladata.sources.calvin import CalvinSource, frame_path
from vladata.store.writer import convert


def _train_rows(ds, name):
    eps = ds.episodes.filter(ds.episodes["split"] == "train")
    x = ds.array(name)[:]
    return np.concatenate([x[s:s + n] for s, n in zip(eps["start"], eps["length"])])


def test_stats_are_exact_over_the_training_split(calvin_store):
    ds = vladata.open(calvin_store)
    assert ds.info["stats_split"] == "train"
    for name in ("action", "observation.state", "observation.scene_state", "action.absolute"):
        x = _train_rows(ds, name).astype(np.float32)
        s = ds.stats[name]
        assert s["count"].tolist() == [len(x)] * x.shape[1]
        for q, key in ((0.01, "q01"), (0.99, "q99")):
            want = np.quantile(x, q, axis=0)
            assert s[key].tobytes() == want.astype(np.float32).tobytes(), (name, key)
        np.testing.assert_array_equal(s["min"], x.min(0))
        np.testing.assert_array_equal(s["max"], x.max(0))
        np.testing.assert_allclose(s["mean"], x.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s["std"], x.astype(np.float64).std(0), rtol=1e-7, atol=1e-12)


def test_normalised_and_tokenised_actions_are_stored(calvin_store):
    ds = vladata.open(calvin_store)
    norm = Normalization.from_dict(ds.info["normalization"])
    assert norm.mask == (True,) * 6 + (False,)
    action = ds.array("action")[:]
    stored = ds.array("action.norm")[:]
    np.testing.assert_array_equal(stored, normalize(action, ds.stats["action"], norm))
    assert stored.min() >= -1 and stored.max() <= 1
    assert set(np.unique(stored[:, 6])) <= {-1.0, 1.0}  # gripper: -1 closed, +1 open, not scaled
    tok = vladata.ActionTokenizer.from_dataset(ds)
    tokens = ds.array("action.tokens")[:]
    decoded = tok.decode(tokens)
    half_bin = 1.0 / tok.bins  # bins of width 2/bins on [-1, 1]
    assert np.abs(decoded - stored).max() <= half_bin + 1e-6
    # inside [q01, q99] the raw action comes back within half a bin's worth of its range
    s = ds.stats["action"]
    back = denormalize(decoded, s, norm)
    inside = (action >= s["q01"]) & (action <= s["q99"])
    err = np.abs(back - action)[:, :6][inside[:, :6]]
    width = np.broadcast_to((s["q99"] - s["q01"])[:6] / tok.bins, inside[:, :6].shape)[inside[:, :6]]
    assert np.all(err <= width + 1e-6)


def test_stats_command_rewrites_quantiles_table_and_json(calvin_store, tmp_path):
    store = tmp_path / "s.vla"
    shutil.copytree(calvin_store, store)
    r = CliRunner().invoke(cli, ["stats", str(store), "--quantiles", "[0.01,0.05,0.95,0.99]"])
    assert r.exit_code == 0, r.output
    assert "q05" in r.output and "tcp_pos_x" in r.output and "split: train" in r.output
    ds = vladata.open(store)
    x = _train_rows(ds, "action").astype(np.float32)
    for q, key in ((0.05, "q05"), (0.95, "q95")):
        assert ds.stats["action"][key].tobytes() == np.quantile(x, q, axis=0).astype(
            np.float32).tobytes()
    doc = json.loads((store / "meta/stats.json").read_text())
    assert doc["quantiles"] == [0.01, 0.05, 0.95, 0.99]
    r = CliRunner().invoke(cli, ["stats", str(store), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["features"]["action"]["q99"] == doc["features"]["action"]["q99"]


def test_nan_in_source_is_reported_with_feature_episode_and_frame(calvin_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(calvin_raw, raw)
    s, e = np.load(raw / "validation/ep_start_end_ids.npy")[1]
    f = frame_path(raw / "validation", int(s) + 4)
    d = dict(np.load(f))
    d["robot_obs"][3] = np.nan
    np.savez_compressed(f, **d)
    src = CalvinSource(str(raw))
    n_train = sum(ep.split == "train" for ep in src.plan())
    with pytest.raises(NonFiniteError) as ei:
        convert(src, tmp_path / "o.vla", progress=False)
    msg = str(ei.value)
    assert "'observation.state'" in msg and f"episode {n_train + 1}" in msg and "frame 4" in msg
    assert "dimension 3" in msg
    r = CliRunner().invoke(cli, ["convert", "calvin", str(raw), str(tmp_path / "o2.vla")])
    assert r.exit_code != 0 and "frame 4" in r.output


def test_image_statistics_on_request(calvin_raw, tmp_path):
    out = tmp_path / "img.vla"
    convert(CalvinSource(str(calvin_raw)), out, progress=False, image_stats=True)
    ds = vladata.open(out)
    doc = json.loads((out / "meta/stats.json").read_text())
    img = doc["images"]["observation.images.rgb_static"]
    x = _train_rows(ds, "observation.images.rgb_static").astype(np.float64) / 255.0
    np.testing.assert_allclose(img["mean"], x.reshape(-1, 3).mean(0), rtol=1e-9)
    np.testing.assert_allclose(img["std"], x.reshape(-1, 3).std(0), rtol=1e-7)


@pytest.mark.parametrize("flags,lo,hi", [
    (["--token-layout", "openvla", "--vocab-size", "32000"], 32000 - 256, 31999),
    (["--token-layout", "robovlms", "--vocab-size", "32000", "--n-special", "3"], None, None),
])
def test_token_layout_is_a_recorded_choice(calvin_store, tmp_path, flags, lo, hi):
    store = tmp_path / "s.vla"
    shutil.copytree(calvin_store, store)
    r = CliRunner().invoke(cli, ["stats", str(store), *flags])
    assert r.exit_code == 0, r.output
    ds = vladata.open(store)
    tok = vladata.ActionTokenizer.from_dataset(ds)
    assert tok.layout == flags[1] and tok.vocab_size == 32000
    ids = ds.array("action.tokens")[:]
    vlo, vhi = tok.vocab_range()
    assert vlo <= ids.min() and ids.max() <= vhi
    if lo is not None:
        assert (vlo, vhi) == (lo, hi)
    np.testing.assert_allclose(tok.decode(ids), ds.array("action.norm")[:], atol=1 / tok.bins + 1e-6)
    # a later `vladata stats` without flags keeps the recorded layout
    assert CliRunner().invoke(cli, ["stats", str(store)]).exit_code == 0
    assert vladata.ActionTokenizer.from_dataset(vladata.open(store)) == tok


def test_bad_token_layout_flags_are_refused(calvin_store):
    r = CliRunner().invoke(cli, ["stats", str(calvin_store), "--token-layout", "openvla"])
    assert r.exit_code != 0 and "vocab_size" in r.output
