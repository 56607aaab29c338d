"""``vlatrain serve``: a policy behind a WebSocket server (``websockets``' asyncio server).

One connection = one client (a robot, a simulator worker); it may drive several sessions (one per
environment it steps). The protocol is in :mod:`vlatrain.serving.protocol`, the encoding in
:mod:`vlatrain.serving.codec`, sessions and batching in :mod:`vlatrain.serving.engine`.

What keeps the server serving:

- **size**: a message over ``max_message_bytes`` closes its connection (code 1009, "message too
  big"), before it is buffered whole; at most ``max_connections`` connections, and a bounded
  number of sessions (per connection and in all), requests in flight per connection (more wait
  unread: the client's sends block) and queued requests. So at most about ``max_connections x
  (max_inflight_per_connection + 4)`` messages are held at once;
- **time**: a request not answered within ``request_timeout_s`` gets a ``timeout`` error; a
  response the client does not read within ``send_timeout_s``, or a connection silent for
  ``idle_timeout_s``, closes the connection; keepalive pings drop dead peers; the handshake has
  ``open_timeout_s``;
- **bad input**: a malformed message, an unknown field, a wrong observation key, shape or dtype get
  an ``error`` response naming the problem, and the connection stays open;
- **isolation**: the policy runs on one worker thread; a client that disconnects mid-request has
  its sessions dropped and its result discarded; nothing a client sends reaches another session.

``GET /healthz`` answers ``200`` with JSON counters (no token needed: it reveals only counts).
With a token, every WebSocket handshake must carry ``Authorization: Bearer <token>``; others get
``401``. The token is compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from vladata.errors import ObservationError, VladataError
from vlatrain.serving.codec import CodecError, pack, unpack
from vlatrain.serving.engine import Engine, Runtime
from vlatrain.serving.protocol import PROTOCOL, RequestError, error, parse_request

log = logging.getLogger("vlatrain.serve")


@dataclass
class ServeConfig:
    """How the server listens and what it bounds; see the module docstring."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_message_bytes: int = 8 << 20
    max_connections: int = 64
    max_sessions: int = 256
    max_sessions_per_connection: int = 64
    max_inflight_per_connection: int = 8
    max_batch: int = 16
    batch_wait_ms: float = 0.0
    max_queue: int = 1024
    request_timeout_s: float = 30.0
    send_timeout_s: float = 10.0
    idle_timeout_s: float | None = 600.0
    open_timeout_s: float = 10.0
    close_timeout_s: float = 2.0


