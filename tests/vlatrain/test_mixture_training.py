"""Training from a mixture of stores (data.mixture): config, compatibility, sampling, states, CLI, resume."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vladata
from cli.vlatrain import main
from vladata.errors import ConfigError, StoreError
from vladata.loading.mixture import Mixture
from vladata.normalization import ObservationNormalizer
from vlatrain import data
from vlatrain.augment import BatchPreparer
from vlatrain.checkpoint import load
from vlatrain.config import load_config
from vlatrain.model.backbone import ImageSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "calvin.yaml")
TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=8", "model.width=16",
        "model.hidden=32", "model.layers=1", "model.image_size=24", "log.every=1",
        "log.progress=false", "eval.batch_size=16", "eval.batches=1", "optim.warmup_steps=0"]


def convert_sample(d: Path, seed: int, static_size: int = 32) -> Path:
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    raw = write_sample(d / "raw", train_segments=2, val_segments=1, frames_per_segment=(40, 60),
                       static_size=static_size, gripper_size=24, seed=seed, depth=False)
    convert(CalvinSource(raw), d / "calvin.vla", progress=False)
    return d / "calvin.vla"


@pytest.fixture(scope="module")
def second_store(tmp_path_factory):
    """The CALVIN sample with another seed: same layout, other statistics."""
    return convert_sample(tmp_path_factory.mktemp("calvin_b"), seed=1)


def mix(*entries) -> str:
    return "data.mixture=[" + ", ".join(f"{{path: '{p}', weight: {w}}}" for p, w in entries) + "]"


def losses(run_dir):
    return [d["loss"] for d in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text()
                                   .splitlines()) if "loss" in d]


def test_config_takes_a_mixture_or_a_path_not_both(tmp_path):
    cfg = load_config(CONFIG, [mix(("a.vla", 1.0), ("b.vla", 2)), "data.balance=true"])
    assert cfg.data.stores() == [("a.vla", 1.0), ("b.vla", 2.0)] and cfg.data.balance
    p = tmp_path / "c.yaml"  # in a file: the same list
    p.write_text("data:\n  mixture:\n    - {path: a.vla, weight: 1.0}\n    - b.vla\n")
    assert load_config(p).data.stores() == [("a.vla", 1.0), ("b.vla", 1.0)]
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG, [mix(("a.vla", 1.0)), "data.path=a.vla"])
    assert "data.path: set either data.path (one store) or data.mixture" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.mixture=[{path: a, weight: -1}, {path: b}]", "data.balance=1"])
    for text in ("data.mixture[0].weight: expected a finite number >= 0",
                 "data.balance: expected bool"):
        assert text in str(e.value)
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].pth: unknown key"):
        load_config(None, ["data.mixture=[{path: a}, {pth: b}]"])
    with pytest.raises(ConfigError, match="data.path is not set"):
        data.open_stores(load_config(CONFIG).data)
    r = CliRunner().invoke(main, ["run", CONFIG, "data.path=a", mix(("a", 1)), f"out={tmp_path}/x"])
    assert r.exit_code != 0 and "not both" in r.output


def test_an_incompatible_store_is_refused_by_name(calvin_rgb_store, tmp_path):
    other = convert_sample(tmp_path, seed=2, static_size=28)
    cfg = load_config(CONFIG, [mix((calvin_rgb_store, 1), (other, 1)), *TINY])
    stores = data.open_stores(cfg.data)
    with pytest.raises(StoreError) as e:
        data.spec_from_stores(stores, cfg.data, data.train_windows(stores, cfg.data))
    assert str(other) in str(e.value) and "image_shapes" in str(e.value)
    with pytest.raises(StoreError, match=f"{other}: this store does not match the first store's"):
        data.check_stores(stores, cfg.data)
    spec = data.spec_from_store(stores[0][0], cfg.data)  # action dims: the same check
    with pytest.raises(StoreError, match="action_dim: store 7, first store 6"):
        data.check_compatible(spec, dataclasses.replace(spec, action_dim=6), str(other),
                              what=f"the first store's ({calvin_rgb_store})")


def test_both_stores_are_drawn_by_weight_with_their_own_statistics(calvin_rgb_store, second_store):
    cfg = load_config(CONFIG, [mix((calvin_rgb_store, 1.0), (second_store, 2.0)), *TINY])
    stores = data.open_stores(cfg.data)
    win = data.train_windows(stores, cfg.data)
    spec = data.spec_from_stores(stores, cfg.data, win)
    assert [r["weight"] for r in spec.extra["mixture"]] == [1.0, 2.0]
    assert not hasattr(data, "StoreStates")  # no remapping in vlatrain: vladata normalises
    loader = data.train_loader(None, cfg, rank=0, world_size=1, pin_memory=False, win=win)
    counts = np.zeros(2, np.int64)
    for _ in range(3):  # three epochs of all windows of both stores
        for batch in loader:
            counts += np.bincount(batch["dataset_index"].numpy(), minlength=2)
    assert counts.sum() == 3 * (len(win) // 8) * 8
    assert counts[1] / counts.sum() == pytest.approx(2 / 3, abs=0.02)  # the weights' shares

    # each row's state arrives normalised with its own store's statistics, and the policy's
    # preparer passes it on as it is
    prep = BatchPreparer(spec, {c: ImageSpec((24, 24)) for c in spec.cameras},
                         cfg.data.augment, torch.device("cpu"), discrete=False)
    batch = next(iter(loader))
    j = batch["dataset_index"].numpy()
    assert set(j) == {0, 1}
    raw_win = Mixture([ds for ds, _ in stores], weights=[1.0, 2.0], history=cfg.data.history,
                      chunk=cfg.data.chunk, cameras=cfg.data.cameras, over=cfg.data.over)
    obs, _ = prep(batch, train=False)
    for r in range(len(j)):
        raw = raw_win[int(batch["index"][r])]["observation.state"]
        st = stores[j[r]][0].stats["observation.state"]
        mean, std = (np.asarray(st[k]) for k in ("mean", "std"))
        want = ((raw - mean) / np.where(std > 1e-6, std, 1))[..., list(spec.state_index)]
        assert np.allclose(obs.state[r].numpy(), want, atol=1e-4)
        norm = ObservationNormalizer.from_dict(spec.extra["mixture"][j[r]]["observation_norm"])
        assert np.array_equal(norm.apply({"observation.state": raw})["observation.state"],
                              batch["observation.state"][r].numpy())  # the recorded normaliser
    m = [stores[k][0].stats["observation.state"]["mean"][0] for k in (0, 1)]
    assert m[0] != pytest.approx(m[1])  # the two stores' statistics differ indeed


def test_cli_trains_on_a_mixture_and_resumes_exactly(calvin_rgb_store, second_store, tmp_path):
    run = CliRunner()
    common = [mix((calvin_rgb_store, 1.0), (second_store, 2.0)), "data.balance=true", *TINY,
              "train.checkpoint_every=2", "eval.every=0", "optim.decay_steps=4"]
    a, b = tmp_path / "a", tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "cli.vlatrain", "run", CONFIG, "train.steps=4",
                        f"out={a}", *common], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)  # the real CLI
    assert r.returncode == 0, r.stderr[-3000:]
    got = losses(a)
    assert len(got) == 4 and all(np.isfinite(got))
    last = json.loads((a / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val/arm_mae" in last and "val1/arm_mae" in last  # each store's validation
    ckpt = load(a / "checkpoints" / "step_0000004.pt")
    rows = ckpt["spec"]["extra"]["mixture"]
    assert [Path(x["path"]) for x in rows] == [calvin_rgb_store, second_store]
    # the checkpoint records each store's observation normalisation, the first as the spec's
    for row, store in zip(rows, (calvin_rgb_store, second_store)):
        want = ObservationNormalizer.from_dataset(vladata.open(store), ["observation.state"])
        assert ObservationNormalizer.from_dict(row["observation_norm"]) == want
    first, second = (row["observation_norm"] for row in rows)
    assert ckpt["spec"]["observation_norm"] == first != second
    r = run.invoke(main, ["run", CONFIG, "train.steps=2", f"out={b}", *common])
    assert r.exit_code == 0, r.output
    r = run.invoke(main, ["run", "--resume", str(b), "train.steps=4"])
    assert r.exit_code == 0, r.output
    assert losses(b) == pytest.approx(losses(a), rel=1e-6, abs=0)
    r = run.invoke(main, ["run", "--resume", str(b), mix((calvin_rgb_store, 1.0), (second_store, 1.0))])
    assert r.exit_code != 0 and "weights cannot change on resume" in r.output
    # a mixture checkpoint evaluates on one store, with that store's statistics
    r = run.invoke(main, ["eval", str(a / "checkpoints" / "step_0000004.pt"), "--data",
                          str(second_store), "--json", "--batches", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["val/arm_mae"] > 0
