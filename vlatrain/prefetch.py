"""Fetch the next training batch in a background thread while the current one trains.

The vladata loader hands out batches that view reused buffers: a batch stays intact while the
next one is in use too, no longer. :class:`Prefetcher` therefore looks exactly one batch
ahead: it fetches batch ``k + 1`` as soon as the trainer has taken batch ``k``, so the
loader's bookkeeping (the inter-process queue, the first batch of a new epoch) overlaps with the
step's compute instead of adding to it. Epochs follow one another (the loader advances its
own epoch); an epoch without batches is an error.

``state_dict()`` is the loader's position as of the last batch *taken by the trainer* (saved
with each batch when it was fetched), so checkpoints resume exactly even though the loader
itself is one batch ahead. ``load_state_dict`` applies before the first batch only.
"""

from __future__ import annotations

import queue
import threading

from vladata.errors import StoreError


def forever(loader):
    """Batches of every epoch, one epoch after another (the loader advances its own epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise StoreError("the training loader yields no batches: the split has fewer windows "
                             "than one batch per process (lower data.batch_size)")


class Prefetcher:
    """Wraps a resumable loader; iterate it for an endless stream of training batches."""

    def __init__(self, loader):
        self.loader = loader
        self._items: queue.Queue = queue.Queue()
        self._may_fetch = threading.Semaphore(0)  # one batch ahead of the trainer, no more
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = None

    def _stream(self):
        """(batch, loader position after it) of every epoch, one epoch after another."""
        for batch in forever(self.loader):
            yield batch, self.loader.state_dict()

    def _run(self, stream) -> None:
        try:
            while True:
                while not self._may_fetch.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                self._items.put((*next(stream), None))
        except BaseException as e:  # noqa: BLE001 -- handed to the trainer's thread
            self._items.put((None, None, e))

    def __iter__(self):
        if self._thread is None:
            stream = self._stream()
            # the first batch is fetched here, so loader worker processes fork from this thread
            try:
                self._items.put((*next(stream), None))
            except Exception as e:  # noqa: BLE001 -- raised below, like the thread's errors
                self._items.put((None, None, e))
            self._thread = threading.Thread(target=self._run, args=(stream,),
                                            name="vlatrain-prefetch", daemon=True)
            self._thread.start()
        while True:
            batch, state, err = self._items.get()
            if err is not None:
                raise err
            self._state = state
            self._may_fetch.release()  # the previous batch is done with: fetch the next one
            yield batch

    def state_dict(self) -> dict:
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict after the prefetcher started")
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.loader.close()


__all__ = ["Prefetcher", "forever"]
