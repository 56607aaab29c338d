"""Worker processes that leave Ctrl-C to their parent and die with it.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group: without care each
worker of a pool prints its own ``KeyboardInterrupt`` traceback. Here workers never act on SIGINT
(:func:`spawning` makes them start with it blocked, :func:`init_worker` ignores it), the parent
alone gets the ``KeyboardInterrupt``, stops the workers (:func:`terminate`) and reports once.

A parent killed outright (SIGKILL, OOM killer) runs no cleanup, so each worker watches it: on
Linux the kernel sends the worker SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``),
elsewhere a thread polls the parent's pid. With the workers gone, the multiprocessing resource
tracker, whose pipe they held, exits too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def spawning():
    """Processes started inside this block (by this thread) start with SIGINT blocked: the
    signal mask is inherited across fork and exec, so a Ctrl-C while they import cannot raise
    in them; :func:`init_worker` then ignores it. The parent's own Ctrl-C is not lost: another
    thread takes it, or it waits until the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()  # started later, it would unblock SIGINT here (CPython)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def init_worker(parent_pid: int) -> None:
    """Call first in a worker: ignore SIGINT, and exit as soon as ``parent_pid`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also drops one that came while it started
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux") and _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent_pid:  # the parent died before the prctl call
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="vlakit-parent-watch").start()


def terminate(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s workers now (SIGTERM), whatever they are doing; then shut it down."""
    stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if stop is not None:
        stop()
    else:
        for p in list((getattr(pool, "_processes", None) or {}).values()):
            if p.is_alive():
                p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _set_parent_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


__all__ = ["spawning", "init_worker", "terminate"]
