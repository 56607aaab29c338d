"""Conversion on Ray against the local engine, on the same data, and a simulated scale-out.

    PYTHONPATH=$PWD python benchmarks/convert.py --engine ray [--frames 6144] [--workers 2]

(``benchmarks/convert.py --engine ray`` runs this.) On one generated CALVIN-layout dataset at the
real image sizes (200x200 + 84x84 cameras, raw codec), in the same run:

1. the local engine, ``--workers N``; 2. the Ray engine on a Ray it starts itself with N CPUs
(``ray.init`` and shutdown included: the engine's fixed cost, also measured alone with a no-op
task). Both report frames/s; each part's wall time and the peak RSS of the process that wrote it
are recorded (a wrapper around the part function, through the engine-object interface of
``vladata.convert``), as are the driver's plan and finalize times.

From the measured per-part costs it prints a simulated table of conversion wall time for P parts
on W workers (W = 8..512): parts are handed to free workers in order (what Ray does with
``num_cpus=1`` tasks), each part costing one of the measured part times (drawn with a fixed seed),
plus Ray's measured fixed cost, plus the driver's plan and finalize scaled linearly with frames.
Assumptions, stated with the table: per-part cost does not grow with W (the shared filesystem or
bucket and the source are not saturated -- in practice, the first limit to check); one CPU per
task; finalize stays serial on the driver (it reads the low-dim arrays back, ~1-2% of the bytes).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _timed_part(write_part, log_dir: str, job, k, rows, report):
    t = time.perf_counter()
    write_part(job, k, rows, report)
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(log_dir, f"part-{k:05d}.json").write_text(json.dumps(
        {"part": k, "rows": list(rows), "seconds": dt, "peak_rss_mib": rss, "pid": os.getpid()}))


class Timed:
    """An engine that records each part's time and its process's peak RSS (see the docstring)."""

    def __init__(self, inner, log_dir: Path):
        self.inner, self.log_dir, self.seconds = inner, log_dir, 0.0

    def run(self, write_part, job, parts, todo, bar):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        self.inner.run(functools.partial(_timed_part, write_part, str(self.log_dir)), job, parts,
                       todo, bar)
        self.seconds = time.perf_counter() - t


def convert_once(raw: Path, out: Path, engine, log_dir: Path, part_frames: int):
    from vladata.sources.calvin import CalvinSource
    from vladata.store.writer import convert
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    source = CalvinSource(str(raw))
    t = time.perf_counter()
    source.plan()
    plan_s = time.perf_counter() - t
    timed = Timed(engine, log_dir)
    s = convert(source, out, engine=timed, part_frames=part_frames, progress=False)
    parts = [json.loads(p.read_text()) for p in sorted(log_dir.glob("part-*.json"))]
    return s.to_dict(), parts, plan_s, timed.seconds


def ray_fixed_cost(cpus: int) -> float:
    """ray.init + one no-op task + shutdown, in a fresh process."""
    code = ("import time,ray;t=time.perf_counter();ray.init(num_cpus=%d,include_dashboard=False,"
            "logging_level='ERROR',log_to_driver=False);ray.get(ray.remote(lambda:0).remote());"
            "ray.shutdown();print(time.perf_counter()-t)" % cpus)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def makespan(costs: np.ndarray, workers: int) -> float:
    """Parts handed in order to the first free worker."""
    free = np.zeros(workers)
    for c in costs:
        i = int(np.argmin(free))
        free[i] += c
    return float(free.max())


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="ray")
    ap.add_argument("--frames", type=int, default=6144)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--part-frames", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/vlakit-bench-convert-ray")
    args = ap.parse_args(argv)
    from vladata.samples.calvin import write_sample
    from vladata.store.engines import LocalEngine, RayEngine
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    seg = 500
    raw = write_sample(work / "raw", train_segments=max(1, args.frames // seg - 1), val_segments=1,
                       frames_per_segment=(seg - 20, seg + 20), seed=0, depth=False)
    results = {}
    for name, engine in (("local", LocalEngine(args.workers)),
                         ("ray", RayEngine(num_cpus=args.workers))):
        t = time.perf_counter()
        summary, parts, plan_s, engine_s = convert_once(raw, work / f"{name}.vla", engine,
                                                        work / name, args.part_frames)
        results[name] = {"summary": summary, "parts": parts, "plan_s": plan_s,
                         "engine_s": engine_s, "wall": time.perf_counter() - t}
    from vladata.store.finalize import recompute
    t = time.perf_counter()
    recompute(work / "local.vla")  # both statistics passes + the action arrays: >= finalize
    recompute_s = time.perf_counter() - t
    fixed = ray_fixed_cost(args.workers)
    same = all((work / "local.vla" / p.relative_to(work / "ray.vla")).read_bytes() == p.read_bytes()
               for p in (work / "ray.vla" / "data").rglob("*") if p.is_file())
    frames = results["local"]["summary"]["frames"]
    print(f"\nCALVIN layout, {frames} frames (200x200 + 84x84, raw), {args.workers} workers, "
          f"{os.cpu_count()} cores (shared, loaded machine: short runs, expect noise)")
    print(f"{'engine':<8}{'wall s':>8}{'frames/s':>10}{'parts':>7}{'part s (mean)':>15}"
          f"{'peak RSS/part MiB':>19}")
    for name, r in results.items():
        secs = [p["seconds"] for p in r["parts"]]
        rss = max(p["peak_rss_mib"] for p in r["parts"])
        print(f"{name:<8}{r['wall']:>8.1f}{frames / r['wall']:>10,.0f}{len(secs):>7}"
              f"{np.mean(secs):>15.2f}{rss:>19,.0f}")
    print(f"ray / local frames/s: {results['local']['wall'] / results['ray']['wall']:.2f}x; "
          f"Ray fixed cost (init + a no-op task + shutdown): {fixed:.1f} s; "
          f"data files identical: {same}")

    # the simulated scale-out
    local = results["local"]
    part_costs = np.asarray([p["seconds"] for p in local["parts"]])
    part_frames = np.mean([p["rows"][1] - p["rows"][0] for p in local["parts"]])
    driver_fixed = local["wall"] - local["engine_s"] - recompute_s  # plan, create, manifest
    per_frame_driver = recompute_s / frames
    print(f"driver: plan() {local['plan_s']:.2f} s, everything but the parts "
          f"{local['wall'] - local['engine_s']:.2f} s; statistics passes + action arrays "
          f"(vladata stats) {recompute_s:.2f} s = {per_frame_driver * 1e3:.3f} ms/frame")
    rng = np.random.default_rng(0)
    print(f"\nsimulated wall time (s): P parts of {part_frames:,.0f} frames (measured part "
          f"costs {part_costs.min():.2f}-{part_costs.max():.2f} s), W workers; + Ray fixed "
          f"{fixed:.1f} s + driver {max(driver_fixed, 0):.1f} s + finalize "
          f"{per_frame_driver * 1e3:.3f} ms/frame")
    workers = (8, 32, 128, 512)
    print(f"{'P':>7}{'frames':>13}" + "".join(f"{'W=' + str(w):>10}" for w in workers)
          + f"{'W=1':>11}")
    for p in (64, 512, 4096, 32768):
        costs = rng.choice(part_costs, size=p)
        driver = fixed + max(driver_fixed, 0.0) + per_frame_driver * p * part_frames
        row = [driver + makespan(costs, w) for w in workers]
        print(f"{p:>7}{p * part_frames:>13,.0f}" + "".join(f"{x:>10,.0f}" for x in row)
              + f"{driver + costs.sum():>11,.0f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
