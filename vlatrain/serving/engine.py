"""Sessions over one policy runtime, and the micro-batching queue that feeds it.

The event loop never touches the policy: every policy call runs on one worker thread (so the
policy needs no locking), fed by :meth:`Engine.run_batches`, which takes whatever ``act``
requests are queued -- at most ``max_batch``, waiting up to ``batch_wait_ms`` for more after the
first -- and runs them as one ``runtime.act`` call. With ``batch_wait_ms = 0`` batching is
"natural": requests that arrive while a batch runs form the next one, so a lone client pays no
wait. ``max_batch = 1`` turns batching off.

A session is keyed by (connection, client's session id): two connections may both call their
session "0". The number of sessions is bounded per connection and in all; a connection's sessions
are dropped when it closes, including one whose request is still running (its result is
discarded).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vlatrain.serving.protocol import RequestError


class Runtime(Protocol):
    """What the engine needs of a policy (:class:`vlatrain.serving.runtime.PolicyRuntime`).

    ``new_state(instruction)`` is the state of a fresh episode (it refuses a bad instruction);
    ``act(states, obs, chunk)`` advances each state by one frame and returns, per request, the
    action (A,) or, where ``chunk`` is true, the whole predicted chunk (C, A). It either refuses
    the whole call before changing any state, or answers every request.
    """

    def describe(self) -> dict: ...

    def new_state(self, instruction: str): ...

    def act(self, states: list, obs: list[dict], chunk: list[bool]) -> list[np.ndarray]: ...


@dataclass
class Session:
    state: object
    instruction: str
    step: int = 0
    busy: bool = False


@dataclass
class _Item:
    session: Session
    obs: dict
    chunk: bool
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Engine:
    """Per-connection sessions and batched ``act`` calls on one worker thread."""

    def __init__(self, runtime: Runtime, *, max_sessions: int = 256,
                 max_sessions_per_connection: int = 64, max_batch: int = 16,
                 batch_wait_ms: float = 0.0, max_queue: int = 1024):
        self.runtime = runtime
        self.max_sessions, self.per_connection = max_sessions, max_sessions_per_connection
        self.max_batch, self.batch_wait = max_batch, batch_wait_ms / 1000
        self.sessions: dict[tuple[int, str], Session] = {}
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="vlatrain-policy")
        self.batches = self.batched_requests = 0

    async def call(self, fn, *args):
        """``fn(*args)`` on the policy thread."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def count(self, conn: int) -> int:
        return sum(1 for c, _ in self.sessions if c == conn)

    async def reset(self, conn: int, sid: str, instruction: str) -> Session:
        """Start session ``sid`` of ``conn`` over (opening it if new)."""
        old = self.sessions.get((conn, sid))
        if old is None and self.count(conn) >= self.per_connection:
            raise RequestError("too_many_sessions", f"this connection already has "
                               f"{self.per_connection} sessions: close one first")
        if old is None and len(self.sessions) >= self.max_sessions:
            raise RequestError("too_many_sessions", f"the server holds its maximum of "
                               f"{self.max_sessions} sessions: try later")
        if old is not None and old.busy:
            raise RequestError("session_busy", f"session {sid!r} has a request in flight")
        session = Session(None, instruction, busy=True)
        self.sessions[(conn, sid)] = session
        try:
            session.state = await self.call(self.runtime.new_state, instruction)
        except BaseException:
            if self.sessions.get((conn, sid)) is session:
                del self.sessions[(conn, sid)]
            raise
        finally:
            session.busy = False
        return session

    async def act(self, conn: int, sid: str, instruction: str, obs: dict,
                  chunk: bool) -> tuple[np.ndarray, int, dict]:
        """The action (or chunk) of session ``sid`` for ``obs``: (array, step, timing)."""
        t0 = time.perf_counter()
        session = self.sessions.get((conn, sid))
        if session is None:
            session = await self.reset(conn, sid, instruction)
        elif session.instruction != instruction:
            raise RequestError("instruction_mismatch", f"session {sid!r} runs the instruction "
                               f"{session.instruction!r:.200}, not {instruction!r:.200}: send "
                               "reset to change it")
        if session.busy:
            raise RequestError("session_busy", f"session {sid!r} has a request in flight")
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(session, obs, chunk, fut))
        except asyncio.QueueFull:
            raise RequestError("overloaded", f"{self.queue.maxsize} requests are queued: try "
                               "later") from None
        session.busy = True
        try:
            out, timing = await asyncio.shield(fut)
        finally:
            if fut.done():
                session.busy = False
            else:  # cancelled (timeout, closed connection): free the session when it finishes
                fut.add_done_callback(lambda _: setattr(session, "busy", False))
        session.step += 1
        return out, session.step, {**timing, "total_ms": (time.perf_counter() - t0) * 1e3}

    def drop(self, conn: int, sid: str | None = None) -> int:
        """Close session ``sid`` of ``conn``, or all of its sessions; how many were closed."""
        keys = [k for k in self.sessions if k[0] == conn and (sid is None or k[1] == sid)]
        for k in keys:
            del self.sessions[k]
        return len(keys)

    async def run_batches(self) -> None:
        """Forever: take queued requests, run them as one batch, resolve their futures."""
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.batch_wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            start = time.perf_counter()
            results = await self.call(self._run, batch)
            infer = (time.perf_counter() - start) * 1e3
            self.batches += 1
            self.batched_requests += len(batch)
            for item, (out, error) in zip(batch, results):
                if item.future.done():
                    continue
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result((out, {"queue_ms": (start - item.queued) * 1e3,
                                                  "infer_ms": infer, "batch": len(batch)}))

    def _run(self, batch: list[_Item]) -> list[tuple[np.ndarray | None, Exception | None]]:
        """One batched call; if the policy refuses it, each request alone, so that only the
        request at fault fails and the other sessions of the batch are answered."""
        try:
            outs = self.runtime.act([i.session.state for i in batch], [i.obs for i in batch],
                                    [i.chunk for i in batch])
            return [(o, None) for o in outs]
        except Exception as e:
            if len(batch) == 1:
                return [(None, e)]
        return [self._run([item])[0] for item in batch]

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
