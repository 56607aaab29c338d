"""vlatrain/loop.py + optim.py against synthetic batches: schedules, clipping, accumulation, resume."""

import json
import math

import pytest
import torch

from tests.helpers.fakes import FakeLoader, make_batch, make_spec
from vlatrain import checkpoint
from vlatrain.augment import BatchPreparer
from vlatrain.checkpoint import payload, restore
from vlatrain.config import OptimConfig, load_config
from vlatrain.distributed import DistInfo
from vlatrain.logging import RunLogger
from vlatrain.loop import TrainState, train, train_step
from vlatrain.losses import make_loss
from vlatrain.model import build_policy
from vlatrain.optim import build_optimizer, lr_at
from vlatrain.precision import autocast_for
from vlatrain.prefetch import Prefetcher, forever
from vlatrain.seeding import seed_everything

SMALL = ["model.width=16", "model.hidden=16", "model.layers=1", "model.heads=2",
         "model.image_size=16", "log.every=1", "log.progress=false", "log.tensorboard=false",
         "eval.every=0"]


def make_state(tmp_path, *overrides, loader=None, logger=True):
    cfg = load_config(None, [*SMALL, f"out={tmp_path}", *overrides])
    seed_everything(cfg.train.seed)
    spec = make_spec(history=cfg.data.history)
    policy = build_policy(cfg.model, spec)
    prep = BatchPreparer(spec, {c: policy.backbone.image_spec(c) for c in spec.cameras},
                         cfg.data.augment, torch.device("cpu"), discrete=policy.discrete)
    gen = torch.Generator().manual_seed(1)
    st = TrainState(cfg=cfg, model=policy, policy=policy,
                    optimizer=build_optimizer(policy, cfg.optim),
                    scaler=torch.amp.GradScaler("cpu", enabled=False),
                    loader=Prefetcher(loader or FakeLoader(spec)), prep=prep,
                    loss_fn=make_loss(cfg, policy, torch.device("cpu")), gen=gen,
                    dist=DistInfo(), logger=None,
                    autocast=autocast_for(cfg.train.precision, torch.device("cpu")))
    if logger:
        st.logger = RunLogger(tmp_path, total_steps=cfg.train.steps, start_step=0,
                              tensorboard=False, progress=False)
    return st, spec


def losses_of(path):
    return {d["step"]: d["loss"] for d in map(json.loads, path.read_text().splitlines()) if "loss" in d}


def test_schedules_are_pure_functions_of_the_step():
    c = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, c, 110) == pytest.approx(0.1) and lr_at(9, c, 110) == pytest.approx(1.0)
    assert lr_at(10, c, 110) == pytest.approx(1.0)
    assert lr_at(60, c, 110) == pytest.approx(0.55)
    assert lr_at(110, c, 110) == pytest.approx(0.1) and lr_at(500, c, 110) == pytest.approx(0.1)
    s = OptimConfig(lr=1.0, schedule="step", step_size=5, gamma=0.5)
    assert [lr_at(i, s, 100) for i in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]
    k = OptimConfig(lr=0.3, schedule="constant", warmup_steps=3)
    assert [lr_at(i, k, 100) for i in (0, 2, 50)] == pytest.approx([0.1, 0.3, 0.3])


def test_weight_decay_skips_biases_and_norms():
    policy = build_policy(load_config(None, SMALL).model, make_spec())
    opt = build_optimizer(policy, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in policy.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2 and not name.endswith("pos")), name


def test_gradient_clipping_is_applied(tmp_path):
    st, _ = make_state(tmp_path, "optim.grad_clip=0.01", logger=False)
    _, norm, _, _ = train_step(st, forever(st.loader))
    assert norm > 0.01  # the raw norm is reported ...
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in st.policy.parameters()
                                                   if p.grad is not None]))
    assert total == pytest.approx(0.01, rel=1e-3)  # ... and the gradients were clipped to it


