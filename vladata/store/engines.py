"""Where the parts of a conversion run: a local process pool, or Ray tasks on a cluster.

The writer (:mod:`vladata.store.writer`) plans a conversion in independent parts, each done when
its marker ``meta/parts/part-NNNNN.json`` is in the store; an engine only decides where the parts
run. Either engine calls the same ``write_part(job, k, rows, report)`` function, so a store is the
same byte for byte whichever wrote it, and ``--resume`` under one engine reuses the parts another
finished (the markers are the only record).

- :class:`LocalEngine` (``workers=N``): ``N`` spawned processes on this machine
  (:mod:`vladata.workers`: they leave Ctrl-C to the parent and die with it); progress comes
  through a queue, frame by frame.
- :class:`RayEngine` (``engine="ray"``, ``pip install vlakit[ray]``): one Ray task per part, on
  the cluster at ``address`` (``ray.init(address=...)``), or on a Ray started here when there is
  none. A task whose worker process or node dies is run again (``max_retries``): parts are
  idempotent (every file of a part is written whole, under a temporary name or in one PUT, and the
  marker last). An error of the data (a :class:`~vladata.errors.VladataError`) is not retried: it
  stops the conversion and is raised as itself. A part that still fails raises
  :class:`EngineError`; the parts finished so far keep their markers and ``--resume`` does the
  rest. Progress is a bar fed by task completions (a part's frames at once).

Every node must reach the output path (a shared filesystem, or an object store URL: see
docs/scale-out.md) and import the same vlakit.
"""

from __future__ import annotations

import ipaddress
import multiprocessing as mp
import os
import queue as queue_mod
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import vladata.workers as workers_mod
from vladata.errors import VladataError

ENGINES = ("local", "ray")
_progress_queue = None  # set in local worker processes


class EngineError(VladataError, RuntimeError):
    """Parts of a conversion could not be run (a Ray worker or node kept failing, no cluster)."""


def make(engine: str = "local", *, workers: int = 1, address: str | None = None,
         max_retries: int = 3):
    """The engine called ``engine`` (one of :data:`ENGINES`)."""
    if engine == "local":
        if address:
            raise EngineError(f"--address {address} is for --engine ray; the local engine "
                              "runs on this machine")
        return LocalEngine(workers)
    if engine == "ray":
        return RayEngine(address=address, max_retries=max_retries,
                         num_cpus=workers if workers > 1 else None)
    raise EngineError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")


class LocalEngine:
    """Parts in ``workers`` spawned processes (or in this process when ``workers`` is 1)."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def run(self, write_part, job, parts, todo, bar) -> None:
        if self.workers <= 1 or len(todo) <= 1:
            for k in todo:
                write_part(job, k, parts[k], bar.update)
            return
        ctx = mp.get_context("spawn")
        pool = None
        try:
            with workers_mod.spawning():  # workers leave Ctrl-C to this process
                q = ctx.Queue()
                pool = ProcessPoolExecutor(max_workers=min(self.workers, len(todo)),
                                           mp_context=ctx, initializer=_init_worker,
                                           initargs=(q, os.getpid()))
                pending = {pool.submit(_local_part, write_part, job, k, parts[k]) for k in todo}
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                _drain(q, bar)
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()
            _drain(q, bar)
        except BaseException:  # a failed part, or Ctrl-C: stop the others now
            if pool is not None:
                workers_mod.terminate(pool)
            raise
        pool.shutdown()


def _init_worker(q, parent_pid: int) -> None:
    global _progress_queue
    workers_mod.init_worker(parent_pid)
    _progress_queue = q


def _local_part(write_part, job, k: int, rows) -> None:
    write_part(job, k, rows, _progress_queue.put)


def _drain(q, bar) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue_mod.Empty:
            return


class RayEngine:
    """Parts as Ray tasks (see the module docstring).

    ``address``: a running cluster (``ray://...`` or ``HOST:PORT``; ``"auto"`` finds the local
    one); None starts a Ray here for this run and shuts it down after. ``num_cpus`` limits that
    local Ray (``--workers``). Each task asks for one CPU.
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 3,
                 num_cpus: int | None = None):
        self.address, self.max_retries, self.num_cpus = address, max_retries, num_cpus

    def run(self, write_part, job, parts, todo, bar) -> None:
        ray = _import_ray()
        if not todo:  # a resume with every part done: no Ray to start
            return
        started = not ray.is_initialized()
        if started:
            init_ray(self.address, num_cpus=self.num_cpus)
        try:
            self._run(ray, write_part, job, parts, todo, bar)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, write_part, job, parts, todo, bar) -> None:
        task = ray.remote(num_cpus=1, max_retries=self.max_retries,
                          retry_exceptions=False)(_ray_part)
        job_ref = ray.put(job)
        refs = {task.remote(write_part, job_ref, k, parts[k]): k for k in todo}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for ref in done:
                    k = refs.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, VladataError):
                            raise cause from None
                        raise EngineError(f"part {k} (rows {parts[k][0]}..{parts[k][1]}) failed "
                                          f"in a Ray task: {e}") from None
                    except ray.exceptions.RayError as e:  # worker or node died, retries spent
                        raise EngineError(
                            f"part {k} (rows {parts[k][0]}..{parts[k][1]}) failed after "
                            f"{self.max_retries} retries ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); the finished parts "
                            "are kept: rerun with --resume") from None
                    bar.update(parts[k][1] - parts[k][0])
        except BaseException:
            for ref in refs:  # stop what is still queued or running
                try:
                    ray.cancel(ref, force=True)
                except (ray.exceptions.RayError, ValueError, TypeError):
                    pass  # finished meanwhile
            raise


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a Ray here (``num_cpus`` of it)."""
    ray = _import_ray()
    _token_auth_if_configured()
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     **_loopback_node(address))
        else:
            ray.init(num_cpus=num_cpus, logging_level="ERROR", log_to_driver=False,
                     include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EngineError(f"cannot {'join Ray at ' + address if address else 'start Ray'}: "
                          f"{e}") from None


def _ray_part(write_part, job, k: int, rows) -> int:
    write_part(job, k, rows, None)
    return os.getpid()


def _token_auth_if_configured() -> None:
    """Ray (2.60) servers use token authentication by default, but a driver joining a cluster
    sends its token only in token mode: given a token (``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH``) and no ``RAY_AUTH_MODE``, use it."""
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN")
                                              or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray read its configuration from the environment when imported: read it again
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError):
            pass


def _loopback_node(address: str) -> dict:
    """A cluster on this machine's loopback (head at e.g. 127.0.0.2; Ray on Linux rewrites
    127.0.0.1): the driver joins as that address, or Ray finds no node of its own IP here."""
    host = address.split("://")[-1].rsplit(":", 1)[0]
    try:
        return {"_node_ip_address": host} if ipaddress.ip_address(host).is_loopback else {}
    except ValueError:  # a host name
        return {}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray: pip install 'vlakit[ray]'") from None
    return ray


__all__ = ["ENGINES", "EngineError", "make", "init_ray", "LocalEngine", "RayEngine"]
