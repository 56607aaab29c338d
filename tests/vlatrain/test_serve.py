"""The policy server, for real on loopback: remote = local, bad input, tokens, concurrency.

A checkpoint of a 2-step run on three scripted Meta-World `reach` episodes (32x32 cameras) is as
good as any for exactness; the server runs in a thread of the test process (``PolicyServer.start``
on a free port) or, for the CLI, in a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import vladata
from vladata.errors import PolicyServerError
from vlatrain.config import load_config
from vlatrain.policy import Policy
from vlatrain.recipes.train import run
from vlatrain.serving.client import RemotePolicy
from vlatrain.serving.codec import CodecError, pack, unpack
from vlatrain.serving.runtime import PolicyRuntime
from vlatrain.serving.server import PolicyServer, ServeConfig

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.threads=1", "data.num_workers=0", "data.batch_size=4", "model.width=16",
        "model.hidden=32", "model.layers=1", "log.progress=false", "log.tensorboard=false",
        "eval.batches=1", "eval.batch_size=8", "train.steps=2", "train.checkpoint_every=2",
        "data.history=2", "data.chunk=4", "model.history=history", "model.head=gpt",
        "model.language=text", "model.image_size=24", "data.over=episodes"]
INSTRUCTION = "reach the goal position"


@pytest.fixture(scope="module")
def ckpt(mw_store, tmp_path_factory):
    """A 2-step run on conftest's three Meta-World `reach` episodes (32x32 cameras)."""
    out = tmp_path_factory.mktemp("run") / "run"
    run(load_config(None, [f"data.path={mw_store}", f"out={out}", *TINY]))
    return out / "checkpoints" / "step_0000002.pt"


@pytest.fixture(scope="module")
def frames(mw_store, ckpt):
    """Observation frames of two stored episodes, as an environment would hand them over."""
    ds = vladata.open(mw_store)
    keys = list(Policy.load(ckpt, "cpu").spec.observations)
    eps = [ds.episode(i, keys) for i in (0, 1)]
    return [[{k: ep[k][t] for k in keys} for t in range(12)] for ep in eps]


def serve(ckpt, **config) -> PolicyServer:
    runtime = PolicyRuntime.load(ckpt, "cpu", execute=config.pop("execute", None))
    server = PolicyServer(runtime, ServeConfig(port=0, **config))
    server.start()
    return server


@pytest.fixture(scope="module")
def server(ckpt):
    s = serve(ckpt, max_message_bytes=64 << 10, max_sessions_per_connection=4)
    yield s
    s.stop()


def health(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def settled(server, **expected) -> dict:
    """/healthz once the server has noticed closed connections (it answers at once; the close
    handshake may still be on its way)."""
    for _ in range(600):
        h = health(server)
        if all(h[k] == v for k, v in expected.items()):
            return h
        time.sleep(0.05)
    return h


class Raw:
    """A bare WebSocket client speaking the protocol by hand (for messages RemotePolicy never
    sends)."""

    def __init__(self, server, **kw):
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(connect(server.url, max_size=None, **kw))
        self.spec = unpack(self.ws.recv(timeout=30))

    def ask(self, message) -> dict:
        self.ws.send(message if isinstance(message, (bytes, str)) else pack(message))
        return unpack(self.ws.recv(timeout=60))

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the encoding ------------------------------------------------------------------------------

def test_codec_round_trips_arrays_and_refuses_bad_payloads():
    msg = {"img": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "s": np.float32(1.5),
           "x": np.array([1.0, -2.0], ">f8"), "flag": np.array([True, False]), "t": "text"}
    got = unpack(pack(msg))
    assert got["img"].dtype == np.uint8 and np.array_equal(got["img"], msg["img"])
    assert got["img"].flags.writeable and got["s"] == 1.5 and got["t"] == "text"
    assert got["x"].dtype == np.dtype("<f8") and np.array_equal(got["x"], [1.0, -2.0])
    with pytest.raises(TypeError, match="cannot send an array of dtype object"):
        pack({"o": np.array([None])})

    def ext(*payload):
        return msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(list(payload)))})
    cases = {b"\xc1": "not a valid msgpack message", msgpack.packb([1, 2]): "msgpack map",
             msgpack.packb({1: 2}): "not a valid msgpack message",
             pack(msg)[:-5]: "not a valid msgpack message",
             ext("|O", [1], b"12345678"): "dtype '|O' is not one of",
             ext("<f4", [10 ** 12], b""): "needs 4000000000000 bytes, got 0",
             ext("<f4", [-1], b""): "non-negative integers",
             ext("<f4", [1] * 9, b"1234"): "at most 8",
             ext("<f4", [1]): "not \\[dtype, shape, data\\]",
             msgpack.packb({"a": msgpack.ExtType(7, b"")}): "unknown msgpack extension type 7",
             b"\x91" * 100_000: "not a valid msgpack message"}
    for data, match in cases.items():
        with pytest.raises(CodecError, match=match):
            unpack(data)
    with pytest.raises(CodecError, match="binary"):
        unpack("text")


