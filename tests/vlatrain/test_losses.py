"""vlatrain/losses.py: masked steps contribute nothing; parts; gripper target; history weights."""

import pytest
import torch
import torch.nn.functional as F

from vlatrain.losses import continuous_loss, discrete_loss

ARM, GRIP = list(range(6)), [6]


def data(seed=0, b=3, h=2, c=4):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, h, c, 7, generator=g, requires_grad=True)
    target = torch.rand(b, h, c, 7, generator=g) * 2 - 1
    target[..., 6] = torch.where(target[..., 6] > 0, 1.0, -1.0)
    mask = torch.rand(b, h, c, generator=g) > 0.3
    mask[0, 0, 0] = True
    return pred, target, mask


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_masked_steps_contribute_nothing_to_value_or_gradient(kind):
    pred, target, mask = data()
    out = continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP, kind=kind)
    out["loss"].backward()
    grad = pred.grad.clone()
    assert (grad[~mask] == 0).all() and grad[mask].abs().sum() > 0
    # garbage (even NaN) in masked targets and predictions changes nothing
    pred2 = pred.detach().clone()
    pred2[~mask] = 1e6
    pred2.requires_grad_(True)
    target2 = target.clone()
    target2[~mask] = float("nan")
    out2 = continuous_loss(pred2, target2, mask, arm_dims=ARM, gripper_dims=GRIP, kind=kind)
    out2["loss"].backward()
    assert torch.equal(out["loss"], out2["loss"])
    assert torch.equal(pred2.grad, grad)


def test_continuous_loss_matches_its_definition():
    pred, target, mask = data()
    out = continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP, gripper_weight=0.1)
    m = mask
    arm = F.mse_loss(pred[..., :6][m], target[..., :6][m])
    grip = F.binary_cross_entropy_with_logits(pred[..., 6][m], (target[..., 6][m] > 0).float())
    assert torch.allclose(out["arm"], arm) and torch.allclose(out["gripper"], grip)
    assert torch.allclose(out["loss"], arm + 0.1 * grip)
    huber = continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP, kind="huber",
                            huber_delta=0.5)
    assert torch.allclose(huber["arm"], F.huber_loss(pred[..., :6][m], target[..., :6][m], delta=0.5))


def test_gripper_target_is_open_from_the_stored_plus_minus_one():
    pred = torch.full((1, 1, 2, 7), 0.0)
    pred[..., 6] = torch.tensor([20.0, -20.0])  # confident open, confident closed
    target = torch.zeros(1, 1, 2, 7)
    target[..., 6] = torch.tensor([1.0, -1.0])
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    assert continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP)["gripper"] < 1e-6
    target[..., 6] = -target[..., 6]
    assert continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP)["gripper"] > 10


def test_history_weights_weight_the_steps():
    pred, target, mask = data()
    mask[:] = True
    w = torch.tensor([0.0, 1.0])  # only the last history step counts
    out = continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=[], step_weights=w)
    assert torch.allclose(out["arm"], F.mse_loss(pred[:, 1, :, :6], target[:, 1, :, :6]))


def test_all_masked_gives_zero_not_nan():
    pred, target, mask = data()
    mask[:] = False
    out = continuous_loss(pred, target, mask, arm_dims=ARM, gripper_dims=GRIP)
    assert out["loss"] == 0
    logits = torch.randn(3, 2, 4, 7, 5)
    assert discrete_loss(logits, torch.zeros(3, 2, 4, 7, dtype=torch.long), mask)["loss"] == 0


def test_discrete_loss_is_masked_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 4, 7, 5, generator=g, requires_grad=True)
    bins = torch.randint(0, 5, (3, 2, 4, 7), generator=g)
    _, _, mask = data()
    out = discrete_loss(logits, bins, mask)
    ref = F.cross_entropy(logits[mask].reshape(-1, 5), bins[mask].reshape(-1))
    assert torch.allclose(out["loss"], ref) and torch.allclose(out["ce"], ref)
    out["loss"].backward()
    assert (logits.grad[~mask] == 0).all()
    bins2 = bins.clone()
    bins2[~mask] = 999  # out-of-range garbage where masked is ignored
    assert torch.equal(discrete_loss(logits, bins2, mask)["loss"], out["loss"])
