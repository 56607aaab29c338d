"""Policy server throughput and latency against calling the policy in process.

    python benchmarks/serve.py [--checkpoint CKPT] [--requests 240] [--clients 1,4,16]
        [--rounds 3] [--device cpu] [--long 3000]

Without ``--checkpoint`` the embedded model (configs/calvin.yaml: tiny backbone, GPT head,
64x64 inputs) is trained for one step on a CALVIN sample at the real image sizes (200x200 static,
84x84 gripper camera: ~140 KB per observation), which is as good as any checkpoint for speed.

In the same run:

- the baseline: ``Policy.act`` in this process, one frame at a time (and ``act_batch`` of 4 and
  16 frames: what the device does with a full batch);
- ``vlatrain serve`` in a subprocess, with micro-batching (``--max-batch 16``) and without
  (``--max-batch 1``), driven by 1, 4 and 16 concurrent clients (threads, one
  ``RemotePolicy`` connection each, each acting in its own session); each configuration serves
  ``--requests`` requests in all, every round (rounds interleave the configurations, so that the
  load of a shared machine spreads over all of them);
- memory: the server's RSS after the rounds and after ``--long`` more requests from clients that
  reconnect every 50 requests (sessions opened and closed all along).

Prints requests/s, p50/p99 client-side latency (ms) and the ratio of requests/s to the
in-process baseline. Client threads and the server share this machine's cores. Torch runs one
intra-op thread in both (``vlatrain serve --threads 1``, its default; ``OMP_NUM_THREADS=1`` here
unless set): on a loaded 2-core machine, two threads spinning against each other make a forward
pass 10-100x slower and the figures noise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; the server inherits it


def make_checkpoint(tmp: Path) -> Path:
    from vladata.samples.calvin import write_sample
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    from vlatrain.config import load_config
    from vlatrain.recipes.train import run
    raw = write_sample(tmp / "raw", train_segments=2, val_segments=1, frames_per_segment=(40, 50),
                       seed=0, depth=False)
    convert(CalvinSource(raw), tmp / "calvin.vla", progress=False)
    cfg = load_config(ROOT / "configs" / "calvin.yaml", [
        f"data.path={tmp / 'calvin.vla'}", f"out={tmp / 'run'}", "train.steps=1",
        "data.num_workers=0", "data.batch_size=4", "log.progress=false",
        "log.tensorboard=false", "eval.every=0", "train.checkpoint_every=1"])
    run(cfg)
    return tmp / "run" / "checkpoints" / "step_0000001.pt"


def observation(spec, rng) -> dict:
    return {k: (rng.integers(0, 256, shape, dtype=np.uint8) if dtype == "uint8"
                else rng.standard_normal(shape).astype(dtype))
            for k, (shape, dtype) in spec.observations.items()}


def instruction(policy) -> str:
    return policy.spec.instructions[0] if policy.spec.instructions else "open the drawer"


def stats(latencies: list[float], seconds: float) -> tuple[float, list[float]]:
    return len(latencies) / seconds, latencies


def in_process(policy, obs, n: int, batch: int = 1):
    text = instruction(policy)
    policy.reset_batch([text] * batch)
    for _ in range(3):
        policy.act_batch([obs] * batch)
    lat, t0 = [], time.perf_counter()
    for _ in range(max(1, n // batch)):
        t = time.perf_counter()
        policy.act_batch([obs] * batch)
        lat += [time.perf_counter() - t] * batch
    return stats(lat, time.perf_counter() - t0)


def start_server(ckpt: Path, device: str, max_batch: int):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.vlatrain", "serve", str(ckpt), "--port",
                             "0", "--device", device, "--max-batch", str(max_batch)],
                            env=env, stderr=subprocess.PIPE, text=True)
    line = ""
    while " on ws://" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit("the server did not start")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, line.split(" on ")[1].split()[0]


def drive(url: str, text: str, obs, clients: int, total: int, reconnect: int = 0):
    """``clients`` threads, ``total`` requests in all; returns (req/s, p50, p99)."""
    from vlatrain.serving.client import RemotePolicy
    per = max(1, total // clients)
    lat: list[float] = []
    errors: list[Exception] = []
    barrier = threading.Barrier(clients + 1)

    def client():
        try:
            remote = RemotePolicy(url)
            remote.reset(text)
            remote.act(obs)  # warm
            barrier.wait()
            for k in range(per):
                if reconnect and k and k % reconnect == 0:
                    remote.close()
                    remote = RemotePolicy(url)
                    remote.reset(text)
                t = time.perf_counter()
                remote.act(obs)
                lat.append(time.perf_counter() - t)
            remote.close()
        except Exception as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return stats(lat, time.perf_counter() - t0)


def rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=240, help="per configuration")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", type=int, default=3000, help="requests of the memory run")
    args = ap.parse_args()
    from vlatrain.policy import Policy
    clients = [int(c) for c in args.clients.split(",")]
    results: dict[tuple, list] = {}  # (mode, clients) -> [(req/s, latencies)] per round

    def record(key, value):
        results.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(Path(tmp))
        policy = Policy.load(ckpt, args.device)
        obs = observation(policy.spec, np.random.default_rng(0))
        text = instruction(policy)
        size = sum(a.nbytes for a in obs.values()) / 1024
        servers = {b: start_server(ckpt, args.device, b) for b in (16, 1)}
        try:
            for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
                record(("in process, act", 1), in_process(policy, obs, args.requests))
                for b in (4, 16):
                    record((f"in process, act_batch({b})", "-"),
                           in_process(policy, obs, args.requests, b))
                for max_batch, (_, url) in servers.items():
                    for n in clients:
                        record((f"server, max-batch {max_batch}", n),
                               drive(url, text, obs, n, args.requests))
            memory = None
            if args.long:
                pid = servers[16][0].pid
                before = rss_mb(pid)
                drive(servers[16][1], text, obs, 4, args.long, reconnect=50)
                memory = (before, rss_mb(pid))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    print(f"{policy!r} on {args.device}; observation {size:.0f} KB; {args.requests} requests per "
          f"row and round, {args.rounds} rounds (req/s: median of rounds; latency: all rounds); "
          f"{os.cpu_count()} CPUs shared by clients and server")
    print(f"{'mode':<28} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'vs in-proc':>10}")
    base = float(np.median([r for r, _ in results[("in process, act", 1)]]))
    for (mode, n), runs in results.items():
        rps = float(np.median([r for r, _ in runs]))
        ms = np.concatenate([lat for _, lat in runs]) * 1e3
        print(f"{mode:<28} {n!s:>7} {rps:8.1f} {np.percentile(ms, 50):8.1f} "
              f"{np.percentile(ms, 99):8.1f} {rps / base:9.2f}x")
    if memory:
        before, after = memory
        print(f"server RSS: {before:.0f} MB after the rounds, {after:.0f} MB after {args.long} "
              f"more requests (4 clients reconnecting every 50): {after - before:+.1f} MB")


if __name__ == "__main__":
    main()
