"""The messages of the policy server, and their validation at the boundary.

After the WebSocket handshake the server sends one ``spec`` message; from then on the client sends
requests and the server answers each with one response carrying the request's ``session`` (and
``id``, if the request had one). All messages are msgpack maps (:mod:`vlatrain.serving.codec`).

Server -> client, on connect (``spec`` is ``RuntimeSpec.describe()`` of the served policy plus
its action width, chunk execution rule and device)::

    {"type": "spec", "protocol": 1,
     "spec": {"observations": {KEY: {"shape": [...], "dtype": "uint8"}, ...},
              "cameras": [...], "image_shapes": {CAM: [H, W, 3]}, "state_names": [...],
              "action_dim": A, "action_names": [...], "action_units": "...", "gripper": "...",
              "history": H, "chunk": C, "execution": "execute=1",
              "language": "text", "instruction_required": true, "instructions": [...],
              "checkpoint": "best.pt", "device": "cuda"},
     "limits": {"max_message_bytes": N, "max_sessions_per_connection": N,
                "request_timeout_s": T}}

Client -> server::

    {"type": "act", "session": S, "instruction": TEXT, "obs": {KEY: ndarray, ...},
     "chunk": false, "id": I}          # chunk and id optional
    {"type": "reset", "session": S, "instruction": TEXT, "id": I}
    {"type": "close", "session": S, "id": I}

Server -> client::

    {"type": "action", "session": S, "id": I, "step": n,
     "action": ndarray (A,) float32         # or, with "chunk": true,
     "actions": ndarray (C, A) float32,     # the whole predicted chunk
     "server_timing": {"queue_ms": q, "infer_ms": i, "total_ms": t, "batch": b}}
    {"type": "reset", "session": S, "id": I}        # acknowledges reset
    {"type": "closed", "session": S, "id": I}       # acknowledges close
    {"type": "error", "code": CODE, "message": TEXT, "session": S, "id": I}

An ``act`` for a session the connection has not used yet opens it with the request's
instruction; ``reset`` starts a session over (a new episode, perhaps a new instruction); an ``act``
whose instruction differs from its session's is refused (``reset`` first). Error codes:
:data:`ERROR_CODES`. Sessions belong to their connection and end with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vladata.errors import VladataError

PROTOCOL = 1
MAX_SESSION_ID = 128
MAX_INSTRUCTION = 2000
ERROR_CODES = {
    "bad_message": "not a msgpack map of the protocol (fields, types), or an unknown type",
    "bad_observation": "an observation key is missing or unknown, or has the wrong shape or dtype",
    "instruction_mismatch": "an act's instruction differs from its session's: reset first",
    "session_busy": "the session already has a request in flight",
    "too_many_sessions": "the connection or the server holds its maximum of sessions",
    "timeout": "the request took longer than the server's request timeout",
    "overloaded": "the server's request queue is full",
    "policy_error": "the policy refused the request",
    "internal": "an unexpected error in the server (logged there)",
}


class RequestError(VladataError, ValueError):
    """A request the server refuses; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    type: str                 # "act", "reset" or "close"
    session: str
    id: object = None         # echoed back (int or str), or None
    instruction: str = ""
    obs: dict | None = None   # act only: key -> ndarray, checked against the spec
    chunk: bool = False       # act only: answer with the whole chunk


_FIELDS = {"act": {"type", "session", "instruction", "obs", "chunk", "id"},
           "reset": {"type", "session", "instruction", "id"},
           "close": {"type", "session", "id"}}


def parse_request(msg: dict) -> Request:
    """``msg`` as a :class:`Request`, or :class:`RequestError` naming the problem.

    Only the message's form is checked here; the observation's keys, shapes and dtypes and the
    instruction are checked by the policy itself (``RuntimeSpec.check``, ``Policy.reset``), the
    same checks a local policy makes.
    """
    kind = msg.get("type")
    if kind not in _FIELDS:
        raise RequestError("bad_message", f"unknown message type {kind!r}; the server accepts "
                           f"{', '.join(sorted(_FIELDS))}")
    unknown = sorted(set(msg) - _FIELDS[kind])
    if unknown:
        raise RequestError("bad_message", f"{kind}: unknown fields {unknown}; expected "
                           f"{sorted(_FIELDS[kind])}")
    rid = msg.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
        raise RequestError("bad_message", f"{kind}: id must be an integer or a string")
    session = msg.get("session")
    if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_ID:
        raise RequestError("bad_message", f"{kind}: session must be a string of 1 to "
                           f"{MAX_SESSION_ID} characters, got {session!r:.60}")
    if kind == "close":
        return Request("close", session, rid)
    instruction = msg.get("instruction", "")
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION:
        raise RequestError("bad_message", f"{kind}: instruction must be a string of at most "
                           f"{MAX_INSTRUCTION} characters")
    if kind == "reset":
        return Request("reset", session, rid, instruction)
    chunk = msg.get("chunk", False)
    if not isinstance(chunk, bool):
        raise RequestError("bad_message", "act: chunk must be true or false")
    obs = msg.get("obs")
    if not isinstance(obs, dict):
        raise RequestError("bad_observation", "act: obs must be a map of observation keys to "
                           "arrays")
    return Request("act", session, rid, instruction, obs, chunk)


def error(code: str, message: str, session=None, rid=None) -> dict:
    out = {"type": "error", "code": code, "message": message}
    if session is not None:
        out["session"] = session
    if rid is not None:
        out["id"] = rid
    return out
