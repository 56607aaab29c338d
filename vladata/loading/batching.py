"""The batch path: windows written straight into preallocated, reused batch buffers.

torch's default collate allocates fresh tensors for every batch, and first touch of fresh memory
runs at ~2.3 GB/s: the same store's windows through torch's default collate come at 595/679
windows/s (0/2 workers) against 3,123/4,706 on this batch path (BENCHMARKS.md, "Window loading",
cases (a) and (a'), ``benchmarks/loader.py``). So :class:`BatchLoader` allocates once, for ``slots`` batches, one arena of memory
(shared memory when worker processes fill it, page-locked in place with ``pin_memory=True`` so a
``.to("cuda", non_blocking=True)`` is a DMA), and workers write each window straight into its
row of a slot -- images are ``pread`` or JPEG-decoded into it. Only small messages travel
between processes: (batch number, slot, window indices) out, the batch's strings back.

A yielded batch is a dict of torch tensors that *view* a slot, plus lists of strings. The slot is
reused: a batch stays intact while the next batch is in use too (the last two yielded batches are
never overwritten, across epochs as well), so ``clone()`` whatever must live longer. Slots go
round in the order batches are yielded, counted over the loader's whole life (not per epoch), and
at most ``slots - 2`` batches are in flight, so the two a consumer may still hold are never
written to.

Producers (:class:`vladata.loading.windows.WindowDataset`, the streaming and mixture datasets) provide
``sample_spec() -> {name: (shape, dtype)}`` and ``fill_batch(arrays, task) -> {"n": rows, lists}``
and, optionally, ``worker_init(worker_id, num_workers)``. The plan (a
:class:`vladata.loading.sampler.WindowSampler` or alike) provides ``num_batches``, ``epoch``,
``position``, ``batch(k)`` (the task of batch ``k``), ``advance``, ``set_epoch`` and
``state_dict``/``load_state_dict``. Batch ``k`` is made by worker ``k % num_workers`` and batches
are yielded in order, so the sequence does not depend on ``num_workers`` or timing.
"""

from __future__ import annotations

import os
import queue
import traceback
import warnings
import weakref

import numpy as np
import torch
import torch.multiprocessing as tmp

from vladata.errors import VladataError

_ALIGN = 64


class LoaderError(VladataError, RuntimeError):
    """A loader worker failed, died or timed out; the message carries the worker's traceback."""


