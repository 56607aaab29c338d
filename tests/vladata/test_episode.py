"""The one frame validator: cast_exact's rules and check_frames (Episode.validate, the writer)."""

from __future__ import annotations

import numpy as np
import pytest

from vladata.episode import Episode, EpisodeInfo, FeatureSpec, cast_exact, check_frames
from vladata.errors import SourceFormatError


@pytest.mark.parametrize("values, dtype", [
    (np.array([0, 255], np.int64), "uint8"),
    (np.array([-3, 2**24], np.int64), "float32"),
    (np.array([True, False]), "float32"),
    (np.array([0, 1], np.int8), "bool"),
    (np.array([1.5, -2.25e30], np.float64), "float32"),  # the store's documented precision
    (np.array([np.nan, np.inf], np.float64), "float32"),  # non-finite: the writer's check
    (np.array([1, 2], ">i4"), "int32"),
])
def test_exact_casts_are_made(values, dtype):
    out = cast_exact(values, dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out.astype(values.dtype), values, rtol=1e-7)


@pytest.mark.parametrize("values, dtype, says", [
    (np.array([[0.2, 0.9]]), "uint8", "floats are not cast to integers"),
    (np.array([[3.0, 4.0]]), "int64", "floats are not cast to integers"),
    (np.array([[0, 256]], np.int64), "uint8", "256"),
    (np.array([[0, -1]], np.int64), "uint64", "-1"),
    (np.array([[2**24 + 1, 0]], np.int64), "float32", "16777217"),
    (np.array([[0, 2]], np.int64), "bool", "not 0 or 1"),
    (np.array([[1e300, 0]]), "float32", "overflows"),
    (np.array([["1.5", "2"]]), "float32", "<U3"),
    (np.array([[None, 1]], object), "float32", "object"),
])
def test_inexact_casts_are_refused_naming_where(values, dtype, says):
    with pytest.raises(SourceFormatError, match=says) as e:
        cast_exact(values, dtype, file="f.npz", episode="ep", key="k", first=10)
    assert e.value.file == "f.npz" and e.value.key == "k" and e.value.frame == 10


def test_a_given_frame_is_kept():
    with pytest.raises(SourceFormatError) as e:
        cast_exact(np.array([300]), "uint8", frame=7)
    assert e.value.frame == 7


FEATS = {"a": FeatureSpec("float32", (2,)), "img": FeatureSpec("uint8", (2, 2, 3), "image")}


def test_check_frames_casts_and_checks_shape():
    frames = {"a": np.ones((3, 2)), "img": np.zeros((3, 2, 2, 3), np.int64)}
    out = check_frames(frames, FEATS, 3)
    assert out["a"].dtype == np.float32 and out["img"].dtype == np.uint8
    with pytest.raises(SourceFormatError, match=r"expected shape \(4, 2\)"):
        check_frames(frames, FEATS, 4)
    with pytest.raises(SourceFormatError, match="missing"):
        check_frames({"a": frames["a"]}, FEATS, 3)


def test_episode_validate_is_check_frames():
    ep = Episode(EpisodeInfo(2, "e0"), {"a": np.ones((2, 2)), "img": np.full((2, 2, 2, 3), 0.5)})
    with pytest.raises(SourceFormatError, match="floats are not cast") as e:
        ep.validate(FEATS, file="x.h5")
    assert e.value.episode == "e0" and e.value.key == "img" and e.value.file == "x.h5"
    ep.frames["img"] = np.zeros((2, 2, 2, 3), np.int16)
    ep.validate(FEATS)
    assert ep.frames["img"].dtype == np.uint8 and ep.frames["a"].dtype == np.float32
