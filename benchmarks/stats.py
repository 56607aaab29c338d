"""Exact two-pass statistics vs numpy.quantile on the same 10M x 7 float32 array.

    python benchmarks/stats.py [--rows 10000000] [--chunk 1000000] [--seed 0]

Prints, for each method: best wall and CPU time, peak traced memory beyond the input array
(tracemalloc, which traces numpy's allocations, in a separate untimed run), the state's size, and
the max abs difference of the quantiles to numpy's (must be 0: compared bit for bit, dtype
included). Columns: normal, standard Cauchy (heavy-tailed), Pareto(0.5) with random sign (very
heavy), atoms at 0 and 1, 90 % exact zeros, uniform, lognormal.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from vladata.stats import StatsAccumulator, quantile_key

QUANTILES = (0.01, 0.99)


def make_data(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((rows, 7), np.float32)                                # (N, 7)
    x[:, 0] = rng.standard_normal(rows, dtype=np.float32)
    x[:, 1] = rng.standard_cauchy(rows)
    x[:, 2] = rng.pareto(0.5, rows) * rng.choice(np.array([-1.0, 1.0]), rows)
    x[:, 3] = rng.integers(0, 2, rows)
    x[:, 4] = np.where(rng.random(rows, dtype=np.float32) < 0.9, 0.0,
                       rng.standard_normal(rows, dtype=np.float32))
    x[:, 5] = rng.random(rows, dtype=np.float32) * 2 - 1
    x[:, 6] = rng.lognormal(size=rows)
    return x


def run_vlakit(x: np.ndarray, chunk: int) -> tuple[dict, dict, int]:
    acc = StatsAccumulator(x.shape[1])
    for a in range(0, len(x), chunk):                  # pass 1
        acc.update(x[a:a + chunk])
    ref = acc.refiner(QUANTILES)
    for a in range(0, len(x), chunk):                  # pass 2
        ref.update(x[a:a + chunk])
    return ref.result(np.float32), ref.result(np.float64), acc.nbytes + ref.nbytes


def numpy_per_q(x: np.ndarray) -> dict:
    """float32 results: one np.quantile call per Python-float q."""
    return {quantile_key(q): np.quantile(x, q, axis=0) for q in QUANTILES}


def numpy_list(x: np.ndarray) -> dict:
    """float64 results: one np.quantile call for the list (one partition per column)."""
    r = np.quantile(x, list(QUANTILES), axis=0)
    return {quantile_key(q): r[i] for i, q in enumerate(QUANTILES)}


def measure(fn, repeat: int):
    """(result, best wall time and best CPU time over ``repeat`` runs, peak traced memory of one
    more run). CPU time is the steadier figure on a machine other processes share."""
    best, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, (best, cpu), peak


def max_error(ours: dict, theirs: dict) -> float:
    """0.0 when every quantile is bit-identical (dtype included), else the max abs difference."""
    err = 0.0
    for k, v in theirs.items():
        if v.dtype != ours[k].dtype or v.tobytes() != ours[k].tobytes():
            err = max(err, float(np.max(np.abs(v.astype(np.float64) - ours[k]))) or float("nan"))
    return err


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--chunk", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method (best is shown)")
    args = p.parse_args(argv)
    x = make_data(args.rows, args.seed)
    (ours32, ours64, state), t_ours, m_ours = measure(lambda: run_vlakit(x, args.chunk),
                                                      args.repeat)
    per_q, t_per_q, m_per_q = measure(lambda: numpy_per_q(x), args.repeat)
    listed, t_list, m_list = measure(lambda: numpy_list(x), args.repeat)
    e32, e64 = max_error(ours32, per_q), max_error(ours64, listed)
    mb, nv = 2.0 ** 20, x.size
    print(f"{args.rows:,} x {x.shape[1]} float32 ({x.nbytes / mb:.0f} MB), quantiles "
          f"{list(QUANTILES)}, chunks of {args.chunk:,} rows, best of {args.repeat}")
    print("| method | wall (s) | CPU (s) | M values/s (CPU) | peak extra memory (MB) "
          "| state (MB) | max abs error vs numpy |")
    print("|---|---|---|---|---|---|---|")
    rows = [("vlakit two-pass, all statistics", t_ours, m_ours, f"{state / mb:.1f}",
             f"{e32:g} (float32), {e64:g} (float64)"),
            ("np.quantile(x, q, axis=0) per q (float32)", t_per_q, m_per_q, "-", "-"),
            ("np.quantile(x, [q, ...], axis=0) (float64)", t_list, m_list, "-", "-")]
    for name, (wall, cpu), peak, st, err in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {nv / cpu / 1e6:.0f} | {peak / mb:.1f} "
              f"| {st} | {err} |")
    fastest = min(t_per_q[1], t_list[1])
    print(f"CPU-time speed-up vs the faster numpy call: {fastest / t_ours[1]:.2f}x "
          f"(wall: {min(t_per_q[0], t_list[0]) / t_ours[0]:.2f}x)")
    if e32 != 0.0 or e64 != 0.0:
        raise SystemExit("quantiles differ from numpy's")


if __name__ == "__main__":
    main()
