"""Conversion speed: `vladata convert calvin` against the floor of reading every source file once.

    python benchmarks/convert.py [--frames 10000] [--workdir /tmp/vlakit-bench-convert]
    python benchmarks/convert.py --engine ray [--frames 6144] [--workers 2]   (convert_ray.py)

Generates a CALVIN-layout dataset at the real image sizes (200x200 static, 84x84 gripper), then,
in the same run and on the same files (page cache warm for all):
- floor, 1 process: np.load every frame file and touch every stored key once (and the same read
  through vladata's lean npz reader, which conversion uses);
- floor, 2 processes: the same split over two processes;
- conversion with --workers 1 and --workers 2 (raw images), each in a fresh subprocess whose
  peak RSS (largest process) is reported;
- conversion with --workers 1 on a dataset twice as long, to show peak memory does not grow with
  the dataset's length;
- conversion with --workers 2 and each of ``--codecs`` (default jpeg, h264, av1) beside raw:
  frames/s, ratio to the 2-process floor and image bytes per frame.
Prints frames/s and the ratio to the matching floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

KEYS = ("rgb_static", "rgb_gripper", "robot_obs", "scene_obs", "rel_actions", "actions")


def _read_files(files: list[str]) -> int:
    n = 0
    for f in files:
        with np.load(f) as z:
            for k in KEYS:
                n += z[k].size
    return n


def _read_files_lean(files: list[str]) -> int:
    from vladata.sources.npz import read_npz
    return sum(a.size for f in files for a in read_npz(f, KEYS).values())


def read_floor(root: Path, processes: int, reader=_read_files) -> tuple[int, float]:
    files = sorted(str(p) for p in root.glob("*/episode_*.npz"))
    t = time.perf_counter()
    if processes == 1:
        reader(files)
    else:
        chunks = [files[i::processes] for i in range(processes)]
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(reader, chunks))
    return len(files), time.perf_counter() - t


def run_convert(raw: Path, out: Path, workers: int, codec: str = "raw"
                ) -> tuple[dict, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    code = ("import json,resource,sys;from vladata.sources.calvin import CalvinSource;"
            "from vladata.store.writer import convert;"
            f"s=convert(CalvinSource({str(raw)!r}),{str(out)!r},workers={workers},"
            f"image_codec={codec!r},progress=False);"
            "print(json.dumps(s.to_dict()));"
            "print(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-2]), wall, int(lines[-1]) / 1024  # MiB


def main() -> None:
    if "--engine" in sys.argv[1:]:  # the Ray engine against the local one: convert_ray.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from convert_ray import main as engine_main
        engine_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000, help="frames in the base dataset")
    ap.add_argument("--workdir", default="/tmp/vlakit-bench-convert")
    ap.add_argument("--codecs", default="jpeg,h264,av1", help="image codecs beside raw ('' none)")
    ap.add_argument("--no-double", action="store_true", help="skip the double-length dataset")
    args = ap.parse_args()
    from vladata.samples.calvin import write_sample

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    datasets = {}
    for label, n in (("base", args.frames), ("double", 2 * args.frames))[:1 + (not args.no_double)]:
        seg = 500
        t = time.perf_counter()
        datasets[label] = write_sample(work / label, train_segments=max(1, n // seg - 1),
                                       val_segments=1, frames_per_segment=(seg - 20, seg + 20),
                                       seed=0, depth=False)
        print(f"generated {label}: {sum(1 for _ in datasets[label].glob('*/episode_*.npz'))} "
              f"frames in {time.perf_counter() - t:.0f} s", flush=True)

    raw = datasets["base"]
    _read_files(sorted(str(p) for p in raw.glob("*/episode_*.npz")))  # warm the page cache
    rows = []
    floors = {}
    for p in (1, 2):
        n, s = read_floor(raw, p)
        floors[p] = n / s
        rows.append((f"read floor (np.load), {p} process{'es' if p > 1 else ''}", n / s, 1.0, None))
    n, s = read_floor(raw, 1, _read_files_lean)
    rows.append(("read only, vladata's npz reader, 1 process", n / s, n / s / floors[1], None))
    for w in (1, 2):
        summary, wall, rss = run_convert(raw, work / f"out{w}.vla", w)
        fps = summary["frames"] / summary["seconds"]
        rows.append((f"vladata convert --workers {w}", fps, fps / floors[w], rss))
    if not args.no_double:
        summary, wall, rss = run_convert(datasets["double"], work / "outd.vla", 1)
        fps = summary["frames"] / summary["seconds"]
        rows.append((f"vladata convert --workers 1, {summary['frames']} frames", fps, None, rss))
    image_bytes = {"raw": _image_bytes(work / "out2.vla")}
    for codec in filter(None, args.codecs.split(",")):
        summary, wall, rss = run_convert(raw, work / f"{codec}.vla", 2, codec)
        fps = summary["frames"] / summary["seconds"]
        rows.append((f"vladata convert --workers 2 --image-codec {codec}", fps, fps / floors[2],
                     rss))
        image_bytes[codec] = _image_bytes(work / f"{codec}.vla")

    print(f"\nCALVIN conversion, {args.frames} frames (200x200 + 84x84 cameras), "
          f"{os.cpu_count()} cores")
    print(f"{'case':<44}{'frames/s':>10}{'x floor':>9}{'peak RSS MiB':>14}")
    for name, fps, ratio, rss in rows:
        print(f"{name:<44}{fps:>10,.0f}{'' if ratio is None else f'{ratio:>9.2f}':>9}"
              f"{'' if rss is None else f'{rss:>14,.0f}':>14}")
    print(f"scaling 1 -> 2 workers: {rows[4][1] / rows[3][1]:.2f}x "
          f"(floor scales {floors[2] / floors[1]:.2f}x)")
    print("image bytes per frame (both cameras): " + ", ".join(
        f"{c} {b:,.0f} ({image_bytes['raw'] / b:.0f}x smaller than raw)"
        for c, b in image_bytes.items()))
    shutil.rmtree(work, ignore_errors=True)


def _image_bytes(store: Path) -> float:
    """Bytes per frame of the store's camera arrays (data/observation.images.*)."""
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]["vlakit"]
    total = sum(f.stat().st_size for d in (store / "data").glob("observation.images.*")
                for f in d.rglob("*") if f.is_file())
    return total / attrs["num_frames"]


if __name__ == "__main__":
    main()
