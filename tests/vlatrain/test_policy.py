"""The policy runtime: a checkpoint acting frame by frame does exactly what training did."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vladata
from vladata.errors import ConfigError, ObservationError, VladataError
from vladata.normalization import Normalization, normalize
from vladata.store.layout import IMAGE_PREFIX, STATE
from vlatrain import data
from vlatrain.config import load_config
from vlatrain.policy import History, OpenLoop, Policy, TemporalEnsemble, make_rule
from vlatrain.recipes.train import run

os.environ.setdefault("MUJOCO_GL", "egl")

TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=4", "model.width=16",
        "model.hidden=32", "model.layers=1", "log.progress=false", "log.tensorboard=false",
        "eval.batches=1", "eval.batch_size=8", "train.steps=2", "train.checkpoint_every=2"]


def train(store, out, *overrides):
    """A checkpoint of a 2-step run (its weights are as good as any for exactness tests)."""
    cfg = load_config(None, [f"data.path={store}", f"out={out}", *TINY, *overrides])
    run(cfg)
    return out / "checkpoints" / "step_0000002.pt"


@pytest.fixture(scope="module")
def mw_ckpt(mw_store, tmp_path_factory):
    return train(mw_store, tmp_path_factory.mktemp("run") / "run", "data.history=3",
                 "data.chunk=4", "model.history=history", "model.head=gpt",
                 "model.language=text", "model.image_size=24", "data.over=episodes",
                 "model.views=[{camera: corner2, crop: [4, 6, 24, 20]}, "
                 "{camera: gripperPOV, size: 16}]")


def ranges(ds, over):
    """(first frame, last frame, episode, instruction) of each validation range of ``ds``."""
    eps = ds.episodes
    val = [i for i, s in enumerate(eps["split"].to_list()) if s == "validation"]
    if over == "episodes":
        return [(0, eps["length"][i] - 1, i, ds.segments["instruction"][i]) for i in val]
    seg = ds.segments.filter(ds.segments["episode_index"].is_in(val))
    return list(zip(seg["start"], seg["end"], seg["episode_index"], seg["instruction"]))


def assert_reproduces_training(ckpt):
    """Feed each validation range frame by frame; at every anchor the runtime's inputs and head
    output equal the model's on the window loader's window for that anchor, bit for bit."""
    policy = Policy.load(ckpt, "cpu")
    cfg, spec = policy.cfg, policy.data_spec
    ds = vladata.open(cfg.data.path)
    win = data.windows(ds, cfg.data, cfg.data.val_split, spec.observation_normalizer())
    loader = win.loader(batch_size=1, shuffle=False, seed=0, num_workers=0, drop_last=False)
    batches = iter(loader)
    keys = list(policy.spec.observations)
    checked = 0
    for lo, hi, ep, text in ranges(ds, cfg.data.over):
        frames = ds.episode(ep, keys)
        policy.reset(text)
        for e in range(lo, hi + 1):
            policy.observe([{k: frames[k][e] for k in keys}])
            batch = next(batches)
            assert int(batch["episode_index"][0]) == ep and int(batch["frame_index"][0, -1]) == e
            ref_obs = policy.prep.observation(batch, train=False)
            got_obs = policy.prep.observation(policy.batch(), train=False)
            assert torch.equal(got_obs.mask, ref_obs.mask)
            for cam in ref_obs.images:
                assert torch.equal(got_obs.images[cam], ref_obs.images[cam])
            if ref_obs.state is not None:
                assert torch.equal(got_obs.state, ref_obs.state)
            assert got_obs.instruction == ref_obs.instruction
            with torch.no_grad():
                ref = policy.model(ref_obs)
            assert torch.equal(policy.predict(), ref)
            checked += 1
    assert checked == len(win)
    return checked


def test_runtime_reproduces_the_training_forward_pass(mw_ckpt):
    assert assert_reproduces_training(mw_ckpt) > 10


def test_discrete_head_subset_of_state_without_language(mw_store, tmp_path):
    ckpt = train(mw_store, tmp_path / "run", "data.history=2", "data.chunk=3",
                 "model.history=history", "model.head=discrete", "model.language=none",
                 "model.image_size=16", "data.state_dims=[0,2]", "data.cameras=[corner2]",
                 "data.over=episodes")
    assert_reproduces_training(ckpt)
    policy = Policy.load(ckpt, "cpu")
    assert policy.spec.observations == {"observation.images.corner2": ((32, 32, 3), "uint8"),
                                        STATE: ((4,), "float32")}
    assert policy.spec.state_index == (0, 2) and not policy.spec.instruction_required
    policy.reset("")  # no language: no instruction needed
    ds = vladata.open(mw_store)
    ep = ds.episode(0, list(policy.spec.observations))
    a = policy.act({k: v[0] for k, v in ep.items()})
    # a discrete head's action is a bin centre of the recorded tokenizer, in dataset units
    centres = np.asarray(policy.data_spec.bin_centers)
    norm = normalize(a[None].astype(np.float64), policy.action_stats, policy.action_norm)[0]
    lo, hi = (policy.action_stats[k] for k in policy.action_norm.required_stats())
    varying = [d for d in policy.data_spec.arm_dims if hi[d] > lo[d]]  # constant dims map to 0
    assert len(varying) == 3  # dx, dy, dz (Meta-World's rotation is always 0)
    for d in varying:
        assert np.min(np.abs(centres - norm[d])) < 1e-5


def test_language_embedding_models_look_instructions_up(calvin_rgb_store, tmp_path):
    ckpt = train(calvin_rgb_store, tmp_path / "run", "data.history=2", "data.chunk=3",
                 "model.history=history", "model.head=fc", "model.language=embedding",
                 "model.image_size=24")
    assert_reproduces_training(ckpt)  # over segments: each segment a fresh episode
    policy = Policy.load(ckpt, "cpu")
    ds = vladata.open(calvin_rgb_store)
    seg = ds.segments.row(0, named=True)
    assert seg["instruction"] in policy.spec.instructions
    policy.reset(seg["instruction"])
    keys = list(policy.spec.observations)
    frame = {k: v[0] for k, v in ds.episode(seg["episode_index"], keys).items()}
    policy.observe([frame])
    got = policy.batch()["language.embedding"][0].numpy()
    assert np.array_equal(got, np.asarray(seg["embedding"], np.float32))
    with pytest.raises(ObservationError, match="'dance a jig' is not one the policy was trained"):
        policy.reset("dance a jig")
    with pytest.raises(ObservationError, match="pass the instruction"):
        policy.reset("")


def test_history_pads_like_the_window_loader():
    h = History(3)
    with pytest.raises(ObservationError, match="call reset"):
        h.window()
    for v in (1, 2):
        h.push({"x": np.array([v])})
    win, mask = h.window()
    assert win["x"].ravel().tolist() == [1, 1, 2] and mask.tolist() == [False, True, True]
    for v in (3, 4):
        h.push({"x": np.array([v])})
    win, mask = h.window()
    assert win["x"].ravel().tolist() == [2, 3, 4] and mask.all()


def test_runtime_window_at_the_episode_start(mw_ckpt, mw_store):
    policy = Policy.load(mw_ckpt, "cpu")
    frames = vladata.open(mw_store).episode(0, list(policy.spec.observations))
    policy.reset("reach the goal position")
    policy.observe([{k: v[0] for k, v in frames.items()}])
    b = policy.batch()
    assert b["obs_mask"].tolist() == [[False, False, True]]
    cam = IMAGE_PREFIX + "corner2"
    assert all(np.array_equal(b[cam][0, i].numpy(), frames[cam][0]) for i in range(3))


def test_open_loop_executes_k_actions_per_chunk():
    rule = OpenLoop(2, chunk=4)
    assert rule.needs_plan()
    rule.push(np.arange(8.0).reshape(4, 2))
    assert rule.pop().tolist() == [0, 1] and not rule.needs_plan()
    assert rule.pop().tolist() == [2, 3] and rule.needs_plan()
    with pytest.raises(ConfigError, match="execute: must be in 1..4"):
        OpenLoop(5, chunk=4)
    with pytest.raises(ConfigError, match="not both"):
        make_rule(4, execute=2, ensemble=0.1)


def test_temporal_ensembling_weights_older_predictions_as_act():
    m, rule = 0.5, TemporalEnsemble(0.5, chunk=3)
    chunks = [np.array([[1.0], [2.0], [3.0]]), np.array([[10.0], [20.0], [30.0]]),
              np.array([[100.0], [200.0], [300.0]]), np.array([[7.0], [8.0], [9.0]])]
    got = []
    for c in chunks:
        assert rule.needs_plan()
        rule.push(c)
        got.append(float(rule.pop()[0]))
    w = np.exp(-m * np.arange(3))
    assert got[0] == 1.0
    assert got[1] == pytest.approx((2.0 * w[0] + 10.0 * w[1]) / w[:2].sum())
    assert got[2] == pytest.approx((3.0 * w[0] + 20.0 * w[1] + 100.0 * w[2]) / w.sum())
    # the first chunk no longer covers step 3
    assert got[3] == pytest.approx((30.0 * w[0] + 200.0 * w[1] + 7.0 * w[2]) / w.sum())
    assert TemporalEnsemble(0.0, 3).m == 0.0
    with pytest.raises(ConfigError, match="ensemble"):
        TemporalEnsemble(-1.0, 3)


def test_policy_plans_as_its_rule_says(mw_ckpt, mw_store):
    frames = vladata.open(mw_store).episode(0)
    steps = 7

    def run_rule(**rule):
        policy = Policy.load(mw_ckpt, "cpu", **rule)
        plans, actions, orig = [], [], policy.plan
        policy.plan = lambda: plans.append(orig()) or plans[-1]
        policy.reset("reach the goal position")
        for t in range(steps):
            actions.append(policy.act({k: frames[k][t] for k in policy.spec.observations}))
        return plans, np.stack(actions), policy

    plans, acts, policy = run_rule(execute=3)
    assert len(plans) == 3  # steps 0, 3, 6
    expected = np.concatenate([plans[0][0, :3], plans[1][0, :3], plans[2][0, :1]])
    assert np.array_equal(acts, policy.to_units(expected))
    plans, acts, policy = run_rule()  # default: re-plan every step
    assert len(plans) == steps
    assert np.array_equal(acts, policy.to_units(np.stack([p[0, 0] for p in plans])))
    plans, acts, policy = run_rule(ensemble=0.2)
    assert len(plans) == steps
    w = np.exp(-0.2 * np.arange(3))
    mix = (w[:, None] * np.stack([plans[0][0, 2], plans[1][0, 1], plans[2][0, 0]])).sum(0) / w.sum()
    assert np.allclose(acts[2], policy.to_units(mix))
    with pytest.raises(ConfigError, match="execute: must be in 1..4"):
        Policy.load(mw_ckpt, "cpu", execute=5)


def test_denormalisation_round_trip(mw_ckpt, mw_store):
    policy = Policy.load(mw_ckpt, "cpu")
    ds = vladata.open(mw_store)
    norm = Normalization.from_dict(ds.info["normalization"])
    raw = ds.array("action")[:].astype(np.float64)
    back = policy.to_units(normalize(raw, ds.stats["action"], norm))
    lo, hi = (np.asarray(ds.stats["action"][k]) for k in (norm.low, norm.high))
    inside = (raw >= lo) & (raw <= hi)
    arm = list(policy.data_spec.arm_dims)
    assert np.allclose(back[:, arm][inside[:, arm]], raw[:, arm][inside[:, arm]], atol=1e-5)
    g = policy.data_spec.gripper_dims[0]  # stored "1/-1": +1 closes; the source records that an
    # effort above 0.3 closes (the experts relax at 0); binarised back to the full efforts +-1
    assert np.array_equal(back[:, g], np.where(raw[:, g] > 0.3, 1.0, -1.0))
    assert policy.spec.gripper == "1/-1" and policy.spec.action_names[g] == "gripper"
    assert policy.to_units(normalize(raw, ds.stats["action"], norm)).dtype == np.float32


def test_env_observations_match_the_policy_spec(mw_ckpt):
    from vlaenv.metaworld import MetaWorldEnv
    policy = Policy.load(mw_ckpt, "cpu")
    env = MetaWorldEnv("reach", image_size=32, max_steps=5)
    try:
        for key, (shape, dtype) in policy.spec.observations.items():
            f = env.spec.features[key]
            assert (f.shape, f.dtype) == (shape, dtype)
        assert env.spec.action.names == policy.spec.action_names
        obs = env.reset(1)
        policy.reset(env.instruction)
        for _ in range(3):
            a = policy.act(obs)
            assert a.shape == (7,) and a.dtype == np.float32 and np.isfinite(a).all()
            obs, _, _, _ = env.step(a)
    finally:
        env.close()
    small = MetaWorldEnv("reach", image_size=16, max_steps=5)
    try:
        policy.reset(small.instruction)
        with pytest.raises(ObservationError, match=r"observation.images.corner2: expected uint8 "
                                                   r"\(32, 32, 3\), got uint8 \(16, 16, 3\)"):
            policy.act(small.reset(1))
    finally:
        small.close()


def test_bad_observations_are_refused_clearly(mw_ckpt, mw_store):
    policy = Policy.load(mw_ckpt, "cpu")
    keys = list(policy.spec.observations)
    frame = {k: v[0] for k, v in vladata.open(mw_store).episode(0, keys).items()}
    with pytest.raises(ObservationError, match="call reset"):
        policy.act(frame)
    policy.reset("reach the goal position")
    cam = "observation.images.gripperPOV"
    bad = {k: v for k, v in frame.items() if k != cam}
    with pytest.raises(ObservationError, match=f"{cam}: missing"):
        policy.act(bad)
    with pytest.raises(ObservationError, match=r"observation.state: expected float32 \(4,\), got "
                                               r"float64 \(4,\)"):
        policy.act({**frame, STATE: frame[STATE].astype(np.float64)})
    with pytest.raises(ObservationError, match="observation.state: non-finite"):
        policy.act({**frame, STATE: np.full(4, np.nan, np.float32)})
    with pytest.raises(ObservationError, match=f"{cam}: expected a numpy array"):
        policy.act({**frame, cam: frame[cam].tolist()})
    with pytest.raises(ObservationError, match="2 observations for the 1 environments"):
        policy.act_batch([frame, frame])
    policy.reset_batch(["reach the goal position"] * 2)
    with pytest.raises(ObservationError, match="environment 1's observation.*state: missing"):
        policy.act_batch([frame, {cam: frame[cam]}])
    with pytest.raises(ObservationError, match="use act_batch"):
        policy.act(frame)
    assert policy.act_batch([frame, frame]).shape == (2, 7)
    with pytest.raises(ObservationError, match="pass the instruction"):
        policy.reset("")
    assert issubclass(ObservationError, VladataError)


def test_batched_acting_equals_one_by_one(mw_ckpt, mw_store):
    ds = vladata.open(mw_store)
    policy = Policy.load(mw_ckpt, "cpu", execute=2)
    keys = list(policy.spec.observations)
    eps = [ds.episode(i, keys) for i in (0, 1)]
    policy.reset_batch(["reach the goal position"] * 2)
    both = [policy.act_batch([{k: e[k][t] for k in keys} for e in eps]) for t in range(4)]
    for j, e in enumerate(eps):
        policy.reset("reach the goal position")
        one = [policy.act({k: e[k][t] for k in keys}) for t in range(4)]
        assert np.allclose(np.stack(one), np.stack([b[j] for b in both]), atol=1e-5)


def test_vlatrain_rollout_runs_a_checkpoint(mw_ckpt):
    from cli.vlatrain import main
    threads = torch.get_num_threads()
    r = CliRunner().invoke(main, ["rollout", str(mw_ckpt), "--tasks", "reach", "--episodes", "2",
                                  "--max-steps", "6", "--image-size", "32", "--execute", "2",
                                  "--batch", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "reach-v3" in r.output and "12 steps" in r.output
    assert torch.get_num_threads() == threads  # the policy's thread count is restored after
    r = CliRunner().invoke(main, ["rollout", str(mw_ckpt), "--tasks", "reach", "--episodes", "1",
                                  "--max-steps", "3", "--image-size", "16"])
    assert r.exit_code == 1 and "expected uint8 (32, 32, 3), got uint8 (16, 16, 3)" in r.output
    r = CliRunner().invoke(main, ["rollout", str(mw_ckpt), "--execute", "9"])
    assert r.exit_code == 1 and "execute: must be in 1..4" in r.output
    r = CliRunner().invoke(main, ["rollout", "--policy", "expert", "--execute", "2"])
    assert r.exit_code == 2 and "apply to a CHECKPOINT" in r.output
