"""vlatrain/data.py against a real store: spec, loaders, units, and what it refuses."""

import dataclasses

import numpy as np
import pytest
import torch

import vladata
from vladata.errors import StoreError
from vladata.tokenize import ActionTokenizer
from vlatrain import data
from vlatrain.config import load_config
from vlatrain.spec import DataSpec


def cfg_for(store, *overrides):
    return load_config(None, [f"data.path={store}", "data.batch_size=8", "data.num_workers=0",
                              "eval.batch_size=16", *overrides])


def test_spec_of_a_calvin_store(calvin_rgb_store):
    ds = vladata.open(calvin_rgb_store)
    spec = data.spec_from_store(ds, cfg_for(calvin_rgb_store, "data.state_dims=[0, 1, 2, 14]").data)
    assert spec.cameras == ("rgb_static", "rgb_gripper")
    assert spec.image_shapes == {"rgb_static": (32, 32, 3), "rgb_gripper": (24, 24, 3)}
    assert spec.action_dim == 7 and spec.gripper_dims == (6,) and spec.arm_dims == tuple(range(6))
    assert spec.action_names[0] == "dx" and spec.language_dim == 384
    assert spec.state_dim == 4 and spec.state_index == (0, 1, 2, 14)
    norm = spec.observation_normalizer()  # the loader's, recorded: the store's mean/std
    assert norm.keys == ("observation.state",)
    stats = norm.features["observation.state"][1]
    assert stats["mean"][14] == pytest.approx(float(ds.stats["observation.state"]["mean"][14]))
    tok = ActionTokenizer.from_dataset(ds)
    assert spec.token_ids == tuple(int(i) for i in tok.id_of_bin(np.arange(tok.bins)))
    assert DataSpec.from_dict(spec.to_dict()) == spec


def test_loaders_yield_the_documented_batch(calvin_rgb_store):
    cfg = cfg_for(calvin_rgb_store)
    ds = vladata.open(calvin_rgb_store)
    loader = data.train_loader(ds, cfg, rank=0, world_size=1, pin_memory=False)
    batch = next(iter(loader))
    assert batch["observation.images.rgb_static"].shape == (8, 1, 32, 32, 3)
    assert batch["action"].shape == (8, 1, 10, 7) and batch["action_mask"].dtype == torch.bool
    val, restart = data.val_loader(ds, cfg)
    first = next(iter(val))["index"].clone()
    next(iter(val))
    restart()
    assert torch.equal(next(iter(val))["index"], first)  # every evaluation sees the same batches


def test_action_units_undo_the_normalisation(calvin_rgb_store):
    ds = vladata.open(calvin_rgb_store)
    units = data.action_units(ds, torch.device("cpu"))
    raw = np.asarray(ds.array("action")[:20])
    norm = torch.from_numpy(np.asarray(ds.array("action.norm")[:20]))
    back = units.to_units(norm).numpy()
    inside = (raw >= ds.stats["action"]["q01"]) & (raw <= ds.stats["action"]["q99"])
    assert np.allclose(back[inside], raw[inside], atol=1e-5)
    assert torch.allclose(units.mean, torch.tensor(ds.stats["action"]["mean"], dtype=torch.float32))
    assert units.mean_norm[6].abs() == 1  # the gripper side of the mean action


def test_what_data_refuses(calvin_rgb_store):
    ds = vladata.open(calvin_rgb_store)
    with pytest.raises(StoreError, match="data.path is not set"):
        data.open_store(None)
    with pytest.raises(StoreError, match="asks for dims beyond the 15"):
        data.spec_from_store(ds, cfg_for(calvin_rgb_store, "data.state_dims=[0, 15]").data)
    with pytest.raises(ValueError, match="no split"):
        data.spec_from_store(ds, cfg_for(calvin_rgb_store, "data.train_split=test").data)
    spec = data.spec_from_store(ds, cfg_for(calvin_rgb_store).data)
    other = dataclasses.replace(spec, cameras=("rgb_static",), state_dim=3)
    with pytest.raises(StoreError, match="does not match the policy's data: cameras"):
        data.check_compatible(spec, other, ds.path)
    with pytest.raises(StoreError, match="fewer than one batch"):
        data.train_loader(ds, cfg_for(calvin_rgb_store, "data.batch_size=100000"), rank=0, world_size=1,
                          pin_memory=False)


def test_a_spec_that_kept_state_statistics_reads_as_the_same_normaliser():
    d = DataSpec(cameras=("a",), image_shapes={"a": (8, 8, 3)}, state_dim=2, action_dim=7,
                 action_names=tuple("abcdefg"), gripper_dims=(6,), language_dim=0, history=1,
                 chunk=1).to_dict()
    del d["observation_norm"]
    old = {**d, "state_mean": [1.0, 2.0], "state_std": [2.0, 0.0]}
    norm = DataSpec.from_dict(old).observation_normalizer()
    got = norm.apply({"observation.state": np.array([3.0, 5.0])})["observation.state"]
    assert got.tolist() == [1.0, 3.0]  # (s - mean) / std, a zero std taken as 1 as before
    with pytest.raises(ValueError, match="cannot be converted"):
        DataSpec.from_dict({**old, "state_index": [0, 3]})
