import os

import numpy as np
import pytest

from vladata.errors import SourceFormatError, UnsafePickleError
from vladata.safe_pickle import load_pickled_npy


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_plain_dict_with_arrays_loads(tmp_path):
    d = {"language": {"ann": ["open the drawer"], "task": ["open_drawer"],
                      "emb": np.ones((1, 1, 384), np.float32)},
         "info": {"episodes": [], "indx": [(np.int64(3), np.int64(66))]}}
    np.save(tmp_path / "ann.npy", d, allow_pickle=True)
    got = load_pickled_npy(tmp_path / "ann.npy")
    assert got["language"]["ann"] == ["open the drawer"]
    assert got["info"]["indx"] == [(3, 66)]
    np.testing.assert_array_equal(got["language"]["emb"], d["language"]["emb"])


def test_numeric_npy_passes_through(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(load_pickled_npy(tmp_path / "ids.npy"),
                                  np.arange(6).reshape(3, 2))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "evil.npy", np.array({"a": _RunsCode()}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="posix.system|nt.system"):
        load_pickled_npy(tmp_path / "evil.npy")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_truncated_pickle_is_a_format_error(tmp_path):
    np.save(tmp_path / "ann.npy", {"a": list(range(1000))}, allow_pickle=True)
    data = (tmp_path / "ann.npy").read_bytes()
    (tmp_path / "ann.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match="ann.npy"):
        load_pickled_npy(tmp_path / "ann.npy")
