"""The reader boundary tells a decoder's error on bad bytes from a bug in vlakit."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vladata.errors import SourceFormatError
from vladata.sources.boundary import raised_in
from vladata.sources.hdf5_files import open_file


def test_an_error_inside_h5py_is_the_data(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["a"] = np.zeros(3)
    with h5py.File(p, "r") as f:
        with pytest.raises(KeyError) as e:
            f["missing"]
    assert raised_in(e.value, "h5py")
    assert not raised_in(e.value, "rosbags")


def test_an_error_in_our_code_is_a_bug(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(KeyError, match="ours"):  # keeps its class and traceback
        with open_file(p) as f:
            {}["ours"]
    with pytest.raises(SourceFormatError, match="x.h5.*unreadable HDF5 data"):
        with open_file(p) as f:
            f["missing"]
