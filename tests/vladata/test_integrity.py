"""Missing or corrupt store data is an error naming the file, never zeros.

Each case damages a copy of a freshly converted store the way a disk, a sync tool or a hand edit
would, then checks ``vladata.open``, ``vladata inspect``, the window loader and ``vladata verify``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import zarr
from click.testing import CliRunner

import vladata
from cli.vladata import main
from vladata.errors import StoreError
from vladata.samples.calvin import write_sample
from vladata.sources.calvin import CalvinSource
from vladata.store import manifest
from vladata.store.shard_reader import ArrayReader, MissingChunkError, ShardFormatError

STATIC = "observation.images.rgb_static"
SHARD = f"data/{STATIC}/c/1/0/0/0"
NORM_CHUNK = "data/action.norm/c/0/0"


@pytest.fixture
def store(calvin_store, tmp_path):
    out = tmp_path / "s.vla"
    shutil.copytree(calvin_store, out)
    return out


def _verify(path):
    return CliRunner().invoke(main, ["verify", "--quiet", str(path)])


def _inspect(path):
    return CliRunner().invoke(main, ["inspect", str(path)])


def _load_all(path, workers=0):
    w = vladata.open(path).windows(history=2, chunk=3, split=None, over="episodes")
    loader = w.loader(batch_size=16, num_workers=workers, shuffle=False)
    try:
        return [b[STATIC].clone() for b in loader]
    finally:
        loader.close()


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def test_a_fresh_store_verifies(store):
    assert vladata.verify(store, progress=False) == []
    r = _verify(store)
    assert r.exit_code == 0 and "intact" in r.output
    doc = json.loads((store / "meta/manifest.json").read_text())
    assert doc["format_version"] == 2 and "crc32c" in doc["files"]["meta/stats.json"]
    assert "crc32c" not in doc["files"][SHARD]  # chunk files are checked chunk by chunk


def test_every_chunk_carries_a_crc32c_zarr_checks(store):
    for name in ("action", "action.norm", STATIC):
        a = zarr.open_array(store / "data" / name, mode="r")
        codecs = a.metadata.to_dict()["codecs"]
        chain = codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" \
            else codecs
        assert chain[-1]["name"] == "crc32c", name


def test_deleted_image_shard(store):
    (store / SHARD).unlink()
    with pytest.raises(StoreError, match=SHARD):
        _load_all(store)
    with pytest.raises(StoreError, match=SHARD):
        vladata.open(store).episode(1)
    r = _verify(store)
    assert r.exit_code != 0 and SHARD in r.output and "missing" in r.output


def test_deleted_image_shard_with_loader_workers(store):
    (store / SHARD).unlink()
    with pytest.raises(vladata.VladataError, match=SHARD):
        _load_all(store, workers=2)


def test_deleted_action_norm_chunk(store):
    (store / NORM_CHUNK).unlink()
    with pytest.raises(MissingChunkError, match=NORM_CHUNK):
        vladata.open(store).windows(history=1, chunk=3)[0]
    r = _verify(store)
    assert r.exit_code != 0 and NORM_CHUNK in r.output


def test_stats_refuses_a_missing_chunk_instead_of_counting_zeros(store):
    before = (store / "meta/stats.json").read_bytes()
    (store / "data/action/c/0/0").unlink()
    r = CliRunner().invoke(main, ["stats", str(store)])
    assert r.exit_code != 0 and "data/action/c/0/0" in r.output
    assert (store / "meta/stats.json").read_bytes() == before


def test_stats_rewrite_keeps_the_store_verifiable(store):
    r = CliRunner().invoke(main, ["stats", str(store), "--quantiles", "[0.01,0.05,0.95,0.99]"])
    assert r.exit_code == 0, r.output
    assert manifest.verify(store, progress=False) == []


def test_flipped_byte_in_a_shard(store):
    payload = 100  # inside the first frame's bytes, far from the index at the end
    _flip(store / SHARD, payload)
    r = _verify(store)
    assert r.exit_code != 0 and SHARD in r.output and "CRC32C" in r.output
    with pytest.raises(ShardFormatError, match=f"{SHARD}: chunk 64: CRC32C mismatch"):
        ArrayReader(store / "data" / STATIC, verify=True).read(64, 70)
    with pytest.raises(ValueError, match="checksum"):  # plain zarr-python notices too
        zarr.open_array(store / "data" / STATIC, mode="r")[64]


def test_flipped_byte_in_a_lowdim_chunk_reaches_zarr_too(store):
    _flip(store / "data/action/c/0/0", 40)
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(store / "data/action", mode="r")[0]
    assert "data/action/c/0/0" in _verify(store).output


@pytest.mark.parametrize("rel", ["zarr.json", "meta/stats.json", "meta/episodes.parquet",
                                 f"data/{STATIC}/zarr.json"])
def test_truncated_metadata(store, rel):
    p = store / rel
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(StoreError, match=rel):
        vladata.open(store)
    with pytest.raises(StoreError, match=rel):
        vladata.open(store).windows(history=1, chunk=3).loader(batch_size=4, num_workers=0)
    r = _inspect(store)
    assert r.exit_code != 0 and rel in r.output and "Traceback" not in r.output
    r = _verify(store)
    assert r.exit_code != 0 and rel in r.output


@pytest.mark.parametrize("checksums", [True, False])
def test_shape_disagreeing_with_the_episodes_table(store, checksums):
    """Caught by the manifest's checksum, and without it (a relisted store) by the shape check."""
    p = store / "data/action/zarr.json"
    meta = json.loads(p.read_text())
    meta["shape"][0] -= 5
    p.write_text(json.dumps(meta))
    if not checksums:
        manifest.refresh(store)
    with pytest.raises(StoreError, match="data/action/zarr.json"):
        vladata.open(store)
    assert _inspect(store).exit_code != 0
    r = _verify(store)
    assert r.exit_code != 0 and "data/action/zarr.json" in r.output


