"""Meta-World scripted demonstrations -> store, exactly what the environment produced."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

import vladata  # noqa: E402
from cli.vladata import main  # noqa: E402
from tests.vladata.sources.conformance import SourceConformance  # noqa: E402
from vlaenv.metaworld_demos import MetaWorldSource, run_expert  # noqa: E402
from vlaenv.metaworld import INSTRUCTIONS, MetaWorldEnv  # noqa: E402

ARGS = ["--tasks", "reach,drawer-close", "--episodes-per-task", "2", "--image-size", "32",
        "--noise-fraction", "0.5", "--val-fraction", "0.5", "--seed", "4", "--workers", "2"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "mw.vla"
    r = CliRunner().invoke(main, ["collect", "metaworld", str(out), *ARGS, "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.output[r.output.index("{"):])


class TestMetaWorldConformance(SourceConformance):
    @pytest.fixture
    def make_source(self):
        return lambda: MetaWorldSource(("reach",), episodes_per_task=2, image_size=16,
                                       noise_fraction=1.0, val_fraction=0.5, progress=False)


def test_store_frames_equal_what_the_env_produced(collected):
    out, summary = collected
    ds = vladata.open(out)
    assert summary["episodes"] == len(ds) == 4 and not summary["skipped"]
    assert ds.episodes["split"].to_list() == ["train", "validation"] * 2
    source = MetaWorldSource(("reach", "drawer-close"), episodes_per_task=2, seed=4,
                             image_size=32, noise_fraction=0.5, progress=False)
    noisy = []
    for i, row in enumerate(ds.episodes.iter_rows(named=True)):
        meta = json.loads(row["metadata"])
        task, k = row["source_id"].split("/")
        seed, is_noisy = source.episode(task, int(k))
        assert (meta["task"], meta["seed"], meta["noisy"]) == (task, seed, is_noisy)
        noisy.append(is_noisy)
        env = MetaWorldEnv(task, image_size=32)
        try:
            want = run_expert(env, seed, is_noisy, source.noise_std)
            env.reset(seed)  # the privileged feature holds the objects and the goal of the scene
            goal, obj = env._env._target_pos, env._env._get_pos_objects()[:3]
        finally:
            env.close()
        assert "observation.environment_state" not in env.spec.features  # never observed
        got = ds.episode(i)
        assert want["success"] and want["length"] == row["length"]
        for name in ("observation.images.corner2", "observation.images.gripperPOV",
                     "observation.state", "observation.environment_state", "action",
                     "action.executed"):
            assert np.array_equal(got[name], want[name]), (i, name)
        env_state = np.asarray(got["observation.environment_state"])
        assert np.allclose(env_state[:, 14:], goal, atol=1e-6)  # the goal never moves
        assert np.allclose(env_state[0, :3], obj, atol=1e-6)
        assert np.array_equal(got["action"], got["action.executed"]) == (not is_noisy)
    assert any(noisy)
    seg = ds.segments
    assert seg["instruction"].to_list() == [INSTRUCTIONS["reach-v3"]] * 2 + \
        [INSTRUCTIONS["drawer-close-v3"]] * 2
    assert (seg["end"] + 1).to_list() == ds.episodes["length"].to_list()
    assert ds.info["source_info"]["gripper"] == "1/-1"
    # the experts relax the gripper at effort 0 while approaching: that is open, not closed
    assert ds.info["normalization"]["gripper"]["threshold"] == 0.3
    raw, norm = ds.array("action")[:, 6], ds.array("action.norm")[:, 6]
    assert (raw == 0).any() and np.all(norm[raw == 0] == 1.0)  # canonical +1 = open
    assert np.array_equal(norm, np.where(raw > 0.3, -1.0, 1.0).astype(np.float32))
    jsonschema = pytest.importorskip("jsonschema")
    schemas = os.path.join(os.path.dirname(__file__), "..", "..", "schemas")
    with open(os.path.join(schemas, "store.schema.json")) as f:
        jsonschema.validate(ds.info, json.load(f))
    assert "action.tokens" in ds.features and "action" in ds.stats


def test_failed_expert_episodes_are_dropped_and_counted(tmp_path):
    source = MetaWorldSource(("reach",), episodes_per_task=4, max_steps=48, image_size=32,
                             progress=False)
    plan = source.plan()
    skipped = source.skipped()
    assert len(plan) + len(skipped) == 4 and skipped and plan  # expert needs 39-73 steps here
    assert all("did not succeed within 48 steps" in s for s in skipped)
    assert all(ep.length <= 48 for ep in plan)


def test_interrupted_collection_resumes(tmp_path):
    import zarr
    out = tmp_path / "r.vla"
    args = ["collect", "metaworld", str(out), "--tasks", "reach", "--episodes-per-task", "2",
            "--image-size", "32"]
    assert CliRunner().invoke(main, args).exit_code == 0
    want = vladata.open(out).array("observation.images.corner2")[:]
    (out / "meta" / "manifest.json").unlink()  # as if interrupted before any part finished
    for p in (out / "meta" / "parts").glob("*.json"):
        p.unlink()
    zarr.open_array(out / "data" / "observation.images.corner2", mode="r+")[:] = 0
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(vladata.open(out).array("observation.images.corner2")[:], want)


def test_unknown_task_is_refused_cleanly(tmp_path):
    r = CliRunner().invoke(main, ["collect", "metaworld", str(tmp_path / "x.vla"),
                                  "--tasks", "reach,juggle"])
    assert r.exit_code == 1 and "unknown Meta-World task 'juggle'" in r.output
    assert not (tmp_path / "x.vla").exists()


def test_chosen_cameras_are_recorded_and_unknown_ones_refused(tmp_path):
    out = tmp_path / "top.vla"
    r = CliRunner().invoke(main, ["collect", "metaworld", str(out), "--tasks", "reach",
                                  "--episodes-per-task", "1", "--image-size", "16",
                                  "--cameras", "topview,gripperPOV", "--val-fraction", "0"])
    assert r.exit_code == 0, r.output
    ds = vladata.open(out)
    assert sorted(k for k in ds.features if k.startswith("observation.images.")) == [
        "observation.images.gripperPOV", "observation.images.topview"]
    env = MetaWorldEnv("reach", image_size=16, cameras=("topview", "gripperPOV"))
    try:
        want = run_expert(env, MetaWorldSource(("reach",), episodes_per_task=1).episode(
            "reach-v3", 0)[0], False, 0.1)
    finally:
        env.close()
    assert np.array_equal(ds.array("observation.images.topview")[:], want["observation.images.topview"])
    r = CliRunner().invoke(main, ["collect", "metaworld", str(tmp_path / "x.vla"), "--tasks",
                                  "reach", "--cameras", "corner2,fisheye"])
    assert r.exit_code == 1 and "unknown Meta-World camera(s) ['fisheye']" in r.output
    assert "topview" in r.output and not (tmp_path / "x.vla").exists()
