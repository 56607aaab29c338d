"""``RemotePolicy``: a policy served by ``vlatrain serve``, with the local policy's interface.

>>> policy = RemotePolicy("ws://gpu-box:8000", token="...")  # doctest: +SKIP
>>> policy.reset("open the drawer")                          # doctest: +SKIP
>>> action = policy.act(obs)   # (A,) float32, in the dataset's units  # doctest: +SKIP

``reset``/``act`` drive session ``"0"`` of the connection; ``reset_batch``/``act_batch`` drive
sessions ``"0"`` .. ``"B-1"`` (one per environment) and send the B requests before reading the
answers, so the server can run them as one batch. ``act_chunk`` returns the whole predicted chunk
(C, A) instead of the next action. ``spec`` is the server's description of the policy,
``last_timing`` the server timing of the last answer. Refusals and lost connections raise
:class:`vladata.errors.PolicyServerError` with the server's error code and message.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import connect

from vladata.errors import PolicyServerError
from vlatrain.serving.codec import CodecError, pack, unpack


class RemotePolicy:
    """A connection to a policy server; see the module docstring."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 max_message_bytes: int = 64 << 20):
        self.url, self.timeout = url, timeout
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        self._stack = ExitStack()  # connect() is a context manager; close() leaves it
        try:
            self._ws = self._stack.enter_context(connect(
                url, additional_headers=headers, max_size=max_message_bytes, open_timeout=timeout,
                compression=None))
        except InvalidStatus as e:
            body = e.response.body.decode(errors="replace").strip()
            raise PolicyServerError(f"{url}: the server refused the connection: HTTP "
                                    f"{e.response.status_code} {body}", "refused") from None
        except (OSError, InvalidURI, TimeoutError) as e:
            raise PolicyServerError(f"{url}: cannot connect: {e}", "unreachable") from None
        hello = self._recv()
        if hello.get("type") != "spec":
            raise PolicyServerError(f"{url}: expected the server's spec first, got {hello!r:.200}")
        self.spec, self.limits = hello["spec"], hello["limits"]
        self.last_timing: dict = {}
        self._ids = itertools.count()
        self._sessions: list[str] = []   # the instructions of sessions "0", "1", ...

    # -- the Policy interface ------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        self.reset_batch([instruction])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next action (A,) for ``obs`` in session ``"0"``."""
        return self.act_batch([obs])[0]

    def act_chunk(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The whole predicted chunk (C, A) for ``obs`` in session ``"0"``."""
        return self._exchange([self._act(0, obs, chunk=True)])[0]["actions"]

    def reset_batch(self, instructions: list[str]) -> None:
        """Start sessions ``"0"`` .. ``"B-1"`` over, one per instruction; close any others."""
        requests = [{"type": "reset", "session": str(i), "instruction": text}
                    for i, text in enumerate(instructions)]
        requests += [{"type": "close", "session": str(i)}
                     for i in range(len(instructions), len(self._sessions))]
        self._exchange(requests)
        self._sessions = list(instructions)

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """The next actions (B, A) of sessions ``"0"`` .. ``"B-1"``, one per observation."""
        if len(observations) != len(self._sessions):
            raise PolicyServerError(f"act_batch got {len(observations)} observations for "
                                    f"{len(self._sessions)} sessions: reset_batch first")
        replies = self._exchange([self._act(i, o) for i, o in enumerate(observations)])
        return np.stack([r["action"] for r in replies])

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- wire ----------------------------------------------------------------------------------
    def _act(self, i: int, obs: dict, chunk: bool = False) -> dict:
        if i >= len(self._sessions):
            raise PolicyServerError("act before reset: call reset(instruction) first")
        msg = {"type": "act", "session": str(i), "instruction": self._sessions[i], "obs": obs}
        return {**msg, "chunk": True} if chunk else msg

    def _exchange(self, requests: list[dict]) -> list[dict]:
        """Send every request, then read one answer per request; answers in request order."""
        ids = []
        try:
            for r in requests:
                ids.append(next(self._ids))
                self._ws.send(pack({**r, "id": ids[-1]}))
        except ConnectionClosed as e:
            raise self._closed(e) from None
        answers = {}
        while len(answers) < len(ids):
            reply = self._recv()
            answers[reply.get("id")] = reply
        out = [answers[i] for i in ids]
        for reply in out:
            if reply.get("type") == "error":
                raise PolicyServerError(f"{self.url}: session {reply.get('session')}: "
                                        f"{reply['code']}: {reply['message']}", reply["code"])
        self.last_timing = out[-1].get("server_timing", {})
        return out

    def _recv(self) -> dict:
        try:
            return unpack(self._ws.recv(timeout=self.timeout))
        except ConnectionClosed as e:
            raise self._closed(e) from None
        except TimeoutError:
            raise PolicyServerError(f"{self.url}: no answer within {self.timeout} s",
                                    "timeout") from None
        except CodecError as e:
            raise PolicyServerError(f"{self.url}: undecodable answer: {e}") from None

    def _closed(self, e: ConnectionClosed) -> PolicyServerError:
        rcvd = e.rcvd
        why = f"code {rcvd.code}: {rcvd.reason}" if rcvd is not None else "no close frame"
        return PolicyServerError(f"{self.url}: the server closed the connection ({why})", "closed")