# -- remote == local ---------------------------------------------------------------------------

def test_remote_policy_acts_exactly_as_the_local_one(ckpt, server, frames):
    local = Policy.load(ckpt, "cpu")
    with RemotePolicy(server.url) as remote:
        assert remote.spec["observations"] == local.spec.describe()["observations"]
        assert remote.spec["chunk"] == 4 and remote.spec["history"] == 2
        assert remote.spec["action_dim"] == 7 and remote.spec["execution"] == "execute=1"
        assert remote.spec["instruction_required"] and len(remote.spec["action_names"]) == 7
        assert remote.limits["max_message_bytes"] == 64 << 10
        for episode in frames:
            local.reset(INSTRUCTION)
            remote.reset(INSTRUCTION)
            for obs in episode:
                want, got = local.act(obs), remote.act(obs)
                assert got.dtype == np.float32 and got.shape == (7,)
                assert np.array_equal(got, want)
            t = remote.last_timing
            assert t["batch"] == 1 and t["total_ms"] >= t["infer_ms"] >= 0
        # the whole chunk on request: what the policy plans from this frame, in the data's units
        local.reset(INSTRUCTION)
        remote.reset(INSTRUCTION)
        for obs in frames[0][:3]:
            local.observe([obs])
            want = local.to_units(local.plan())[0]
            got = remote.act_chunk(obs)
            assert got.shape == (4, 7) and np.array_equal(got, want)


def test_sessions_keep_their_own_history(ckpt, server, frames):
    """Two sessions interleaved on one connection (act_batch) = two local policies; a third
    connection's session "0" is another session."""
    a, b = Policy.load(ckpt, "cpu"), Policy.load(ckpt, "cpu")
    a.reset(INSTRUCTION)
    b.reset("reach the red goal")
    with RemotePolicy(server.url) as remote, RemotePolicy(server.url) as other:
        remote.reset_batch([INSTRUCTION, "reach the red goal"])
        other.reset(INSTRUCTION)
        for t in range(len(frames[0])):
            got = remote.act_batch([frames[0][t], frames[1][t]])
            other.act(frames[1][-1 - t])  # another connection, other frames: no effect on ours
            assert got.shape == (2, 7)
            assert np.array_equal(got[0], a.act(frames[0][t]))
            assert np.array_equal(got[1], b.act(frames[1][t]))
        # reset starts a session over: the first action again
        remote.reset_batch([INSTRUCTION])
        a.reset(INSTRUCTION)
        assert np.array_equal(remote.act(frames[0][0]), a.act(frames[0][0]))
    assert settled(server, sessions=0, connections=0)["sessions"] == 0


def test_chunk_execution_rule_is_the_servers(ckpt, frames):
    local = Policy.load(ckpt, "cpu", execute=3)
    s = serve(ckpt, execute=3)
    try:
        with RemotePolicy(s.url) as remote:
            assert remote.spec["execution"] == "execute=3"
            local.reset(INSTRUCTION)
            remote.reset(INSTRUCTION)
            for obs in frames[1]:
                assert np.array_equal(remote.act(obs), local.act(obs))
    finally:
        s.stop()


@pytest.fixture
def fresh_rollout_cache(monkeypatch):
    """rollout keeps one policy (and server connection) per process: start empty, close after."""
    from vlatrain import rollout
    monkeypatch.setattr(rollout, "_LOADED", {})
    yield
    for policy in rollout._LOADED.values():
        if isinstance(policy, RemotePolicy):
            policy.close()


