"""The parts of the GPU readiness check (``benchmarks/gpu_check.py``), one function each.

Each takes a :class:`gpu_check.Context` and returns a dict: figures, a ``headline`` (what the
summary shows) and ``notes``; it raises ``Skip`` when it does not apply and ``CheckFailed`` when
it ran but the result is wrong. Timings on CUDA are bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from gpu_check import ROOT, CheckFailed, Skip

CONFIG = ROOT / "configs" / "calvin.yaml"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    gc.collect()  # a model dropped by the caller may sit in a reference cycle
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device):
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    pick = lambda q: ms[min(len(ms) - 1, math.ceil(q * len(ms)) - 1)]  # noqa: E731 -- nearest rank
    return {"p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3), "n": len(ms)}


class UtilSampler:
    """GPU utilisation sampled every 0.2 s in a thread while the block runs.

    ``torch.cuda.utilization`` when pynvml is installed, else ``nvidia-smi``, else none (with
    the reason in ``note``).
    """

    def __init__(self, dev: torch.device):
        self.dev, self.samples, self.method, self.note = dev, [], None, None
        self._stop = threading.Event()
        if dev.type != "cuda":
            self.note = "no CUDA device: no utilisation to sample"
        elif importlib.util.find_spec("pynvml") is not None:
            self.method = "torch.cuda.utilization (pynvml)"
        elif shutil.which("nvidia-smi"):
            self.method = "nvidia-smi --query-gpu=utilization.gpu"
        else:
            self.note = "neither pynvml nor nvidia-smi is available: utilisation not measured"

    def _read(self) -> float:
        if self.method.startswith("torch"):
            return float(torch.cuda.utilization(self.dev))
        index = self.dev.index or 0
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                              "nounits", "-i", str(index)], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0])

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(self._read())
            except Exception as e:  # noqa: BLE001 -- reported, never fatal
                self.note = f"utilisation read failed: {type(e).__name__}: {e}"
                return

    def __enter__(self):
        if self.method:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.method:
            self._thread.join(timeout=10)

    def result(self) -> dict:
        mean = round(statistics.mean(self.samples), 1) if self.samples else None
        return {"gpu_util_mean_pct": mean, "gpu_util_samples": len(self.samples),
                "gpu_util_method": self.method, "gpu_util_note": self.note}


def config(ctx, *overrides: str):
    """configs/calvin.yaml on the check's store and device, quiet, plus ``overrides``."""
    from vlatrain.config import load_config
    return load_config(CONFIG, [f"data.path={ctx.store}", f"train.device={ctx.device.type}",
                                "log.progress=false", "log.tensorboard=false", *overrides])


def attempt(fn, *args) -> dict:
    """``fn(*args)``, or its error and traceback: one failing run of a part spares the others."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- recorded; finish() fails the part loudly
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                **getattr(e, "figures", {})}


def finish(result: dict, runs: dict) -> dict:
    """``result``, or CheckFailed carrying it when any of ``runs`` failed."""
    failed = [k for k, r in runs.items() if "error" in r]
    if failed:
        raise CheckFailed("; ".join(f"{k}: {runs[k]['error']}" for k in failed), result)
    return result


def headline_of(runs: dict, keys: tuple) -> dict:
    """Each run's ``keys``, or its error / skip reason."""
    return {name: {"error": r["error"]} if "error" in r else {"skipped": r["skipped"]}
            if "skipped" in r else {k: r[k] for k in keys if k in r} for name, r in runs.items()}


def child_env() -> dict:
    """The environment of a CLI subprocess: this checkout first on the path, then whatever the
    script put there (the dependencies installed from carried wheels on the GPU machine)."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ data
def part_data(ctx) -> dict:
    """The CALVIN sample, written and converted by the project's own CLI."""
    raw = ctx.store.parent / "calvin_raw"
    env = child_env()
    cmds = [[sys.executable, "-m", "cli.vladata", "sample", "calvin", str(raw), *ctx.size["sample"]],
            [sys.executable, "-m", "cli.vladata", "convert", "calvin", str(raw), str(ctx.store),
             "--workers", str(ctx.size["convert_workers"]), "--overwrite"]]
    took = []
    for cmd in cmds:
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=ctx.budget)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd[2:])} exited {res.returncode}: {res.stderr[-2000:]}")
        took.append(round(time.perf_counter() - t0, 2))
    import vladata
    ds = vladata.open(ctx.store)
    return {"store": str(ctx.store), "frames": ds.num_frames, "sample_s": took[0],
            "convert_s": took[1], "commands": [" ".join(c[2:]) for c in cmds],
            "headline": {"frames": ds.num_frames, "sample + convert s": sum(took)}}


