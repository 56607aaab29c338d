"""Synthetic batches in exactly the window loader's format, and a resumable in-memory loader.

The batch format is the one ``vladata.loading.windows.WindowDataset`` documents (B batch, h history,
c chunk, A action dims): uint8 channels-last images, float32 state, normalised float32 actions
with the gripper as -1/+1, int64 tokens under the store's token layout, bool masks, strings.
Actions are a smooth function of the state so a model can learn them.
"""

from __future__ import annotations

import numpy as np
import torch

from vlatrain.spec import DataSpec

NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def make_spec(history: int = 1, chunk: int = 3, *, cameras=("static", "wrist"), size=(24, 24),
              state_dim: int = 5, language_dim: int = 8, bins: int = 16,
              token_offset: int = 10) -> DataSpec:
    """A spec like a CALVIN store's: 7-d actions, gripper last, ``bins`` tokens at ``offset+bin``."""
    centres = tuple(float(-1 + (b + 0.5) * 2 / bins) for b in range(bins))
    return DataSpec(cameras=tuple(cameras), image_shapes={c: (*size, 3) for c in cameras},
                    state_dim=state_dim, action_dim=7, action_names=NAMES,
                    gripper_dims=(6,), language_dim=language_dim, history=history, chunk=chunk,
                    token_ids=tuple(range(token_offset, token_offset + bins)),
                    bin_centers=centres)


def make_batch(spec: DataSpec, batch_size: int = 4, *, seed: int = 0, pad_first: int = 0) -> dict:
    """One batch; the first ``pad_first`` history steps of sample 0 are padding."""
    rng = np.random.default_rng(seed)
    b, h, c = batch_size, spec.history, spec.chunk
    state = rng.standard_normal((b, h, spec.state_dim)).astype(np.float32)
    t = np.arange(c, dtype=np.float32)[None, None, :, None]
    arm = np.tanh(0.5 * state[..., None, :6 if spec.state_dim >= 6 else spec.state_dim].sum(-1,
                  keepdims=True) + 0.1 * t) * np.ones((1, 1, 1, 6), np.float32)
    grip = np.where(state[..., None, :1] > 0, 1.0, -1.0) * np.ones((1, 1, c, 1), np.float32)
    action = np.concatenate([arm, grip], -1).astype(np.float32)  # (B, h, c, 7)
    bins = spec.n_bins or 16
    tok_bins = np.minimum(np.floor((action + 1) * bins / 2), bins - 1).astype(np.int64)
    tokens = np.asarray(spec.token_ids or range(bins), np.int64)[tok_bins]
    obs_mask = np.ones((b, h), bool)
    obs_mask[0, :pad_first] = False
    action_mask = np.ones((b, h, c), bool) & obs_mask[..., None]
    action_mask[1, :, c - 1:] = False  # the chunk of sample 1 runs past its segment end
    batch = {f"observation.images.{cam}": torch.from_numpy(
        rng.integers(0, 256, (b, h, *spec.image_shapes[cam]), dtype=np.uint8))
        for cam in spec.cameras}
    batch.update({
        "observation.state": torch.from_numpy(state),
        "action": torch.from_numpy(action),
        "action.tokens": torch.from_numpy(tokens),
        "action_mask": torch.from_numpy(action_mask),
        "obs_mask": torch.from_numpy(obs_mask),
        "language.embedding": torch.from_numpy(
            rng.standard_normal((b, spec.language_dim)).astype(np.float32)),
        "language_mask": torch.ones(b, dtype=torch.bool),
        "instruction": [f"open the drawer {i % 3}" for i in range(b)],
        "task": ["open_drawer"] * b,
        "episode_index": torch.arange(b, dtype=torch.int64),
        "frame_index": torch.arange(h, dtype=torch.int64).repeat(b, 1),
        "index": torch.arange(b, dtype=torch.int64) + seed * b,
    })
    return batch


class FakeLoader:
    """Cycles through ``n`` fixed batches in an epoch-seeded order; resumable like vladata's."""

    def __init__(self, spec: DataSpec, n: int = 6, batch_size: int = 4, seed: int = 0):
        self.batches = [make_batch(spec, batch_size, seed=seed * 1000 + i) for i in range(n)]
        self.seed, self.epoch, self.position = seed, 0, 0

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.batches))

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        epoch = self.epoch
        order = self._order()
        for k in range(self.position, len(order)):
            if self.epoch != epoch:
                return
            self.position = k + 1
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
            yield self.batches[order[k]]

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, d):
        self.epoch, self.position = d["epoch"], d["position"]

    def close(self):
        pass