def test_rollout_through_the_server_equals_one_in_process(ckpt, server, fresh_rollout_cache):
    """Meta-World, one task, 2 episodes: the same actions step by step, the same report."""
    from vlaenv.metaworld import MetaWorldEnv, episode_seed
    from vlatrain import rollout
    local = Policy.load(ckpt, "cpu")
    env = MetaWorldEnv("reach", image_size=32, max_steps=15)
    try:
        with RemotePolicy(server.url) as remote:
            obs = env.reset(episode_seed("eval", 0, "reach-v3", 0))
            local.reset(env.instruction)
            remote.reset(env.instruction)
            done = False
            while not done:
                a = remote.act(obs)
                assert np.array_equal(a, local.act(obs))
                obs, _, done, info = env.step(a)
            assert info["steps"] == 15
    finally:
        env.close()
    cfg = rollout.EnvConfig(image_size=32, max_steps=25)
    here = rollout.run(rollout.PolicySpec("checkpoint", checkpoint=str(ckpt)), "reach",
                       episodes=2, seed=4, env=cfg, progress=False)
    there = rollout.run(rollout.PolicySpec("remote", url=server.url), "reach", episodes=2,
                        seed=4, env=cfg, progress=False)
    assert there.tasks == here.tasks and there.steps == here.steps == 50
    assert there.policy == server.url
    # two environments in lockstep: reset_batch/act_batch through the server (one session each)
    both = rollout.run(rollout.PolicySpec("remote", url=server.url), "reach", episodes=2, seed=4,
                       env=cfg, progress=False, batch=2)
    assert [r["seed"] for r in both.tasks[0].runs] == [r["seed"] for r in here.tasks[0].runs]
    assert both.steps == 50


def test_rollout_cli_takes_a_server_url(ckpt, tmp_path, fresh_rollout_cache):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    s = serve(ckpt, token="s3cret-token")
    try:
        args = ["--tasks", "reach", "--episodes", "2", "--image-size", "32", "--max-steps", "10",
                "--json"]
        from click.testing import CliRunner

        from cli.vlatrain import main
        r = CliRunner().invoke(main, ["rollout", "--policy", s.url, "--token", str(token), *args])
        assert r.exit_code == 0, r.output
        there = json.loads(r.output[r.output.index("{"):])
        r = CliRunner().invoke(main, ["rollout", str(ckpt), *args])
        here = json.loads(r.output[r.output.index("{"):])
        assert there["tasks"] == here["tasks"] and there["policy"] == s.url
        r = CliRunner().invoke(main, ["rollout", "--policy", s.url, *args])
        assert r.exit_code == 1 and "HTTP 401" in r.output
        r = CliRunner().invoke(main, ["rollout", "--policy", "http://x", *args])
        assert r.exit_code == 2 and "ws://HOST:PORT" in r.output
    finally:
        s.stop()


# -- bad input: an error answer or a closed connection, never a wedged server ------------------

def test_bad_messages_get_clear_errors_and_the_connection_goes_on(server, frames):
    with Raw(server) as raw:
        talk(raw, frames)
    assert settled(server, sessions=0, connections=0)["sessions"] == 0


def talk(raw, frames):
    good = {"type": "act", "session": "a", "instruction": INSTRUCTION, "obs": frames[0][0]}
    obs = frames[0][0]
    cases = [
        (b"\x00\x01garbage", "bad_message", "not a valid msgpack message"),
        ("a text frame", "bad_message", "binary WebSocket frames"),
        ({"type": "dance", "session": "a"}, "bad_message", "unknown message type 'dance'"),
        ({**good, "speed": 3}, "bad_message", "unknown fields ['speed']"),
        ({**good, "session": 7}, "bad_message", "session must be a string"),
        ({**good, "instruction": 5}, "bad_message", "instruction must be a string"),
        ({**good, "chunk": "yes"}, "bad_message", "chunk must be true or false"),
        ({**good, "obs": [1, 2]}, "bad_observation", "obs must be a map"),
        ({**good, "obs": {k: v for k, v in obs.items() if k != "observation.state"}},
         "bad_observation", "observation.state: missing"),
        ({**good, "obs": {**obs, "observation.state": obs["observation.state"].astype("f8")}},
         "bad_observation", "observation.state: expected float32 (4,), got float64"),
        ({**good, "obs": {**obs, "observation.images.corner2": np.zeros((16, 16, 3), "u1")}},
         "bad_observation", "observation.images.corner2: expected uint8 (32, 32, 3)"),
        ({**good, "obs": {**obs, "observation.state": np.full(4, np.nan, np.float32)}},
         "bad_observation", "non-finite"),
        ({**good, "session": "b", "instruction": ""}, "bad_observation", "conditioned on language"),
    ]
    for i, (message, code, text) in enumerate(cases):
        if isinstance(message, dict):
            message = {**message, "id": i}
        reply = raw.ask(message)
        assert reply["type"] == "error" and reply["code"] == code, (i, reply)
        assert text in reply["message"], (i, reply["message"])
        if isinstance(message, dict) and isinstance(message.get("session"), str):
            assert reply["id"] == i and reply["session"] == message["session"]
    reply = raw.ask({**good, "id": 99})  # the connection still serves
    assert reply["type"] == "action" and reply["id"] == 99 and reply["step"] == 1
    assert raw.ask({**good, "instruction": "reach elsewhere"})["code"] == "instruction_mismatch"
    assert raw.ask({"type": "reset", "session": "a", "instruction": "reach elsewhere"}) == {
        "type": "reset", "session": "a"}
    assert raw.ask({**good, "instruction": "reach elsewhere"})["step"] == 1
    assert raw.ask({"type": "close", "session": "a"})["type"] == "closed"
    for k in range(4):  # at most 4 sessions per connection (this server's setting)
        assert raw.ask({**good, "session": f"s{k}"})["type"] == "action"
    reply = raw.ask({**good, "session": "s4"})
    assert reply["code"] == "too_many_sessions" and "4 sessions" in reply["message"]
    # two requests of one session in flight at once: the second is refused, the first answered
    raw.ws.send(pack({**good, "session": "s0", "id": "first"}))
    raw.ws.send(pack({**good, "session": "s0", "id": "second"}))
    replies = {r["id"]: r for r in (unpack(raw.ws.recv(timeout=60)) for _ in range(2))}
    assert replies["first"]["type"] == "action" and replies["second"]["code"] == "session_busy"


