"""Conversion on Ray: a real two-node Ray cluster on loopback, started and stopped by PID here.

Ray's node processes find each other by IP: on Linux Ray rewrites 127.0.0.1 to the interface
address, so the nodes use 127.0.0.2 (head) and 127.0.0.3 (worker). Ray's token authentication
reads its token from ``RAY_AUTH_TOKEN_PATH``, pointed into this module's own temporary directory.
Each node is a ``ray start --block`` process in its own session: tearing a node down kills that
session's processes (its raylet and workers), never anything by name (``ray stop`` would stop
every Ray on the machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import vladata  # noqa: E402
from vladata.errors import SourceFormatError, VladataError  # noqa: E402
from vladata.samples.calvin import write_sample  # noqa: E402
from vladata.sources.calvin import CalvinSource  # noqa: E402
from vladata.store.engines import EngineError, init_ray  # noqa: E402
from tests.helpers.s3 import loopback_s3  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
PART = 1024


@dataclasses.dataclass
class TestSource(CalvinSource):
    """A CALVIN source that records which process reads it, can read slowly, and can fail on
    one episode (a bad file). Same name, plan and frames as :class:`CalvinSource`."""

    __test__ = False
    pid_dir: str = ""
    delay: float = 0.0
    fail_episode: int = -1

    def read(self, i, start, stop):
        if self.pid_dir:
            Path(self.pid_dir, str(os.getpid())).touch()
        if i == self.fail_episode:
            raise SourceFormatError(f"episode {i}: a bad file (test)")
        time.sleep(self.delay)
        return super().read(i, start, stop)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD_IP, 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.token = tmp / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(self.token), "RAY_AUTH_MODE": "token",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def start_node(self, ip: str, head: bool = False) -> None:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_cli, "start", "--block", "--node-ip-address", ip, "--num-cpus", "1",
               "--disable-usage-stats"]
        cmd += (["--head", "--port", str(self.port), "--include-dashboard", "false",
                 "--temp-dir", str(self.tmp / "ray")] if head else ["--address", self.address])
        log = open(self.tmp / f"node-{ip}.log", "wb")
        self.nodes[ip] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def alive(self) -> int:
        return sum(n["Alive"] for n in ray.nodes())

    def kill_node(self, ip: str) -> None:
        """Lose a node: SIGKILL every process of its session (raylet, workers, the CLI)."""
        p = self.nodes.pop(ip)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def stop(self) -> None:
        for ip in list(self.nodes)[::-1]:
            p = self.nodes[ip]
            try:
                os.killpg(p.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes
                p.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.nodes.pop(ip)


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server (moto), named by AWS_* variables that the Ray nodes inherit."""
    pytest.importorskip("s3fs")
    pytest.importorskip("upath")
    with loopback_s3("ray-bucket") as fs:
        yield fs


@pytest.fixture(scope="module")
def cluster(s3):
    tmp = Path(tempfile.mkdtemp(prefix="vlaray-"))  # short: Ray's socket paths have a length limit
    c = Cluster(tmp)
    old = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(c.token)
    os.environ.pop("RAY_AUTH_MODE", None)  # init_ray turns token mode on
    try:
        c.start_node(HEAD_IP, head=True)
        deadline = time.monotonic() + 120
        log = tmp / f"node-{HEAD_IP}.log"
        while b"Ray runtime started" not in log.read_bytes() and time.monotonic() < deadline:
            if c.nodes[HEAD_IP].poll() is not None:
                pytest.fail((tmp / f"node-{HEAD_IP}.log").read_text()[-3000:])
            time.sleep(0.3)
        c.start_node(WORKER_IP)
        init_ray(c.address)
        while c.alive() < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert c.alive() == 2, (tmp / f"node-{WORKER_IP}.log").read_text()[-3000:]
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("raydata")
    src = write_sample(d / "src", train_segments=24, val_segments=6, frames_per_segment=(90, 130),
                       static_size=12, gripper_size=8, depth=False, seed=3)
    ref = d / "local.vla"
    vladata.convert(CalvinSource(str(src)), ref, part_frames=PART, progress=False)
    return src, ref


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store but the manifest, whose timings differ; its file table is kept."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file():
            out[rel] = (json.dumps(json.loads(p.read_bytes())["files"], sort_keys=True).encode()
                        if rel == "meta/manifest.json" else p.read_bytes())
    return out


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []


def _markers(out: Path) -> int:
    return len(list((out / "meta" / "parts").glob("part-*.json")))


def test_ray_conversion_equals_local_bit_for_bit(cluster, data, tmp_path):
    src, ref = data
    out = tmp_path / "ray.vla"
    summary = vladata.convert(TestSource(str(src), pid_dir=str(tmp_path)), out, engine="ray",
                              part_frames=PART, progress=False)
    assert summary.parts_written >= 3 and summary.parts_reused == 0
    assert_same_store(ref, out)
    assert len(list(tmp_path.iterdir())) > 2  # more than one worker process read the source
    vladata.open(out)


