"""The direct reader of the Zarr v3 shard format against arrays written by zarr-python."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest
import zarr

from vladata.episode import FeatureSpec
from vladata.store.layout import create_array, storage_for
from vladata.store.shard_reader import ArrayReader, MissingChunkError, ShardFormatError, StoreReader

IMG = FeatureSpec("uint8", (6, 5, 3), kind="image")
N = 150  # 3 shards of 64: the last one partial


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(1, 255, (n, *IMG.shape), dtype=np.uint8)


@pytest.fixture
def group(tmp_path):
    return zarr.open_group(str(tmp_path / "s.vla"), mode="w").create_group("data")


def _v1_array(group, name, n):
    """An image array as format version 1 wrote it: no chunk CRC32C, all-zero chunks not written."""
    return group.create_array(name, shape=(n, *IMG.shape), dtype="uint8", chunks=(1, *IMG.shape),
                              shards=(64, *IMG.shape), compressors=None, fill_value=0)


@pytest.mark.parametrize("codec", ["raw", "lz4"])
def test_image_rows_equal_zarr(group, codec):
    arr = create_array(group, "img", IMG, N, storage_for(IMG, codec))
    data = _frames(N)
    data[10] = 0            # an all-fill frame: written all the same (write_empty_chunks)
    data[70:75] = 0
    arr[:] = data
    want = np.asarray(arr[:])
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.fast and r.crc and r.shape == (N, *IMG.shape)
    np.testing.assert_array_equal(r.read(0, N), want)
    for lo, hi in [(0, 1), (5, 21), (60, 70), (63, 65), (125, 150), (149, 150), (7, 7)]:
        np.testing.assert_array_equal(r.read(lo, hi), want[lo:hi])
    out = np.full((16, *IMG.shape), 7, np.uint8)
    r.read_into(60, 76, out)
    np.testing.assert_array_equal(out, want[60:76])
    verified = ArrayReader(arr.store_path.store.root / arr.path, verify=True)
    np.testing.assert_array_equal(verified.read(0, N), want)


def test_version1_array_reads_absent_chunks_as_fill(group):
    arr = _v1_array(group, "img", N)
    data = _frames(N)
    data[10] = 0            # an all-fill frame: zarr stores no chunk for it
    arr[:130] = data[:130]  # frames 130.. never written: missing chunks in the last shard
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.fast and not r.crc
    np.testing.assert_array_equal(r.read(0, N), np.asarray(arr[:]))
    assert np.all(r.read(130, 150) == 0) and np.all(r.read(10, 11) == 0)
    arr[:64] = data[:64]
    del group["img"]
    arr = _v1_array(group, "img", N)
    arr[:64] = data[:64]
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.shard_index(1) is None
    np.testing.assert_array_equal(r.read(0, N), np.asarray(arr[:]))


def test_absent_shard_or_chunk_is_an_error(group):
    arr = create_array(group, "img", IMG, N, storage_for(IMG, "raw"))
    arr[:64] = _frames(64)
    root = arr.store_path.store.root / arr.path
    r = ArrayReader(root)
    with pytest.raises(MissingChunkError, match=r"c/1/0/0/0: shard file missing"):
        r.read(60, 70)
    arr[64:140] = _frames(76)  # rows 140..149 never written: empty entries in the last shard
    with pytest.raises(MissingChunkError, match=r"c/2/0/0/0: chunk 12 of the shard is missing"):
        ArrayReader(root).read(130, 150)


def test_jpeg_vlen_items(group):
    spec = FeatureSpec("uint8", (6, 5, 3), kind="image")
    arr = create_array(group, "cam", spec, N, storage_for(spec, "jpeg"))
    items = [bytes([i % 256]) * (i + 1) for i in range(140)]
    arr[:140] = np.array(items, dtype=object)
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.fast and r.vlen and r.attrs["encoding"] == "jpeg"
    got = r.read_items(0, 140)
    assert got == items and ArrayReader(r.path, verify=True).read_items(0, 140) == items
    with pytest.raises(MissingChunkError, match="chunk 12 of the shard is missing"):
        r.read_items(0, N)  # 140.. never written
    assert r.read_items(62, 66) == items[62:66]
    assert list(r.read(3, 5)) == items[3:5]
    with pytest.raises(TypeError):
        r.read_into(0, 2, np.empty((2, 6, 5, 3), np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_lowdim_unsharded_chunks(group, dtype):
    spec = FeatureSpec(dtype, (7,))
    n = 2500
    arr = create_array(group, "x", spec, n, storage_for(spec, "raw"))
    data = (np.random.default_rng(1).normal(size=(n, 7)) * 100).astype(dtype)
    arr[:] = data
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.fast and r.rows_per_chunk == 1024
    for lo, hi in [(0, n), (1000, 1030), (2040, 2500), (0, 1), (2499, 2500)]:
        np.testing.assert_array_equal(r.read(lo, hi), data[lo:hi])
    with pytest.raises(IndexError):
        r.read(2490, 2501)


def test_fallback_for_other_layouts(group):
    # chunks that split an inner dimension and a zstd codec: not the fast path, still correct
    arr = group.create_array("odd", shape=(40, 6, 4), dtype="float32", chunks=(8, 3, 4),
                             compressors=zarr.codecs.ZstdCodec())
    data = np.random.default_rng(2).normal(size=(40, 6, 4)).astype("float32")
    arr[:] = data
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert not r.fast
    np.testing.assert_array_equal(r.read(3, 29), data[3:29])


def test_corrupt_index_and_truncated_shard(group):
    arr = create_array(group, "img", IMG, N, storage_for(IMG, "raw"))
    arr[:] = _frames(N)
    root = arr.store_path.store.root / arr.path
    shard0 = os.path.join(root, "c", "0", "0", "0", "0")
    with open(shard0, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ShardFormatError, match="CRC32C"):
        ArrayReader(root).read(0, 2)
    shard1 = os.path.join(root, "c", "1", "0", "0", "0")
    with open(shard1, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ShardFormatError, match="shorter than its index"):
        ArrayReader(root).read(64, 66)


def test_missing_array_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no such array"):
        ArrayReader(tmp_path / "nothing")


def _child_read(reader, q):
    q.put(reader.read(60, 70).tobytes())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_in_child_processes(group, method):
    arr = create_array(group, "img", IMG, N, storage_for(IMG, "lz4"))
    arr[:] = _frames(N)
    r = ArrayReader(arr.store_path.store.root / arr.path)
    want = r.read(60, 70).tobytes()  # parent opened descriptors and cached indexes first
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(r, q))
    p.start()
    got = q.get(timeout=60)
    p.join(30)
    assert got == want and p.exitcode == 0
    r2 = pickle.loads(pickle.dumps(r))
    assert len(r2._indexes) == 0  # caches stay behind; only path and metadata travel
    assert r2.read(60, 70).tobytes() == want


def test_store_reader_names_arrays(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.vla"), mode="w").create_group("data")
    arr = create_array(g, "observation.images.static", IMG, 10, storage_for(IMG, "raw"))
    arr[:] = _frames(10)
    sr = StoreReader("file://" + str(tmp_path / "s.vla"))
    np.testing.assert_array_equal(sr["observation.images.static"].read(2, 9), np.asarray(arr[2:9]))
    assert sr["observation.images.static"] is sr["observation.images.static"]


def test_multi_row_chunks_sharded_and_compressed(group):
    # not what the writer makes, but the same format: chunks of 8 rows in shards of 64, blosc-lz4
    arr = group.create_array("x", shape=(300, 5), dtype="float32", chunks=(8, 5), shards=(64, 5),
                             compressors=[zarr.codecs.BloscCodec(cname="lz4")])
    data = np.random.default_rng(3).random((300, 5)).astype("float32")
    data[16:24] = 0  # one all-fill chunk
    arr[:290] = data[:290]
    r = ArrayReader(arr.store_path.store.root / arr.path)
    assert r.fast and r.codec == "blosc" and r.rows_per_chunk == 8
    want = np.asarray(arr[:])
    for lo, hi in [(0, 300), (5, 70), (15, 25), (285, 300)]:
        np.testing.assert_array_equal(r.read(lo, hi), want[lo:hi])
    low = group.create_array("y", shape=(3000, 3), dtype="int32", chunks=(1024, 3),
                             compressors=[zarr.codecs.BloscCodec(cname="zstd")])
    low[:] = np.arange(9000).reshape(3000, 3)
    r = ArrayReader(low.store_path.store.root / low.path)
    assert r.fast and not r.sharded
    np.testing.assert_array_equal(r.read(1000, 2100), np.arange(9000).reshape(3000, 3)[1000:2100])


def test_remote_urls_are_read_through_fsspec():
    """A URL is kept as is (read by ranged GETs: tests/vladata/test_remote_store.py); file:// is
    a local path."""
    assert StoreReader("s3://bucket/calvin.vla").root == "s3://bucket/calvin.vla"
    assert StoreReader("file:///data/calvin.vla").root == "/data/calvin.vla"
