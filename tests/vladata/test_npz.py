"""The lean npz reader gives exactly what np.load gives, and flags damage."""

import numpy as np
import pytest

from vladata.sources.npz import CorruptMember, read_npz


def _arrays():
    rng = np.random.default_rng(0)
    return {"img": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
            "f64": rng.standard_normal(7), "f32": rng.standard_normal((4, 5)).astype(np.float32),
            "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
            "scalar": np.float64(3.5), "big_endian": np.arange(5, dtype=">i4")}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_equals_np_load(tmp_path, save):
    p = tmp_path / "f.npz"
    save(p, **_arrays())
    got = read_npz(p, list(_arrays()))
    with np.load(p) as z:
        for k in _arrays():
            assert got[k].dtype == z[k].dtype and got[k].shape == z[k].shape
            np.testing.assert_array_equal(got[k], z[k])


def test_missing_key(tmp_path):
    np.savez_compressed(tmp_path / "f.npz", a=np.zeros(3))
    with pytest.raises(KeyError, match="b"):
        read_npz(tmp_path / "f.npz", ["a", "b"])


def test_truncated_and_corrupt(tmp_path):
    p = tmp_path / "f.npz"
    np.savez_compressed(p, **_arrays())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        read_npz(p, list(_arrays()))
    flipped = bytearray(data)
    flipped[200] ^= 0xFF  # inside the first member's compressed data
    p.write_bytes(bytes(flipped))
    with pytest.raises((CorruptMember, ValueError)):
        read_npz(p, list(_arrays()))
