"""vlatrain/offline_eval.py: errors in dataset units vs the mean action, on the last history step."""

import pytest
import torch
from torch import nn

from tests.helpers.fakes import FakeLoader, make_spec
from vlatrain.augment import BatchPreparer
from vlatrain.config import AugmentConfig
from vlatrain.offline_eval import evaluate, format_report
from vlatrain.model import ImageSpec, Policy


class Oracle(nn.Module):
    """Predicts the targets of the batches it is given (gripper as confident logits)."""

    def __init__(self, spec, batches, offset=0.0):
        super().__init__()
        self.spec, self.discrete, self.batches, self.offset, self.i = spec, False, batches, offset, 0
        self.register_buffer("bin_centers", torch.tensor(spec.bin_centers))

    def forward(self, obs):
        act = self.batches[self.i]["action"].clone()
        self.i += 1
        act[..., :6] = (act[..., :6] + self.offset).clamp(-1, 1)
        act[..., 6] = act[..., 6] * 10
        return act

    decode = Policy.decode


def run(spec, loader, oracle):
    prep = BatchPreparer(spec, {c: ImageSpec((8, 8)) for c in spec.cameras}, AugmentConfig(),
                         torch.device("cpu"), discrete=False)
    mean = torch.tensor([0.1, -0.1, 0.0, 0.2, 0.0, 0.0, 0.3])
    return evaluate(oracle, loader, prep, lambda out, tgt: {"loss": torch.tensor(0.5)},
                    to_units=lambda x: 2 * x, mean_action=mean,
                    mean_action_norm=torch.tensor([0.05, -0.05, 0, 0.1, 0, 0, 1.0]))


def test_a_perfect_policy_has_zero_error_and_the_baseline_is_the_mean_action():
    spec = make_spec(history=2)
    loader = FakeLoader(spec, n=2)
    batches = [b for b in loader]  # the order evaluation sees (one epoch)
    loader.load_state_dict({"epoch": 0, "position": 0})
    m = run(spec, loader, Oracle(spec, batches))
    assert m["val/arm_mae"] == pytest.approx(0, abs=1e-6) and m["val/arm_mae_ratio"] < 1e-6
    assert m["val/gripper_acc"] == 1 and m["val/loss"] == 0.5
    t = torch.cat([b["action"][:, -1] for b in batches])          # (N, c, A) last history step
    mask = torch.cat([b["action_mask"][:, -1] for b in batches])  # (N, c)
    mean = torch.tensor([0.1, -0.1, 0.0, 0.2, 0.0, 0.0])
    base = ((2 * t[..., :6] - mean).abs()[mask]).mean(0)
    assert m["val/mae_baseline/dx"] == pytest.approx(float(base[0]), rel=1e-5)
    assert m["val/arm_mae_baseline"] == pytest.approx(float(base.mean()), rel=1e-5)
    assert m["val/samples"] == int(mask.sum())
    assert m["val/gripper_acc_baseline"] == pytest.approx(float((t[..., 6][mask] > 0).float().mean()))
    report = format_report(m, spec.action_names)
    assert "arm error is below the mean-action baseline" in report


def test_errors_are_in_dataset_units():
    spec = make_spec()
    loader = FakeLoader(spec, n=1)
    batches = [b for b in loader]
    loader.load_state_dict({"epoch": 0, "position": 0})
    m = run(spec, loader, Oracle(spec, batches, offset=0.05))
    t = batches[0]["action"][:, -1, :, 0]
    mask = batches[0]["action_mask"][:, -1]
    expect = (2 * ((t + 0.05).clamp(-1, 1) - t)).abs()[mask].mean()  # units = 2 x normalised
    assert m["val/mae/dx"] == pytest.approx(float(expect), rel=1e-5)


def test_an_empty_split_is_an_error():
    spec = make_spec()
    with pytest.raises(ValueError, match="no valid windows"):
        run(spec, [], Oracle(spec, []))
