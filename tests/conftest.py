"""Shared fixtures: small CALVIN-layout datasets and stores converted from them."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def calvin_raw(tmp_path_factory):
    """A small CALVIN split root (2 training + 2 validation segments, tiny images)."""
    from vladata.samples.calvin import write_sample
    return write_sample(tmp_path_factory.mktemp("calvin") / "task_D_D", train_segments=2,
                        val_segments=2, frames_per_segment=(70, 110), static_size=24,
                        gripper_size=12, seed=1)


@pytest.fixture(scope="session")
def calvin_store(calvin_raw, tmp_path_factory):
    """``calvin_raw`` converted with default settings (one worker)."""
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    out = tmp_path_factory.mktemp("stores") / "calvin.vla"
    convert(CalvinSource(str(calvin_raw)), out, progress=False)
    return out


def build_codec_stores(tmp_path_factory, name: str, seed: int) -> dict:
    """One small CALVIN sample converted twice: ``{"raw": Dataset, "jpeg": Dataset, "dir": Path}``."""
    import vladata
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    d = tmp_path_factory.mktemp(name)
    raw = write_sample(d / "raw", train_segments=3, val_segments=2, frames_per_segment=(60, 110),
                       static_size=12, gripper_size=8, depth=False, seed=seed)
    out = {"dir": d}
    for codec in ("raw", "jpeg"):
        vladata.convert(CalvinSource(str(raw)), d / f"{codec}.vla", image_codec=codec,
                        progress=False)
        out[codec] = vladata.open(d / f"{codec}.vla")
    return out