def test_bf16_autocast_step(tmp_path):
    st, _ = make_state(tmp_path, "train.precision=bf16", logger=False)
    parts, norm, _, samples = train_step(st, forever(st.loader))
    assert torch.isfinite(parts["loss"]) and torch.isfinite(norm) and samples == 4
    assert all(p.dtype == torch.float32 for p in st.policy.parameters())  # master weights stay fp32


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    spec = make_spec()
    big = make_batch(spec, batch_size=8, seed=3)
    halves = [{k: (v[i * 4:(i + 1) * 4] if not isinstance(v, list) else v[i * 4:(i + 1) * 4])
               for k, v in big.items()} for i in range(2)]
    for b in (big, *halves):  # full masks: the per-micro-batch means then average exactly
        b["action_mask"] = torch.ones_like(b["action_mask"])
    grads = []
    for accum, batches in ((1, [big]), (2, halves)):
        st, _ = make_state(tmp_path, f"train.grad_accum={accum}", "data.augment.shift=0",
                           "data.augment.brightness=0", "data.augment.contrast=0",
                           "data.augment.saturation=0", logger=False)
        train_step(st, iter(batches))
        grads.append(torch.cat([p.grad.flatten() for p in st.policy.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_loop_logs_every_step_with_parts(tmp_path):
    st, _ = make_state(tmp_path, "train.steps=4")
    train(st)
    st.logger.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines] == [1, 2, 3, 4]
    for d in lines:
        assert {"loss", "arm", "gripper", "lr", "grad_norm", "samples_per_s", "data_wait"} <= set(d)
        assert math.isfinite(d["loss"]) and 0 <= d["data_wait"] <= 1
        assert d["loss"] == pytest.approx(d["arm"] + 0.1 * d["gripper"], rel=1e-5)
    assert lines[0]["samples_per_s"] > 0


class Interrupted(Exception):
    pass


class InterruptingLoader(FakeLoader):
    """Raises after handing out ``limit`` batches, as a killed run stops mid-epoch."""

    def __init__(self, spec, limit):
        super().__init__(spec)
        self.left = limit

    def __iter__(self):
        for b in super().__iter__():
            if self.left == 0:
                raise Interrupted
            self.left -= 1
            yield b


@pytest.mark.parametrize("log_every", [1, 4])
def test_interrupted_and_resumed_run_logs_the_same_losses(tmp_path, log_every):
    common = ["train.steps=8", f"log.every={log_every}", "train.checkpoint_every=3",
              "data.augment.action_noise=0.05", "model.dropout=0.1"]

    def run(out, loader=None, resume_from=None):
        st, spec = make_state(out, *common, loader=loader, logger=False)
        best = restore(st, resume_from) if resume_from else {}
        st.logger = RunLogger(out, total_steps=st.cfg.train.steps, start_step=st.step,
                              tensorboard=False, progress=False)
        mgr = checkpoint.CheckpointManager(out / "ck", 2, "val/arm_mae", best.get("value"))
        st.save = lambda step, m: mgr.save(step, payload(st, spec, [checkpoint.rng_state(st.gen)]), m)
        try:
            train(st)
        finally:
            st.logger.close()
            st.loader.close()
        return losses_of(out / "metrics.jsonl")

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = run(tmp_path / "a")
    with pytest.raises(Interrupted):  # killed during step 6, after the checkpoint of step 3
        run(tmp_path / "b", loader=InterruptingLoader(make_spec(), limit=5))
    ck = checkpoint.latest(tmp_path / "b" / "ck")
    assert ck.name == "step_0000003.pt"
    torch.manual_seed(123)  # whatever the process did before, the checkpoint restores the RNGs
    resumed = run(tmp_path / "b", resume_from=ck)
    assert resumed == full
    assert list(full) == (list(range(1, 9)) if log_every == 1 else [3, 4, 6, 8])  # + checkpoints
