"""The store writer on a small in-memory source: dtypes, resume settings, empty input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

import vladata
from vladata.episode import EpisodeInfo, FeatureSpec
from vladata.errors import SourceFormatError
from vladata.store.writer import convert


@dataclass
class ArraySource:
    """Episodes of given lengths; depth frames in ``depth_dtype``, images in ``image_dtype``."""

    lengths: tuple = (700, 1500, 900)
    depth_dtype: str = "float32"
    image_dtype: str = "uint8"
    fail_episode: int = -1
    name: str = "arrays"
    fps: float = 10.0
    _calls: list = field(default_factory=list)

    def features(self):
        return {"observation.images.cam": FeatureSpec("uint8", (4, 5, 3), kind="image"),
                "observation.depth.cam": FeatureSpec("float32", (4, 5), kind="depth"),
                "action": FeatureSpec("float32", (3,), names=("a", "b", "gripper"))}

    def plan(self):
        return [EpisodeInfo(length=n, source_id=f"ep{i}", split="train" if i else "validation")
                for i, n in enumerate(self.lengths)]

    def read(self, i, lo=0, hi=None):
        if i == self.fail_episode:
            raise RuntimeError("simulated crash")
        hi = self.lengths[i] if hi is None else hi
        t = np.arange(lo, hi, dtype=np.float64)[:, None]
        img = ((t[:, :, None, None] * 7 + i * 31 + np.arange(60).reshape(1, 4, 5, 3)) % 251)
        return {"observation.images.cam": img.astype(self.image_dtype),
                "observation.depth.cam": (np.ones((1, 4, 5)) * t[:, :, None] / 100 + i).astype(
                    self.depth_dtype),
                "action": np.concatenate([np.sin(t / 10 + i), np.cos(t / 7), np.sign(
                    np.sin(t / 30))], axis=1).astype(np.float32)}

    def describe(self):
        return {"gripper": "-1/1"}


def _same(a, b):
    da, db = vladata.open(a), vladata.open(b)
    for name in da.features:
        np.testing.assert_array_equal(da.array(name)[:], db.array(name)[:])


def test_castable_dtypes_are_cast_on_the_direct_shard_path(tmp_path):
    convert(ArraySource(depth_dtype=">f8"), tmp_path / "a.vla", progress=False)
    convert(ArraySource(), tmp_path / "b.vla", progress=False)
    _same(tmp_path / "a.vla", tmp_path / "b.vla")
    assert vladata.open(tmp_path / "a.vla").array("observation.depth.cam").dtype == np.float32


def test_a_dtype_that_cannot_be_cast_is_an_error(tmp_path):
    with pytest.raises(SourceFormatError, match="observation.images.cam.*float64, expected uint8"):
        convert(ArraySource(image_dtype="float64"), tmp_path / "a.vla", progress=False)


def test_resume_with_other_workers_keeps_the_interrupted_parts(tmp_path):
    out = tmp_path / "s.vla"
    with pytest.raises(RuntimeError):
        convert(ArraySource(fail_episode=2), out, workers=1, progress=False)
    s = convert(ArraySource(), out, workers=2, resume=True, progress=False)
    assert s.parts_reused >= 1
    convert(ArraySource(), tmp_path / "ref.vla", progress=False)
    _same(out, tmp_path / "ref.vla")


def test_a_source_without_frames_is_refused_before_writing(tmp_path):
    with pytest.raises(SourceFormatError, match="no frames"):
        convert(ArraySource(lengths=()), tmp_path / "e.vla", progress=False)
    assert not (tmp_path / "e.vla" / "meta" / "manifest.json").exists()