def _convert_in_thread(src, pids, out, delay: float):
    """Start converting ``src`` to ``out`` on the Ray engine in a thread, its readers slowed by
    ``delay`` s per episode and recording their pids in ``pids``; -> (thread, result) with
    result["summary"] or result["error"] once the thread ends."""
    result = {}

    def run():
        try:
            result["summary"] = vladata.convert(TestSource(str(src), pid_dir=str(pids), delay=delay),
                                                out, engine="ray", part_frames=PART,
                                                progress=False)
        except BaseException as e:  # noqa: BLE001 -- reported by the caller's assertions
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_a_killed_worker_s_part_is_retried(cluster, data, tmp_path):
    src, ref = data
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "ray.vla"
    t, result = _convert_in_thread(src, pids, out, delay=0.05)
    deadline = time.monotonic() + 60
    while not any(pids.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = int(next(pids.iterdir()).name)
    assert victim != os.getpid()
    os.kill(victim, signal.SIGKILL)  # a Ray worker process of our cluster, mid-part
    t.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["summary"].parts_written == _markers(out)
    assert_same_store(ref, out)


def test_resume_across_engines(cluster, data, tmp_path):
    src, ref = data
    last = len(CalvinSource(str(src)).plan()) - 1
    # local first: the last part fails (its last episode is a bad file), then Ray finishes
    out = tmp_path / "a.vla"
    with pytest.raises(SourceFormatError, match=f"episode {last}"):
        vladata.convert(TestSource(str(src), fail_episode=last), out, part_frames=PART,
                        progress=False)
    done = _markers(out)
    assert done >= 2
    s = vladata.convert(CalvinSource(str(src)), out, resume=True, engine="ray", progress=False)
    assert (s.parts_reused, s.parts_written) == (done, 1)
    assert_same_store(ref, out)
    # Ray first: the data error comes back as itself, not as a Ray error; then a local resume
    out = tmp_path / "b.vla"
    with pytest.raises(SourceFormatError, match=f"episode {last}"):
        vladata.convert(TestSource(str(src), fail_episode=last), out, engine="ray",
                        part_frames=PART, progress=False)
    assert not (out / "meta" / "manifest.json").exists()
    done = _markers(out)
    s = vladata.convert(CalvinSource(str(src)), out, resume=True, progress=False)
    assert s.parts_reused == done and s.parts_written + done >= 3
    assert_same_store(ref, out)


def test_ray_conversion_to_s3_equals_local(cluster, s3, data):
    src, ref = data
    url = "s3://ray-bucket/calvin.vla"
    vladata.convert(CalvinSource(str(src)), url, engine="ray", part_frames=PART, progress=False)
    base = url.split("://")[1]
    remote = {k[len(base) + 1:]: s3.cat_file(k) for k in s3.find(base)}
    local = store_files(ref)
    assert sorted(remote) == sorted(local)
    man = "meta/manifest.json"
    assert json.loads(remote[man])["files"] == json.loads(local[man])
    assert [k for k in local if k != man and local[k] != remote[k]] == []


def test_cli_joins_the_cluster(cluster, data, tmp_path):
    src, ref = data
    out = tmp_path / "cli.vla"
    env = {**cluster.env, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_AUTH_MODE")  # the engine turns token mode on, given RAY_AUTH_TOKEN_PATH
    r = subprocess.run([sys.executable, "-m", "cli.vladata", "convert", "calvin", str(src),
                        str(out), "--engine", "ray", "--address", cluster.address,
                        "--part-frames", str(PART), "--json"], env=env, capture_output=True,
                       text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["parts_written"] >= 3
    assert_same_store(ref, out)


def test_unknown_engine_and_address_without_ray_engine(data, tmp_path):
    src, _ = data
    with pytest.raises(EngineError, match="unknown engine 'spark'"):
        vladata.convert(CalvinSource(str(src)), tmp_path / "x.vla", engine="spark")
    with pytest.raises(EngineError, match="--address .* is for --engine ray"):
        vladata.convert(CalvinSource(str(src)), tmp_path / "x.vla", address="127.0.0.2:1")
    assert not (tmp_path / "x.vla").exists()  # refused before anything was written
    assert issubclass(EngineError, VladataError)


def test_a_lost_node_s_parts_run_again_elsewhere(cluster, data, tmp_path):
    """Last in the module: it takes the worker node down for good."""
    src, ref = data
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "ray.vla"
    worker_node = [n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == WORKER_IP]
    assert worker_node
    t, result = _convert_in_thread(src, pids, out, delay=0.1)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both nodes are reading
    cluster.kill_node(WORKER_IP)
    t.join(timeout=180)
    if "error" in result:  # retries spent: a clean error, and --resume completes the store
        assert isinstance(result["error"], EngineError), result["error"]
        assert not (out / "meta" / "manifest.json").exists()
        vladata.convert(CalvinSource(str(src)), out, resume=True, engine="ray", progress=False)
    assert_same_store(ref, out)
