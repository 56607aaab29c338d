"""A distributed, resumable batch sampler over window indices.

Every epoch draws one permutation of ``0..num_windows-1`` from ``(seed, epoch)`` -- the same on
every rank -- and deals it out: rank ``r`` of ``world_size`` takes positions ``r, r+world, ...``.
``drop_last=True`` first cuts the permutation to a multiple of ``world_size`` and each rank's share
to whole batches, so no window appears twice in an epoch; ``drop_last=False`` wraps the
permutation around to fill the last places instead (a few windows then appear twice) and keeps a
short last batch. Either way every rank has the same number of batches, so collective operations
never wait on a rank that ran out.

Within a rank, batch ``k`` belongs to worker ``k % num_workers`` (:meth:`worker_batches`); the
loader yields batches in order ``k = 0, 1, ...`` whatever worker made them.

Position: ``epoch`` and ``position`` (batches of this epoch already handed to the consumer).
``state_dict()``/``load_state_dict()`` save and restore them, so a resumed run continues with
exactly the batch the interrupted run would have produced next. A loader that prefetches must
advance ``position`` when it *yields* a batch, not when it asks for one (``vladata.loading.batching``
does); plain iteration (``for b in sampler``) advances it as it goes, and finishing an epoch moves
to the next one (``set_epoch`` sets it explicitly).
"""

from __future__ import annotations

import numpy as np
import torch.utils.data

from vladata.errors import VladataError


class SamplerStateError(VladataError, ValueError):
    """A saved sampler state does not fit this sampler (other data, batch size or world size)."""


class WindowSampler(torch.utils.data.Sampler):
    """Batches (lists of window indices) for one rank; see the module docstring."""

    def __init__(self, num_windows: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if num_windows < 0:
            raise ValueError(f"num_windows must be >= 0, got {num_windows}")
        self.num_windows, self.batch_size = int(num_windows), int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, np.ndarray] | None = None

    # -- the epoch's order ----------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        """Windows each rank sees per epoch."""
        if self.drop_last:
            return self.num_windows // self.world_size
        return -(-self.num_windows // self.world_size)

    @property
    def num_batches(self) -> int:
        """Batches per epoch, the same on every rank."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def rank_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's windows of ``epoch`` (default: the current one) in the order they are used."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n, world = self.num_windows, self.world_size
        order = self.epoch_order(epoch)
        total = self.per_rank * world
        if total > n and n:  # drop_last=False: wrap around to fill every rank's share
            order = np.concatenate([order, np.resize(order, total - n)])
        mine = order[self.rank:total:world]
        if self.drop_last:
            mine = mine[:self.num_batches * self.batch_size]
        mine = mine.astype(np.int64)
        self._cache = (epoch, mine)
        return mine

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All ``num_windows`` positions of ``epoch`` in order, before the split across ranks."""
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        return np.arange(self.num_windows)

    def batch(self, k: int, epoch: int | None = None) -> np.ndarray:
        """Window indices of batch ``k`` of ``epoch`` (int64)."""
        if not 0 <= k < self.num_batches:
            raise IndexError(f"batch {k} outside 0..{self.num_batches - 1}")
        b = self.batch_size
        return self.rank_indices(epoch)[k * b:(k + 1) * b]

    def worker_batches(self, worker_id: int, num_workers: int, start: int | None = None) -> range:
        """Batch numbers worker ``worker_id`` of ``num_workers`` makes, from ``start`` (the position)."""
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker {worker_id} is not in 0..{num_workers - 1}")
        start = self.position if start is None else start
        first = start + (worker_id - start) % num_workers
        return range(first, self.num_batches, num_workers)

    # -- position -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order; the position restarts at 0 unless the epoch is the current one."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, k: int) -> None:
        """Mark batches ``< k`` of this epoch as consumed; at the end, move to the next epoch."""
        self.position = int(k)
        if self.position >= self.num_batches:
            self.epoch, self.position = self.epoch + 1, 0

    def __iter__(self):
        epoch = self.epoch
        for k in range(self.position, self.num_batches):
            if self.epoch != epoch:
                return  # set_epoch/load_state_dict during iteration: stop this pass
            batch = self.batch(k).tolist()
            self.advance(k + 1)
            yield batch

    def state_dict(self) -> dict:
        """JSON-able position and the settings it is only valid for."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_windows": self.num_windows, "batch_size": self.batch_size,
                "world_size": self.world_size, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (on any rank of the same run)."""
        mismatched = [f"{k}: saved {state[k]!r}, here {getattr(self, k)!r}"
                      for k in ("seed", "num_windows", "batch_size", "world_size", "shuffle", "drop_last")
                      if k in state and state[k] != getattr(self, k)]
        if mismatched:
            raise SamplerStateError("cannot resume: the saved sampler state is for a different "
                                    "setup (" + "; ".join(mismatched) + ")")
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise SamplerStateError(f"sampler state lacks {missing}")
        if not 0 <= int(state["position"]) <= self.num_batches:
            raise SamplerStateError(f"saved position {state['position']} is outside 0..{self.num_batches}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


__all__ = ["WindowSampler", "SamplerStateError"]