class _Layout:
    """Byte offsets of every field of every slot inside one arena."""

    def __init__(self, spec: dict, batch_size: int, slots: int):
        self.spec = {k: (tuple(shape), np.dtype(dt)) for k, (shape, dt) in spec.items()}
        self.batch_size, self.slots = batch_size, slots
        self.offsets: list[dict[str, int]] = []
        pos = 0
        for _ in range(slots):
            offs = {}
            for k, (shape, dt) in self.spec.items():
                offs[k] = pos
                pos += -(-batch_size * int(np.prod(shape, dtype=np.int64)) * dt.itemsize // _ALIGN) * _ALIGN
            self.offsets.append(offs)
        self.nbytes = max(pos, _ALIGN)

    def views(self, arena: np.ndarray, slot: int) -> dict[str, np.ndarray]:
        out = {}
        for k, (shape, dt) in self.spec.items():
            n = self.batch_size * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            o = self.offsets[slot][k]
            out[k] = arena[o:o + n].view(dt).reshape(self.batch_size, *shape)
        return out


def _arena_numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


def _worker_loop(producer, arena: torch.Tensor, layout: _Layout, worker_id: int, num_workers: int,
                 tasks, results, parent: int) -> None:
    torch.set_num_threads(1)
    try:
        init = getattr(producer, "worker_init", None)
        if init is not None:
            init(worker_id, num_workers)
        views = [layout.views(_arena_numpy(arena), s) for s in range(layout.slots)]
        while True:
            try:
                msg = tasks.get(timeout=5.0)
            except queue.Empty:
                if os.getppid() != parent:  # the main process died without stopping us
                    return
                continue
            if msg is None:
                return
            gen, k, slot, task = msg
            try:
                meta = producer.fill_batch(views[slot], task)
                results.put((gen, k, slot, meta, None))
            except Exception as e:  # report, keep serving: the main process raises it
                results.put((gen, k, slot, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    except KeyboardInterrupt:
        return


def _shutdown(procs, task_qs, results) -> None:
    for q in task_qs:
        try:
            q.put(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for q in [*task_qs, *([results] if results is not None else [])]:
        q.cancel_join_thread()
        q.close()


def _unregister(arena: torch.Tensor) -> None:
    """Undo the cudaHostRegister of a shared arena (before its memory is released)."""
    torch.cuda.cudart().cudaHostUnregister(arena.data_ptr())


class BatchLoader:
    """Iterates a plan's batches of a producer through reused buffers; see the module docstring."""

    def __init__(self, producer, plan, *, batch_size: int, num_workers: int = 2, prefetch: int = 2,
                 pin_memory: bool = False, multiprocessing_context: str | None = None,
                 timeout: float = 300.0):
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"need num_workers >= 0 and prefetch >= 1, got {num_workers}, {prefetch}")
        self.dataset, self.sampler = producer, plan
        self.batch_size, self.num_workers, self.prefetch = int(batch_size), int(num_workers), int(prefetch)
        self.timeout = float(timeout)
        self.context = multiprocessing_context
        self._held = 2  # the last two yielded batches are never overwritten
        slots = self._held if num_workers == 0 else num_workers * prefetch + self._held
        self.layout = _Layout(producer.sample_spec(), self.batch_size, slots)
        self.pin_memory = bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True but CUDA is not available: batches are not pinned")
            self.pin_memory = False
        self._arena: torch.Tensor | None = None
        self._procs: list = []
        self._task_qs: list = []
        self._results = None
        self._gen = 0
        self._outstanding = 0
        self._seq = 0  # batches yielded so far, over every epoch: batch seq uses slot seq % slots
        self._finalizer = None
        self._unpin = None

    # -- resources ------------------------------------------------------------------------------
    def _alloc(self) -> None:
        if self._arena is not None:
            return
        n = self.layout.nbytes
        if self.num_workers == 0:
            self._arena = torch.empty(n, dtype=torch.uint8, pin_memory=self.pin_memory)
        else:
            self._arena = torch.empty(n, dtype=torch.uint8).share_memory_()
            if self.pin_memory:
                rc = torch.cuda.cudart().cudaHostRegister(self._arena.data_ptr(), n, 0)
                if int(rc) != 0:
                    raise LoaderError(f"cudaHostRegister of the {n}-byte batch arena failed ({rc})")
                self._unpin = weakref.finalize(self, _unregister, self._arena)
        self._arena.zero_()  # touch every page once, here, not on the hot path
        arena = _arena_numpy(self._arena)
        self._np = [self.layout.views(arena, s) for s in range(self.layout.slots)]
        self._torch = [{k: torch.from_numpy(v) for k, v in slot.items()} for slot in self._np]

    def _start(self) -> None:
        if self._procs:
            return
        ctx = tmp.get_context(self.context)
        self._results = ctx.Queue()
        for w in range(self.num_workers):
            q = ctx.Queue()
            p = ctx.Process(target=_worker_loop, daemon=True, name=f"vladata-loader-{w}",
                            args=(self.dataset, self._arena, self.layout, w, self.num_workers, q,
                                  self._results, os.getpid()))
            p.start()
            self._procs.append(p)
            self._task_qs.append(q)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._task_qs,
                                           self._results)

    def close(self) -> None:
        """Stop the worker processes and close their queues (also done when it is collected).

        The batch arena stays (pinned, if it was) for a later iteration; it is released, and
        unregistered from CUDA, with the loader.
        """
        if self._finalizer is not None:
            self._finalizer()
        self._procs, self._task_qs, self._finalizer, self._outstanding = [], [], None, 0
        self._results = None

    def _get(self):
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                for w, p in enumerate(self._procs):
                    if not p.is_alive():
                        self.close()
                        raise LoaderError(f"loader worker {w} (pid {p.pid}) exited with code "
                                          f"{p.exitcode}") from None
                if waited >= self.timeout:
                    self.close()
                    raise LoaderError(f"no batch from the loader workers in {self.timeout:.0f} s") from None

    def _drain(self) -> None:
        """Wait for batches an abandoned iteration still has in flight (they write into slots)."""
        while self._outstanding:
            self._get()
            self._outstanding -= 1

    # -- iteration ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.sampler.num_batches

    def _batch(self, slot: int, meta: dict) -> dict:
        n = meta.get("n", self.batch_size)
        out = {k: (v if n == self.batch_size else v[:n]) for k, v in self._torch[slot].items()}
        out.update({k: v for k, v in meta.items() if k != "n"})
        return out

    def __iter__(self):
        self._alloc()
        plan = self.sampler
        start, end = plan.position, plan.num_batches
        if self.num_workers == 0:
            init = getattr(self.dataset, "worker_init", None)
            if init is not None:
                init(0, 1)
            for k in range(start, end):
                slot = self._seq % self.layout.slots
                meta = self.dataset.fill_batch(self._np[slot], plan.batch(k))
                plan.advance(k + 1)
                expect = (plan.epoch, plan.position)
                self._seq += 1
                yield self._batch(slot, meta)
                if (plan.epoch, plan.position) != expect:
                    return  # set_epoch / load_state_dict during the pass
            return
        self._start()
        self._drain()
        self._gen += 1
        gen, W, slots = self._gen, self.num_workers, self.layout.slots
        ahead = slots - self._held  # in flight at once: never into a slot the consumer may hold
        base = self._seq - start  # batch k of this pass is the loader's batch base + k
        pending: dict[int, tuple[int, dict]] = {}
        nxt = start
        for k in range(start, end):
            while nxt < end and nxt - k < ahead:
                self._task_qs[nxt % W].put((gen, nxt, (base + nxt) % slots, plan.batch(nxt)))
                self._outstanding += 1
                nxt += 1
            while k not in pending:
                g, k2, slot, meta, err = self._get()
                self._outstanding -= 1
                if g != gen:
                    continue
                if err is not None:
                    self._drain()
                    raise LoaderError(f"loader worker {k2 % W} failed on batch {k2}:\n{err}")
                pending[k2] = (slot, meta)
            slot, meta = pending.pop(k)
            plan.advance(k + 1)
            expect = (plan.epoch, plan.position)
            self._seq += 1
            yield self._batch(slot, meta)
            if (plan.epoch, plan.position) != expect:
                return

    # -- position -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        """JSON-able position: load it into a new loader to continue with the very next batch."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


__all__ = ["BatchLoader", "LoaderError"]