# ------------------------------------------------------------------------------------ (a)
def train_run(ctx, precision: str, out: Path) -> dict:
    """One ``vlatrain run`` of the embedded model at ``precision``: figures after warm-up."""
    from vlatrain import checkpoint
    from vlatrain.recipes import train as recipe
    s = ctx.size
    cfg = config(ctx, f"train.precision={precision}", f"train.steps={s['warmup'] + s['steps']}",
                 f"log.every={s['log_every']}", "eval.every=0", "eval.batches=1",
                 f"data.batch_size={s['batch']}", f"data.num_workers={s['workers']}",
                 f"train.checkpoint_every={10**9}", f"out={out}")
    reset_peak(ctx.device)
    t0 = time.perf_counter()
    with UtilSampler(ctx.device) as util:
        recipe.run(cfg)
    wall = time.perf_counter() - t0
    lines = [d for d in metrics(out) if "loss" in d]
    timed = [d for d in lines if d["step"] > s["warmup"]]
    samples = s["log_every"] * s["batch"]
    elapsed = [samples / d["samples_per_s"] for d in timed]
    ckpt = checkpoint.load(checkpoint.latest(out / "checkpoints"))
    row = {"samples_per_s": round(len(timed) * samples / sum(elapsed), 1),
           "data_wait_pct": round(100 * sum(d["data_wait"] * e for d, e in zip(timed, elapsed))
                                  / sum(elapsed), 2),
           "peak_mem_gib": peak_gib(ctx.device), "final_loss": lines[-1]["loss"],
           "wall_s": round(wall, 1), "steps": cfg.train.steps,
           "fused_adamw": bool(ckpt["optimizer"]["param_groups"][0].get("fused")),
           "grad_scaler_scale": ckpt["scaler"].get("scale"), **util.result()}
    if not all(math.isfinite(d["loss"]) for d in lines):
        raise CheckFailed(f"{precision}: a non-finite loss", {"run": row})
    if precision == "fp16" and not row["grad_scaler_scale"]:
        raise CheckFailed("fp16 trained without a GradScaler (its state is empty)", {"run": row})
    if ctx.device.type == "cuda" and not row["fused_adamw"]:
        raise CheckFailed("AdamW is not fused on CUDA", {"run": row})
    return row


def part_train(ctx) -> dict:
    runs, notes = {}, []
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and ctx.device.type != "cuda":
            runs[precision] = {"skipped": "fp16 needs CUDA (the trainer refuses it on the CPU)"}
        elif ctx.left() <= 0:
            runs[precision] = {"skipped": "the part's time budget was spent"}
        else:
            runs[precision] = attempt(train_run, ctx, precision, ctx.work / precision)
    base = runs["fp32"].get("samples_per_s")
    for p in ("bf16", "fp16"):
        if base and "samples_per_s" in runs[p]:
            runs[p]["speedup_vs_fp32"] = round(runs[p]["samples_per_s"] / base, 3)
    notes.append(f"batch {ctx.size['batch']}, {ctx.size['workers']} loader workers, "
                 f"{ctx.size['steps']} timed steps after {ctx.size['warmup']} warm-up steps; "
                 "GPU utilisation sampled over the whole run, start-up included")
    return finish({"runs": runs, "notes": notes, "headline": headline_of(runs, (
        "samples_per_s", "data_wait_pct", "peak_mem_gib", "gpu_util_mean_pct"))}, runs)


