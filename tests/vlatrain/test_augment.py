"""vlatrain/augment.py: device-side resize/normalise/augment, targets, token layout."""

import dataclasses

import pytest
import torch

from fakes import make_batch, make_spec
from vlatrain.augment import BatchPreparer, prepare_images, random_shift
from vlatrain.config import AugmentConfig
from vlatrain.model import ImageSpec

CPU = torch.device("cpu")
NO_AUG = AugmentConfig(shift=0, brightness=0, contrast=0, saturation=0)


def preparer(spec, cfg=AugmentConfig(), discrete=False, size=16):
    return BatchPreparer(spec, {c: ImageSpec((size, size)) for c in spec.cameras}, cfg, CPU,
                         discrete=discrete)


def test_resize_and_normalise():
    frames = torch.full((2, 3, 40, 30, 3), 204, dtype=torch.uint8)  # (B, h, H, W, 3)
    out = prepare_images(frames, ImageSpec((16, 12), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)),
                         NO_AUG, train=True, gen=None)
    assert out.shape == (2, 3, 3, 16, 12)
    assert torch.allclose(out[:, :, 0], torch.tensor(1.2)) and torch.allclose(out[:, :, 2], torch.tensor(0.3))


def test_random_shift_is_one_offset_per_window():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 3, 8, 8).expand(4, 3, 3, 8, 8).reshape(12, 3, 8, 8)  # 4 windows, h=3, same frames
    y = random_shift(x, 2, 3, g).view(4, 3, 3, 8, 8)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    padded = torch.nn.functional.pad(x[:1], (2, 2, 2, 2), mode="replicate")
    crops = [padded[0, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert any(torch.equal(y[0, 0], c) for c in crops)  # a crop of the replicate-padded frame
    shifted = [not torch.equal(y[i, 0], x[3 * i]) for i in range(4)]
    assert any(shifted)


def test_augmentation_uses_its_generator_only_and_is_reproducible():
    spec = make_spec(history=2)
    prep, batch = preparer(spec, AugmentConfig(action_noise=0.1)), make_batch(spec, pad_first=0)
    before = torch.get_rng_state()
    a_obs, a_tgt = prep(batch, train=True, gen=torch.Generator().manual_seed(5))
    b_obs, b_tgt = prep(batch, train=True, gen=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a_obs.images["static"], b_obs.images["static"])
    assert torch.equal(a_tgt.action, b_tgt.action)
    # one colour/shift draw per window: identical frames of a window stay identical
    same = dict(batch)
    same["observation.images.static"] = batch["observation.images.static"][:, :1].expand(-1, 2, -1, -1, -1)
    obs, _ = prep(same, train=True, gen=torch.Generator().manual_seed(1))
    assert torch.equal(obs.images["static"][:, 0], obs.images["static"][:, 1])


def test_evaluation_is_not_augmented_and_action_noise_spares_the_gripper():
    spec = make_spec()
    batch = make_batch(spec)
    plain = preparer(spec, NO_AUG)(batch, train=True, gen=torch.Generator())
    prep = preparer(spec, AugmentConfig(action_noise=0.5))
    ev_obs, ev_tgt = prep(batch, train=False)
    assert torch.equal(ev_obs.images["static"], plain[0].images["static"])
    assert torch.equal(ev_tgt.action, batch["action"])
    _, noisy = prep(batch, train=True, gen=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy.action[..., :6], batch["action"][..., :6])
    assert noisy.action.abs().max() <= 1
    assert torch.equal(noisy.action[..., 6], batch["action"][..., 6])
    assert torch.equal(noisy.mask, batch["action_mask"] & batch["obs_mask"][..., None])


def test_state_is_selected_not_renormalised():
    # the loader normalises observations (vladata); the preparer only picks state_index
    spec = dataclasses.replace(make_spec(state_dim=3), state_index=(0, 2, 4))
    batch = make_batch(make_spec(state_dim=5))
    obs, _ = preparer(spec)(batch, train=False)
    assert torch.equal(obs.state, batch["observation.state"][..., [0, 2, 4]])


def test_tokens_map_to_bins_under_any_layout():
    vocab, bins = 1000, 16
    spec = dataclasses.replace(make_spec(bins=bins),
                               token_ids=tuple(vocab - 1 - b for b in range(bins)))  # OpenVLA-like
    batch = make_batch(spec)
    _, tgt = preparer(spec, discrete=True)(batch, train=False)
    assert torch.equal(vocab - 1 - tgt.bins, batch["action.tokens"])
    assert torch.equal(torch.tensor(spec.bin_centers)[tgt.bins].sign()[..., 6],
                       batch["action"][..., 6].sign())
    bad = dict(batch)
    bad["action.tokens"] = batch["action.tokens"].clone()
    bad["action.tokens"][0, 0, 0, 0] = 5
    with pytest.raises(ValueError, match="outside the store's token layout"):
        preparer(spec, discrete=True)(bad, train=False)


def test_a_view_crops_the_stored_frame_before_the_resize():
    frames = torch.randint(0, 256, (2, 3, 40, 48, 3), dtype=torch.uint8)
    spec = ImageSpec((16, 16), crop=(4, 8, 32, 24))
    got = prepare_images(frames, spec, AugmentConfig(), train=False, gen=None)
    manual = prepare_images(frames[:, :, 4:36, 8:32].contiguous(), ImageSpec((16, 16)),
                            AugmentConfig(), train=False, gen=None)
    assert got.shape == (2, 3, 3, 16, 16) and torch.equal(got, manual)
    native = prepare_images(frames, ImageSpec((32, 24), crop=(4, 8, 32, 24)), AugmentConfig(),
                            train=False, gen=None)  # a crop at the model's size: no resize
    assert torch.equal(native[0, 0], (frames[0, 0, 4:36, 8:32].permute(2, 0, 1) / 255 - 0.5) / 0.25)


def test_views_are_checked():
    from vladata.errors import ConfigError
    from vlatrain.config import load_config
    from vlatrain.model import TinyBackbone
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.views=[{camera: a, crop: [0, 0, 8]}, {camera: a, size: 0}]"])
    msg = str(e.value)
    assert "model.views[0].crop: expected [top >= 0, left >= 0, height >= 1, width >= 1]" in msg
    assert "model.views[1].size: must be >= 1" in msg and "one entry per camera" in msg
    spec = make_spec()
    cam = spec.cameras[0]
    h, w = spec.image_shapes[cam][:2]
    cfg = load_config(None, [f"model.views=[{{camera: {cam}, crop: [1, 0, {h}, {w}]}}]"])
    with pytest.raises(ValueError, match=f"the crop \\[1, 0, {h}, {w}\\] of '{cam}' leaves"):
        TinyBackbone(cfg.model, spec)
    cfg = load_config(None, ["model.views=[{camera: nose, size: 8}]"])
    with pytest.raises(ValueError, match="camera 'nose' is not one of the policy's cameras"):
        TinyBackbone(cfg.model, spec)
    cfg = load_config(None, [f"model.views=[{{camera: {cam}, crop: [0, 1, 4, 5], size: 8}}]"])
    assert TinyBackbone(cfg.model, spec).image_spec(cam) == ImageSpec((8, 8), crop=(0, 1, 4, 5))
