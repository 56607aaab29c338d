import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/vlatrain/fakes.py

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def calvin_store(tmp_path_factory):
    """A store converted from a tiny CALVIN sample (real layout, small images)."""
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert

    d = tmp_path_factory.mktemp("calvin")
    raw = write_sample(d / "raw", train_segments=2, val_segments=1, frames_per_segment=(40, 60),
                       static_size=32, gripper_size=24, seed=0, depth=False)
    convert(CalvinSource(raw), d / "calvin.vla", progress=False)
    return d / "calvin.vla"


@pytest.fixture(scope="session")
def mw_store(tmp_path_factory):
    """Three scripted Meta-World `reach` episodes (32x32 cameras), the last one validation."""
    pytest.importorskip("metaworld")
    import os
    os.environ.setdefault("MUJOCO_GL", "egl")
    from vladata.sources.metaworld import MetaWorldSource
    from vladata.store.writer import convert
    d = tmp_path_factory.mktemp("mw")
    source = MetaWorldSource(("reach",), episodes_per_task=3, image_size=32, seed=1,
                             val_fraction=0.34, max_steps=120)
    try:
        convert(source, d / "reach.vla", progress=False)
    finally:
        source.close()
    return d / "reach.vla"