def test_episodes_table_disagreeing_with_the_arrays(store):
    p = store / "meta/episodes.parquet"
    eps = pl.read_parquet(p)
    eps.with_columns(pl.col("length") + 1).write_parquet(p)
    manifest.refresh(store)  # only the structure check can tell now
    with pytest.raises(StoreError, match="episodes.parquet"):
        vladata.open(store)


@pytest.mark.parametrize("checksums", [True, False])
def test_edited_stats_json(store, checksums):
    p = store / "meta/stats.json"
    doc = json.loads(p.read_text())
    feat = doc["features"]["action"]
    key = next(k for k in feat if k.startswith("q") and isinstance(feat[k], list))
    feat[key][0] = feat[key][0] + 0.25
    p.write_text(json.dumps(doc, indent=1))
    if not checksums:
        manifest.refresh(store)  # the file list agrees: action.norm vs the statistics tells
    with pytest.raises(StoreError, match="meta/stats.json"):
        vladata.open(store)
    with pytest.raises(StoreError, match="meta/stats.json"):
        vladata.open(store).windows(history=1, chunk=3).loader(batch_size=4, num_workers=0)
    assert "meta/stats.json" in _inspect(store).output
    r = _verify(store)
    assert r.exit_code != 0 and "meta/stats.json" in r.output


def test_stray_chunk_file_is_reported(store):
    shutil.copy(store / SHARD, store / f"data/{STATIC}/c/9")
    r = _verify(store)
    assert r.exit_code != 0 and "not listed" in r.output


def test_reopened_store_after_overwrite_reads_the_new_frames(tmp_path):
    """The per-process file maps notice that a store was rewritten under the same path."""
    out = tmp_path / "s.vla"
    frames = []
    for seed in (1, 2):
        raw = write_sample(tmp_path / f"raw{seed}", train_segments=2, val_segments=1,
                           frames_per_segment=(40, 41), static_size=12, gripper_size=8,
                           depth=False, seed=seed)
        if out.exists():
            shutil.rmtree(out)  # what `convert --overwrite` does first
        vladata.convert(CalvinSource(str(raw)), out, progress=False)
        w = vladata.open(out).windows(history=1, chunk=1, split=None, over="episodes")
        frames.append(w[0][STATIC].copy())
        want = zarr.open_array(out / "data" / STATIC, mode="r")[0]
        np.testing.assert_array_equal(frames[-1][0], want)
    assert not np.array_equal(frames[0], frames[1])


def _downgrade_to_v1(path):
    """Rewrite a store as format version 1 wrote it: no chunk CRC32C, no file list."""
    root = zarr.open_group(path, mode="r+")
    attrs = dict(root.attrs["vlakit"])
    for name, feat in attrs["features"].items():
        old = root[f"data/{name}"]
        data, a = old[:], dict(old.attrs)
        meta = old.metadata.to_dict()
        st = feat["storage"]
        kw = {"compressors": None}
        if st["codec"] == "lz4":
            kw["compressors"] = [zarr.codecs.BloscCodec(cname="lz4", clevel=5,
                                                        shuffle=zarr.codecs.BloscShuffle.noshuffle)]
        if st["shard_frames"]:
            chunks = (1, *old.shape[1:])
            shards = (st["shard_frames"], *old.shape[1:])
        else:
            chunks, shards = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), None
        dtype = old.dtype if st["codec"] != "jpeg" else zarr.core.dtype.VariableLengthBytes()
        new = root["data"].create_array(name, shape=old.shape, dtype=dtype, chunks=chunks,
                                        shards=shards, overwrite=True,
                                        fill_value=None if st["codec"] == "jpeg" else 0, **kw)
        new[:] = data
        new.attrs.update(a)
    attrs["format_version"] = 1
    root.attrs["vlakit"] = attrs
    mp = path / "meta/manifest.json"
    doc = json.loads(mp.read_text())
    doc["format_version"] = 1
    doc.pop("files")
    mp.write_text(json.dumps(doc))


def test_version1_stores_stay_readable(store):
    want = _load_all(store)
    _downgrade_to_v1(store)
    r = ArrayReader(store / "data" / STATIC)
    assert not r.crc and not r.strict
    ds = vladata.open(store)
    assert ds.info["format_version"] == 1
    got = _load_all(store)
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert manifest.verify(store, progress=False) == []
    assert _inspect(store).exit_code == 0
