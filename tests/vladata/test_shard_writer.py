"""Shard files written by vladata.store.shard_writer read back identically through zarr-python."""

import numpy as np
import pytest
import zarr

from vladata.episode import FeatureSpec
from vladata.store import layout
from vladata.store.shard_writer import ShardWriter, can_write


@pytest.mark.parametrize("codec", ["raw", "lz4", "jpeg"])
def test_written_shards_read_back_with_zarr(tmp_path, codec):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    spec = FeatureSpec("uint8", (5, 6, 3), kind="image")
    n = layout.IMAGE_SHARD + 7  # a partial last shard
    arr = layout.create_array(g, "img", spec, n, layout.storage_for(spec, codec))
    assert can_write(arr)
    rng = np.random.default_rng(0)
    if codec == "jpeg":  # any bytes: the store keeps them as they are
        frames = [bytes(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8))
                  for _ in range(n)]
    else:
        frames = rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)
    w = ShardWriter(arr, tmp_path / "s.zarr" / "img")
    w.write(0, frames[:layout.IMAGE_SHARD])
    w.write(layout.IMAGE_SHARD, frames[layout.IMAGE_SHARD:])
    got = zarr.open_group(tmp_path / "s.zarr", mode="r")["img"][:]
    if codec == "jpeg":
        assert list(got) == frames
    else:
        np.testing.assert_array_equal(got, frames)


def test_depth_float32_round_trips(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    spec = FeatureSpec("float32", (4, 3), kind="depth")
    arr = layout.create_array(g, "d", spec, 10, layout.storage_for(spec, "raw"))
    d = np.random.default_rng(1).random((10, 4, 3)).astype(np.float32)
    ShardWriter(arr, tmp_path / "s.zarr" / "d").write(0, d)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "s.zarr", mode="r")["d"][:], d)


def test_other_layouts_are_left_to_zarr(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    lowdim = layout.create_array(g, "a", FeatureSpec("float32", (7,)), 10,
                                 layout.storage_for(FeatureSpec("float32", (7,)), "raw"))
    two_per_chunk = g.create_array("b", shape=(128, 4, 4, 3), dtype="uint8",
                                   chunks=(2, 4, 4, 3), shards=(64, 4, 4, 3))
    assert not can_write(lowdim) and not can_write(two_per_chunk)


def test_unaligned_write_is_refused(tmp_path):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    spec = FeatureSpec("uint8", (2, 2, 3), kind="image")
    arr = layout.create_array(g, "img", spec, 128, layout.storage_for(spec, "raw"))
    with pytest.raises(ValueError, match="shard boundary"):
        ShardWriter(arr, tmp_path / "s.zarr" / "img").write(3, np.zeros((4, 2, 2, 3), np.uint8))