def test_an_oversized_message_closes_only_its_connection(server, frames):
    with RemotePolicy(server.url) as bystander:
        bystander.reset(INSTRUCTION)
        bystander.act(frames[0][0])
        raw = Raw(server)  # closed by the server
        big = {"type": "act", "session": "a", "instruction": INSTRUCTION,
               "obs": {**frames[0][0], "junk": np.zeros(100_000, np.uint8)}}
        raw.ws.send(pack(big))
        with pytest.raises(ConnectionClosed) as e:
            raw.ws.recv(timeout=30)
        assert e.value.rcvd.code == 1009  # message too big
        with RemotePolicy(server.url) as remote:  # RemotePolicy says why
            remote.reset(INSTRUCTION)
            with pytest.raises(PolicyServerError, match="closed the connection \\(code 1009"):
                remote.act({**frames[0][0], "junk": np.zeros(100_000, np.uint8)})
        bystander.act(frames[0][1])  # unaffected
    assert settled(server, sessions=0, connections=0)["connections"] == 0


def test_clients_that_vanish_or_stall_do_not_wedge_the_server(ckpt, frames):
    server = serve(ckpt, idle_timeout_s=1.0)
    try:
        vanish_and_stall(server, frames)
    finally:
        server.stop()


def vanish_and_stall(server, frames):
    # disconnect mid-request: the act is in flight when the connection drops
    for k in range(5):
        raw = Raw(server)
        raw.ws.send(pack({"type": "act", "session": "x", "instruction": INSTRUCTION,
                          "obs": frames[0][k]}))
        raw.ws.socket.close()  # no close handshake: a crashed client
    # a stalled client: the handshake done, then half a message, then silence
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n")
    stalled.sendall(bytes([0x82, 0xFE, 0x10, 0x00, 1, 2, 3, 4]) + b"only a little")
    with RemotePolicy(server.url) as remote:  # others are served meanwhile
        remote.reset(INSTRUCTION)
        for obs in frames[1][:3]:
            assert remote.act(obs).shape == (7,)
    h = settled(server, sessions=0, connections=0)  # the stalled one is closed when idle (1 s)
    assert h["sessions"] == 0 and h["connections"] == 0
    stalled.settimeout(30)
    assert b"HTTP/1.1 101" in stalled.recv(4096)
    stalled.close()
    assert health(server)["requests"] >= 5 + 4


def test_a_client_that_does_not_read_its_answers_is_dropped(ckpt, frames):
    """Requests sent nonstop, answers never read: once the server cannot hand an answer over
    within send_timeout_s, it drops that connection; others are served meanwhile."""
    server = serve(ckpt, send_timeout_s=0.5)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills fast
        sock.connect(("127.0.0.1", server.port))
        with connect(server.url, sock=sock, max_queue=1) as ws:
            request = pack({"type": "dance", "session": "a", "pad": "x" * 200})
            sent = 0
            with pytest.raises((ConnectionClosed, OSError)):
                for sent in range(200_000):  # its errors pile up unread
                    ws.send(request)
            assert sent > 100
            with RemotePolicy(server.url) as remote:
                remote.reset(INSTRUCTION)
                assert remote.act(frames[0][0]).shape == (7,)
        assert settled(server, connections=0)["connections"] == 0
    finally:
        server.stop()