# ------------------------------------------------------------------------------------ (b)
def raw_copy(dev: torch.device, nbytes: int, iters: int, pinned: bool) -> float:
    """GB/s of ``dst.copy_(src, non_blocking=True)`` from host memory to ``dev``."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst.copy_(src, non_blocking=True)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src, non_blocking=True)
    sync(dev)
    return nbytes * iters / (time.perf_counter() - t0) / 1e9


def part_loader(ctx) -> dict:
    """The window loader alone: batches to the device, as the trainer moves them."""
    from vlatrain import data
    cuda, s, notes = ctx.device.type == "cuda", ctx.size, []
    cfg = config(ctx)
    win = data.windows(data.open_store(str(ctx.store)), cfg.data, cfg.data.train_split)
    loader = win.loader(batch_size=s["batch"], shuffle=True, seed=0, num_workers=s["workers"],
                        pin_memory=cuda)
    if not cuda:
        notes.append("no CUDA: pinned memory needs CUDA in this torch build (the loader refuses "
                     "pin_memory=True without it); batches stay in pageable host memory and "
                     "the .to(device) is a no-op")
    events, n, timed, nbytes, pinned, t0 = [], 0, 0, 0, None, None
    while n < s["loader_batches"] and ctx.left() > 0:
        for batch in loader:
            tensors = [v for v in batch.values() if torch.is_tensor(v)]
            if t0 is None:  # the first batch starts the workers: outside the timing
                pinned = all(v.is_pinned() for v in tensors) if cuda else False
                sync(ctx.device)
                t0 = time.perf_counter()
            else:
                moved = [v.to(ctx.device, non_blocking=cuda) for v in tensors]
                nbytes += sum(v.numel() * v.element_size() for v in moved)
                timed += 1
            if cuda:  # the loader reuses a batch's buffers two batches later: copies done by then
                events.append(torch.cuda.Event())
                events[-1].record()
                if len(events) > 1:
                    events.pop(0).synchronize()
            n += 1
            if n >= s["loader_batches"] or ctx.left() <= 0:
                break
    sync(ctx.device)
    wall = time.perf_counter() - t0
    loader.close()
    if cuda and not pinned:
        raise CheckFailed("pin_memory=True on CUDA, yet the batches are not page-locked",
                          {"batches": n})
    mb = s["memcpy_mb"] * 2**20
    copies = {"pinned" if cuda else "host": round(raw_copy(ctx.device, mb, s["memcpy_iters"],
                                                            cuda), 2)}
    if cuda:
        copies["pageable"] = round(raw_copy(ctx.device, mb, s["memcpy_iters"], False), 2)
    h2d = nbytes / wall / 1e9
    res = {"batches": timed, "batch_size": s["batch"], "workers": s["workers"],
           "windows_per_s": round(timed * s["batch"] / wall, 1),
           "h2d_gb_per_s": round(h2d, 3) if cuda else None, "batches_pinned": pinned,
           "memcpy_gb_per_s": copies, "memcpy_kind": "host-to-device" if cuda else
           "host-to-host (no CUDA device: a dry run of the copy loop)",
           "loader_share_of_pinned_memcpy": round(h2d / copies["pinned"], 4) if cuda else None,
           "bytes_per_window": round(nbytes / max(1, timed) / s["batch"])}
    return {**res, "notes": notes, "headline": {k: res[k] for k in (
        "windows_per_s", "h2d_gb_per_s", "memcpy_gb_per_s", "loader_share_of_pinned_memcpy",
        "batches_pinned")}}


# ------------------------------------------------------------------------------------ (e)
def part_ddp(ctx) -> dict:
    """Two processes, nccl, through torchrun and ``vlatrain run``."""
    count = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    if count < 2:
        raise Skip(f"needs 2 CUDA devices, found {count}; DDP itself (gloo, 2 processes) is "
                   "tested on the CPU in tests/vlatrain/test_recipe.py")
    s, out = ctx.size, ctx.work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cli.vlatrain", "run", str(CONFIG), f"data.path={ctx.store}", "train.device=cuda",
           f"train.steps={s['warmup'] + s['ddp_steps']}", f"log.every={s['log_every']}",
           "eval.every=0", "eval.batches=1", f"data.batch_size={s['batch']}",
           f"data.num_workers={s['workers'] // 2}", "log.progress=false",
           "log.tensorboard=false", f"train.checkpoint_every={10**9}", f"out={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(10, ctx.left()),
                         env=child_env())
    if res.returncode:
        raise RuntimeError(f"torchrun exited {res.returncode}: {res.stderr[-3000:]}")
    lines = [d for d in metrics(out) if "loss" in d and d["step"] > s["warmup"]]
    sps = statistics.median(d["samples_per_s"] for d in lines)
    return {"backend": "nccl", "processes": 2, "samples_per_s_total": round(sps, 1),
            "final_loss": lines[-1]["loss"], "command": " ".join(cmd[1:]),
            "headline": {"samples/s (2 GPUs)": round(sps, 1), "final loss": lines[-1]["loss"]}}


# ------------------------------------------------------------------------------------ (f)
TOLERANCE = 1e-3
WHY = ("relative difference of each step's loss and gradient norm <= 1e-3: both runs are fp32 "
       "(TF32 off) from the same initial weights and batches, augmentation off; what remains is "
       "the order of floating-point sums in cuDNN/cuBLAS vs CPU kernels and fused vs unfused "
       "AdamW (~1e-6 relative per step), which 20 AdamW steps grow but not past ~1e-4; a broken "
       "CUDA path (a missed synchronisation, a wrong dtype, a batch overwritten under a copy) "
       "moves losses by 1e-2 or more")


def exact_run(ctx, device: str, threads: int, out: Path) -> list[dict]:
    from vlatrain.recipes import train as recipe
    s = ctx.size
    cfg = config(ctx, f"train.device={device}", f"train.threads={threads}", "train.precision=fp32",
                 f"train.steps={s['exact_steps']}", "log.every=1", "eval.every=0",
                 "eval.batches=1", f"data.batch_size={s['exact_batch']}", "data.num_workers=0",
                 "data.augment.shift=0", "data.augment.brightness=0",
                 "data.augment.contrast=0", "data.augment.saturation=0",
                 f"train.checkpoint_every={10**9}", f"out={out}")
    recipe.run(cfg)
    return [d for d in metrics(out) if "loss" in d]


def part_exact(ctx) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda, notes = ctx.device.type == "cuda", []
    threads = os.cpu_count() or 1
    a = exact_run(ctx, ctx.device.type, threads, ctx.work / "a")
    if not cuda:
        notes.append("no CUDA: dry run comparing two CPU runs (1 thread vs all threads)")
        threads = 1
    b = exact_run(ctx, "cpu", threads, ctx.work / "b")
    worst = {}
    for key in ("loss", "grad_norm"):
        worst[key] = max(abs(x[key] - y[key]) / max(abs(y[key]), 1e-12) for x, y in zip(a, b))
    figures = {"steps": len(a), "compared": f"{ctx.device.type} vs cpu",
               "max_rel_diff": worst, "tolerance": TOLERANCE, "why": WHY,
               "losses": {"run": [x["loss"] for x in a], "cpu": [y["loss"] for y in b]}}
    if len(a) != len(b) or len(a) != ctx.size["exact_steps"]:
        raise CheckFailed(f"runs logged {len(a)} and {len(b)} steps", figures)
    if max(worst.values()) > TOLERANCE:
        raise CheckFailed(f"{ctx.device.type} and cpu runs differ by {max(worst.values()):.3g} "
                          f"relative (tolerance {TOLERANCE})", figures)
    return {**figures, "notes": notes, "headline": {"max relative difference": worst,
                                                    "tolerance": TOLERANCE}}


def _part_vlm(ctx) -> dict:
    from gpu_vlm import part_vlm
    return part_vlm(ctx)


def _part_act(ctx) -> dict:
    from gpu_act import part_act
    return part_act(ctx)


FUNCTIONS = {"data": part_data, "train": part_train, "loader": part_loader, "vlm": _part_vlm,
             "act": _part_act, "ddp": part_ddp, "exact": part_exact}
