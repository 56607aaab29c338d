"""FAST action tokens: fit by `vladata stats --fast`, round trip, save/load, fallback, windows."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import ConfigError, StatsError, StoreError
from vladata.fast import FAST_SETTINGS, FAST_TOKENIZER, FastTokenizer, fit_store, store_chunks
from vladata.store import manifest

CHUNK = 10


@pytest.fixture(scope="module")
def store(calvin_store, tmp_path_factory):
    """A copy of the CALVIN sample store with a FAST tokenizer fitted through the CLI."""
    path = tmp_path_factory.mktemp("fast") / "calvin.vla"
    shutil.copytree(calvin_store, path)
    r = CliRunner().invoke(cli, ["stats", str(path), "--fast", "--fast-chunk", str(CHUNK),
                                 "--fast-scale", "10", "--fast-vocab", "512"])
    assert r.exit_code == 0, r.output
    return path


def test_fit_records_settings_and_keeps_the_store_intact(store):
    s = json.loads((store / FAST_SETTINGS).read_text())
    assert (s["chunk"], s["action_dim"], s["scale"], s["split"]) == (CHUNK, 7, 10.0, "train")
    assert s["vocab_size"] <= 512 and s["min_token"] < 0 < s["max_token"]
    assert (store / FAST_TOKENIZER).is_file()
    assert not list((store / "meta").glob("*.tmp"))
    assert manifest.verify(store, progress=False) == []   # the new files are listed, checksummed
    ds = vladata.open(store)
    assert s["chunks"] == int(ds.episodes.filter(ds.episodes["split"] == "train")["length"].sum())


@pytest.mark.parametrize("split", ["train", "validation"])
def test_round_trip_within_the_recorded_scale(store, split):
    ds = vladata.open(store)
    tok = FastTokenizer.load(ds)
    chunks = store_chunks(ds, CHUNK, split)
    ids = tok.encode(chunks)
    assert max(map(len, ids)) <= CHUNK * 7
    assert np.mean([len(i) for i in ids]) < CHUNK * 7          # BPE compresses
    dec, ok = tok.decode(ids)
    assert ok.all()
    err = np.abs(dec - chunks).max()
    assert err <= tok.error_bound() + 1e-6
    # per coefficient the error is at most half a quantum
    from vladata.fast import dct
    qerr = np.abs(dct(dec.astype(np.float64), axis=1) - dct(chunks, axis=1)) * tok.settings.scale
    assert qerr.max() <= 0.5 + 1e-4


def test_saved_and_reloaded_tokenizer_gives_identical_tokens(store):
    ds = vladata.open(store)
    chunks = store_chunks(ds, CHUNK, None)
    a = FastTokenizer.load(ds)
    b = FastTokenizer.from_json(json.loads(json.dumps(a.to_json())))  # a checkpoint's copy
    c = pickle.loads(pickle.dumps(a))                                  # a loader worker's copy
    assert a == b == c
    assert a.encode(chunks) == b.encode(chunks) == c.encode(chunks)
    refit = FastTokenizer.fit(store_chunks(ds, CHUNK, "train"), scale=10, vocab_size=512,
                              normalization=a.settings.normalization)
    assert refit.encode(chunks) == a.encode(chunks)            # fitting is deterministic


def test_undecodable_sequences_take_the_fallback(store):
    ds = vladata.open(store)
    tok = FastTokenizer.load(ds)
    chunk = store_chunks(ds, CHUNK, "train")[40]
    ids = tok.encode(chunk)[0]
    short, extra = ids[:-1], ids + ids[-1:]
    dec, ok = tok.decode([ids, short, extra, [tok.vocab_size + 3]], fallback="pad")
    assert ok.tolist() == [True, False, False, False]
    assert np.abs(dec[0] - chunk).max() <= tok.error_bound()
    # pad: the missing (highest-frequency) coefficients are zero, the surplus is cut
    from vladata.fast import dct, idct
    q = np.around(dct(chunk, axis=0) * tok.settings.scale).ravel()
    n_short = sum(tok.token_lengths[short])
    q_short = np.where(np.arange(q.size) < n_short, q, 0).reshape(CHUNK, 7) / tok.settings.scale
    np.testing.assert_allclose(dec[1], idct(q_short, axis=0), atol=1e-5)
    np.testing.assert_allclose(dec[2], dec[0], atol=1e-6)
    assert not dec[3].any()                                    # ids outside the vocabulary
    zeros, ok = tok.decode([short, ids], fallback="zeros")     # FAST+'s behaviour
    assert ok.tolist() == [False, True] and not zeros[0].any()
    with pytest.raises(ValueError, match="fallback"):
        tok.decode([ids], fallback="nearest")


def test_windows_serve_fast_tokens_of_their_chunks(store):
    ds = vladata.open(store)
    tok = FastTokenizer.load(ds)
    win = ds.windows(history=2, chunk=CHUNK, split="train", over="episodes", fast_tokens=True)
    spec = win.sample_spec()
    assert spec["action.fast"] == ((2, CHUNK * 7), np.dtype(np.int64))
    rng = np.random.default_rng(0)
    last = win.ranges.r_first[1] - 1                          # crosses the first episode's end
    for i in [0, 1, last, *rng.integers(0, len(win), 5)]:
        w = win[int(i)]
        ids, mask = w["action.fast"], w["action.fast_mask"]
        for j in range(2):
            seq = tok.encode(w["action"][j])[0]
            assert ids[j][mask[j]].tolist() == seq and mask[j].sum() == len(seq)
            assert mask[j][:len(seq)].all() and not ids[j][~mask[j]].any()
    w = win[int(last)]
    assert not w["action_mask"][-1, 1:].any()                 # past the end: edge padding
    dec, ok = tok.decode(w["action.fast"][-1:], w["action.fast_mask"][-1:])
    assert ok.all() and np.abs(dec[0] - w["action"][-1]).max() <= tok.error_bound()
    batch = next(iter(win.loader(batch_size=4, shuffle=False, num_workers=1)))
    for r in range(4):
        np.testing.assert_array_equal(batch["action.fast"][r].numpy(), win[r]["action.fast"])


def test_errors(store, calvin_store, tmp_path):
    ds = vladata.open(store)
    with pytest.raises(StatsError, match="--fast-chunk 5"):
        ds.windows(chunk=5, fast_tokens=True)
    with pytest.raises(StatsError, match="vladata stats .* --fast"):
        vladata.open(calvin_store).windows(chunk=CHUNK, fast_tokens=True)
    with pytest.raises(ConfigError, match="vocab"):
        FastTokenizer.fit(store_chunks(ds, CHUNK, "train"), scale=1000, vocab_size=64)
    with pytest.raises(ValueError, match="fitted on"):
        FastTokenizer.load(ds).encode(np.zeros((3, 7)))
    r = CliRunner().invoke(cli, ["stats", str(store), "--fast-scale", "5"])
    assert r.exit_code != 0 and "--fast" in r.output


def test_stale_statistics_are_refused_and_stats_refits(store, tmp_path):
    path = tmp_path / "s.vla"
    shutil.copytree(store, path)
    settings = json.loads((path / FAST_SETTINGS).read_text())
    settings["normalization"] = "0" * 16                       # fitted under other statistics
    (path / FAST_SETTINGS).write_text(json.dumps(settings))
    manifest.refresh(path)
    with pytest.raises(StatsError, match="other action statistics"):
        FastTokenizer.load(vladata.open(path))
    r = CliRunner().invoke(cli, ["stats", str(path)])          # refits with the recorded settings
    assert r.exit_code == 0, r.output
    tok = FastTokenizer.load(vladata.open(path))
    assert tok.settings.chunk == CHUNK and tok.settings.scale == 10.0
    with pytest.raises((StoreError, StatsError)):
        fit_store(tmp_path / "nowhere.vla")


def test_convert_can_fit_fast(calvin_raw, tmp_path):
    out = tmp_path / "c.vla"
    r = CliRunner().invoke(cli, ["convert", "calvin", str(calvin_raw), str(out),
                                 "--fast-chunk", "5"])
    assert r.exit_code == 0, r.output
    tok = FastTokenizer.load(vladata.open(out))
    assert tok.settings.chunk == 5 and tok.settings.scale == 10.0
    assert manifest.verify(out, progress=False) == []


def test_an_interrupted_fit_is_refused_until_stats_reruns(store, tmp_path, monkeypatch):
    from vladata.errors import IncompleteStoreError
    path = tmp_path / "s.vla"
    shutil.copytree(store, path)

    def interrupted(root):
        raise KeyboardInterrupt
    monkeypatch.setattr(manifest, "refresh", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_store(path, chunk=CHUNK, scale=20)
    monkeypatch.undo()
    with pytest.raises(IncompleteStoreError, match="vladata stats"):
        vladata.open(path)                           # files and manifest may disagree
    r = CliRunner().invoke(cli, ["stats", str(path)])
    assert r.exit_code == 0, r.output
    assert FastTokenizer.load(vladata.open(path)).settings.scale == 20.0
    assert manifest.verify(path, progress=False) == []
