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


def _jpegs(n=3, shape=(24, 40, 3)):
    from vladata.images import encode_jpeg
    rng = np.random.default_rng(0)
    return [encode_jpeg(rng.integers(0, 255, shape, dtype=np.uint8), quality=90)
            for _ in range(n)]


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("damage, says", [
    (lambda b: b[:len(b) // 2], "frame 7.*not a decodable JPEG"),  # header intact, stream cut
    (lambda b: b"", "frame 7.*no JPEG bytes"),
    (lambda b: _jpegs(1, (24, 48, 3))[0], "frame 7.*24x48 does not fit"),
])
def test_encoded_frames_validate_finds_the_same_bad_frame_with_or_without_pixels(keep, damage,
                                                                                  says):
    from vladata.episode import EncodedFrames
    items = _jpegs()
    items[2] = damage(items[2])
    frames = EncodedFrames(items, (24, 40, 3), file="f", episode=1, key="cam", first=5)
    with pytest.raises(SourceFormatError, match=says):
        frames.validate(keep=keep)


def test_encoded_frames_validated_without_pixels_still_decode_to_the_source_pixels():
    from vladata.episode import EncodedFrames
    from vladata.images import decode_jpeg
    items = _jpegs()
    frames = EncodedFrames(items, (24, 40, 3))
    assert frames.validate(keep=False) is None
    np.testing.assert_array_equal(np.asarray(frames), np.stack([decode_jpeg(b) for b in items]))
    assert frames.items == items