def test_a_request_past_its_time_limit_gets_a_timeout(ckpt, frames):
    s = serve(ckpt, request_timeout_s=1e-6)
    try:
        raw = Raw(s)
        reply = raw.ask({"type": "act", "session": "a", "instruction": INSTRUCTION,
                         "obs": frames[0][0], "id": 1})
        assert reply["code"] == "timeout" and "reset the session" in reply["message"]
        raw.close()
    finally:
        s.stop()


def test_a_token_protected_server_refuses_clients_without_it(ckpt, frames):
    s = serve(ckpt, token="correct-horse")
    try:
        for token in (None, "wrong", "correct-hors", "correct-horse-battery"):
            with pytest.raises(PolicyServerError, match="HTTP 401") as e:
                RemotePolicy(s.url, token=token)
            assert e.value.code == "refused"
        assert health(s)["refused"] == 4  # /healthz itself needs no token
        with RemotePolicy(s.url, token="correct-horse") as remote:
            remote.reset(INSTRUCTION)
            assert remote.act(frames[0][0]).shape == (7,)
    finally:
        s.stop()


# -- load --------------------------------------------------------------------------------------

def test_eight_concurrent_clients_are_served_without_errors_or_leaks(ckpt, server, frames):
    """8 clients at once, batched together, while a ninth sends bad frames into the same
    batches: each good client gets its own actions, the bad one only its errors."""
    local = Policy.load(ckpt, "cpu")
    local.reset(INSTRUCTION)
    want = [local.act(o) for o in frames[0]]
    got, errors, refusals = {}, [], []
    done = threading.Event()

    def client(k):
        try:
            with RemotePolicy(server.url) as remote:
                remote.reset(INSTRUCTION)
                got[k] = [remote.act(o) for o in frames[0]]
        except Exception as e:  # reported below
            errors.append(e)

    def bad_client():
        bad = {**frames[0][0], "observation.state": np.zeros(3, np.float32)}
        with RemotePolicy(server.url) as remote:
            remote.reset(INSTRUCTION)
            while not done.is_set() and len(refusals) < 3 * len(frames[0]):
                with pytest.raises(PolicyServerError) as e:
                    remote.act(bad)
                refusals.append(e.value.code)

    before = health(server)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    spoiler = threading.Thread(target=bad_client)
    for t in [*threads, spoiler]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    spoiler.join(timeout=60)
    assert not errors and len(got) == 8
    assert refusals and set(refusals) == {"bad_observation"}
    for k in range(8):  # each client gets its own actions: those of a local policy, up to the
        # float rounding of a batched forward pass (--max-batch 1 gives them bit for bit)
        assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got[k], want))
    h = settled(server, sessions=0, connections=0)
    assert h["sessions"] == 0 and h["connections"] == 0
    assert h["errors"] - before["errors"] == len(refusals)
    assert h["batched_requests"] - before["batched_requests"] == 8 * len(frames[0]) + len(
        refusals)


# -- the CLI -----------------------------------------------------------------------------------

def test_serve_cli_serves_and_refuses_cleanly(ckpt, tmp_path, frames):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli.vlatrain", "serve"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = subprocess.run([*cmd, str(ckpt), "--token", str(empty)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "is empty" in r.stderr
    import torch
    if not torch.cuda.is_available():
        r = subprocess.run([*cmd, str(ckpt), "--device", "cuda"], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "no CUDA device" in r.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run([*cmd, str(bad), "--port", "0"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Error:" in r.stderr and "Traceback" not in r.stderr
    proc = subprocess.Popen([*cmd, str(ckpt), "--port", "0", "--device", "cpu"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while " on ws://" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited"
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("ws://127.0.0.1:")
        with urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz") as h:
            assert json.loads(h.read())["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError):  # plain HTTP elsewhere: not a WebSocket
            urllib.request.urlopen(url.replace("ws://", "http://") + "/")
        with RemotePolicy(url) as remote:
            remote.reset(INSTRUCTION)
            assert remote.act(frames[0][0]).shape == (7,)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