class PolicyServer:
    """Serves ``runtime`` as configured; :meth:`serve_forever` or :meth:`start` (a thread)."""

    def __init__(self, runtime: Runtime, config: ServeConfig | None = None):
        self.runtime, self.config = runtime, config or ServeConfig()
        self.counters = {"connections": 0, "requests": 0, "errors": 0, "refused": 0}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port: int | None = None
        self.engine: Engine | None = None
        self._batcher: asyncio.Task | None = None

    # -- the HTTP side of the handshake: /healthz, connection limit, token --------------------
    def _process_request(self, connection, request):
        if request.path.split("?")[0] == "/healthz":
            h = self.health()
            return self._json(HTTPStatus.OK if h["status"] == "ok" else
                              HTTPStatus.SERVICE_UNAVAILABLE, h)
        if self.counters["connections"] >= self.config.max_connections:
            self.counters["refused"] += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"{self.config.max_connections} connections open\n")
        if self.config.token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.config.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                self.counters["refused"] += 1
                return connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong token (Authorization: Bearer ...)\n")
        return None

    @staticmethod
    def _json(status: HTTPStatus, body: dict) -> Response:
        from websockets.datastructures import Headers
        data = (json.dumps(body) + "\n").encode()
        return Response(status.value, status.phrase, Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]), data)

    def health(self) -> dict:
        """Counters, and ``status``: ``ok`` while the batching loop that feeds the policy runs."""
        e, alive = self.engine, self._batcher is not None and not self._batcher.done()
        return {"status": "ok" if alive else "stopped", **self.counters,
                "sessions": len(e.sessions) if e else 0,
                "queued": e.queue.qsize() if e else 0,
                "batches": e.batches if e else 0,
                "batched_requests": e.batched_requests if e else 0}

    def hello(self) -> dict:
        c = self.config
        return {"type": "spec", "protocol": PROTOCOL, "spec": self.runtime.describe(),
                "limits": {"max_message_bytes": c.max_message_bytes,
                           "max_sessions_per_connection": c.max_sessions_per_connection,
                           "request_timeout_s": c.request_timeout_s}}

    # -- one connection ------------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        conn = next(self._ids)
        self.counters["connections"] += 1
        slots = asyncio.Semaphore(self.config.max_inflight_per_connection)
        tasks: set[asyncio.Task] = set()
        try:
            await self._send(ws, self.hello())
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), self.config.idle_timeout_s)
                except asyncio.TimeoutError:
                    await ws.close(1008, f"idle for {self.config.idle_timeout_s} s")
                    break
                await slots.acquire()
                task = asyncio.create_task(self._serve_one(ws, conn, data))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
        except ConnectionClosed:
            pass
        finally:
            self.counters["connections"] -= 1
            for t in tasks:  # a cancelled reset removes the session it was opening
                t.cancel()
            self.engine.drop(conn)

    async def _serve_one(self, ws, conn: int, data) -> None:
        self.counters["requests"] += 1
        sid = rid = None
        try:
            try:
                msg = unpack(data)
                sid, rid = msg.get("session"), msg.get("id")
                req = parse_request(msg)
            except CodecError as e:
                raise RequestError("bad_message", str(e)) from None
            reply = await asyncio.wait_for(self._answer(conn, req), self.config.request_timeout_s)
        except RequestError as e:
            reply = error(e.code, str(e), sid, rid)
        except asyncio.TimeoutError:
            reply = error("timeout", f"no answer within {self.config.request_timeout_s} s; reset "
                          "the session before going on", sid, rid)
        except ObservationError as e:  # the policy's own check of a frame or instruction
            reply = error("bad_observation", str(e), sid, rid)
        except VladataError as e:
            reply = error("policy_error", str(e), sid, rid)
        except Exception as e:
            log.exception("request of connection %d failed", conn)
            reply = error("internal", f"{type(e).__name__}: {e}", sid, rid)
        if reply["type"] == "error":
            self.counters["errors"] += 1
            if not isinstance(sid, str):
                reply.pop("session", None)
            if isinstance(rid, (bool, float, list, dict)):
                reply.pop("id", None)
        try:
            await self._send(ws, reply)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass

    async def _answer(self, conn: int, req) -> dict:
        base = {"session": req.session, **({"id": req.id} if req.id is not None else {})}
        if req.type == "reset":
            await self.engine.reset(conn, req.session, req.instruction)
            return {"type": "reset", **base}
        if req.type == "close":
            self.engine.drop(conn, req.session)
            return {"type": "closed", **base}
        out, step, timing = await self.engine.act(conn, req.session, req.instruction, req.obs,
                                                  req.chunk)
        return {"type": "action", **base, "step": step,
                "actions" if req.chunk else "action": out, "server_timing": timing}

    async def _send(self, ws, message: dict) -> None:
        try:
            await asyncio.wait_for(ws.send(pack(message)), self.config.send_timeout_s)
        except asyncio.TimeoutError:  # the client does not read: drop it without waiting on it
            ws.transport.abort()
            raise

    # -- running -------------------------------------------------------------------------------
    async def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until :meth:`stop`; ``on_ready(url)`` is called once listening."""
        c = self.config
        self.engine = Engine(self.runtime, max_sessions=c.max_sessions,
                             max_sessions_per_connection=c.max_sessions_per_connection,
                             max_batch=c.max_batch, batch_wait_ms=c.batch_wait_ms,
                             max_queue=c.max_queue)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._batcher = batcher = asyncio.create_task(self.engine.run_batches())
        try:
            async with serve(self._handle, c.host, c.port, process_request=self._process_request,
                             max_size=c.max_message_bytes, open_timeout=c.open_timeout_s,
                             close_timeout=c.close_timeout_s,
                             max_queue=4, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                if on_ready is not None:
                    on_ready(self.url)
                await self._stop.wait()
        finally:
            batcher.cancel()
            self.engine.close()

    def start(self) -> str:
        """Serve on a background thread; returns the ``ws://`` URL once listening."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main():
            try:
                asyncio.run(self.serve_forever(lambda url: ready.set()))
            except BaseException as e:  # e.g. the port is taken: tell start()
                failed.append(e)
                ready.set()

        self._thread = threading.Thread(target=main, name="vlatrain-serve", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self.url

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
