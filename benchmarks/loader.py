"""Window loading speed: the vlakit store (lossless, JPEG), the wds stream, a naive per-frame npz
loader, and the ceilings (memmap copy of the same bytes; JPEG decode of the same frames).

All cases read the same generated CALVIN data (static 200x200 + gripper 84x84 cameras): history
16, chunk 10, batch 32, shuffled windows over the training episodes; each row of the table is
windows/s after a few warm-up batches (worker start-up excluded), page cache warm::

    python benchmarks/loader.py --frames 20000 --work /tmp/vla-bench       # ~5 min the first time
    python benchmarks/loader.py --work /tmp/vla-bench --json out.json     # reuses the data
    python benchmarks/loader.py --work /tmp/vla-bench --verify-only       # CRC32C check on vs off
    python benchmarks/loader.py --codecs --frames 3000 --work /tmp/vla-codecs --rounds 2

``--codecs`` compares the image codecs side by side on the same data: raw, JPEG q90, H.264 and
AV1 (GOP 16): bytes per frame, conversion frames/s, windows/s with 0 and 2 workers, decode ms per
window and the decode ceiling (the same packets/JPEGs decoded in a bare loop, no loader).

Generation, conversion and export are cached in ``--work`` (delete it to start again). Each
case is measured in ``--rounds`` interleaved rounds and the best is reported (the machine is
shared); the lossless store is also timed over its first full pass, while each worker maps the
files' pages for the first time (later rounds: mapped, like the pre-touched memmap ceiling).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import vladata
from vladata.images import decode_jpeg
from vladata.safe_pickle import load_pickled_npy
from vladata.samples.calvin import write_sample
from vladata.sources.calvin import CalvinSource, frame_path
from vladata.store.shard_reader import StoreReader
from vladata.stream import WindowStream, export_wds

H, C, B = 16, 10, 32
CAMS = ("observation.images.rgb_static", "observation.images.rgb_gripper")
SEG = (450, 550)


# -- data ----------------------------------------------------------------------------------------

def _part(args):
    out, segments, seed = args
    write_sample(out, train_segments=segments, val_segments=1, frames_per_segment=SEG,
                 static_size=200, gripper_size=84, seed=seed, depth=False)


def generate(work: Path, frames: int, procs: int) -> Path:
    """A CALVIN split root of about ``frames`` training frames, written by ``procs`` processes."""
    root = work / "calvin"
    if (root / "done").exists():
        return root
    shutil.rmtree(work / "parts", ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    segments = max(1, round(frames / np.mean(SEG)))
    per = [segments // procs + (k < segments % procs) for k in range(procs)]
    parts = [(str(work / "parts" / str(k)), n, k) for k, n in enumerate(per) if n]
    with mp.get_context("fork").Pool(len(parts)) as pool:
        pool.map(_part, parts)
    # merge the parts' training folders: frame ids of part k shifted by k * 1,000,000
    train = root / "training"
    train.mkdir(parents=True)
    ids, lang = [], {"ann": [], "task": [], "emb": [], "indx": []}
    for k, (d, _, _) in enumerate(parts):
        d, shift = Path(d) / "training", k * 1_000_000
        r = np.load(d / "ep_start_end_ids.npy")
        for s, e in r:
            for f in range(s, e + 1):
                os.rename(frame_path(d, f), frame_path(train, f + shift))
        ids.append(r + shift)
        a = load_pickled_npy(d / "lang_annotations" / "auto_lang_ann.npy")
        for key in ("ann", "task", "emb"):
            lang[key] += list(a["language"][key])
        lang["indx"] += [(s + shift, e + shift) for s, e in a["info"]["indx"]]
    first = Path(parts[0][0])
    ids = np.concatenate(ids)
    np.save(train / "ep_start_end_ids.npy", ids)
    np.save(train / "ep_lens.npy", ids[:, 1] - ids[:, 0] + 1)
    (train / "lang_annotations").mkdir()
    np.save(train / "lang_annotations" / "auto_lang_ann.npy",
            {"language": {"ann": lang["ann"], "task": lang["task"], "emb": np.stack(lang["emb"])},
             "info": {"episodes": [], "indx": lang["indx"]}}, allow_pickle=True)
    for f in ("scene_info.npy", "statistics.yaml"):
        shutil.copy(first / "training" / f, train / f)
    shutil.move(str(first / "validation"), str(root / "validation"))
    shutil.rmtree(work / "parts")
    (root / "done").touch()
    return root


def prepare(work: Path, root: Path, procs: int) -> dict[str, Path]:
    paths = {"lossless": work / "lossless.vla", "jpeg": work / "jpeg.vla", "wds": work / "wds",
             "memmap": work / "memmap"}
    for codec, key in (("raw", "lossless"), ("jpeg", "jpeg")):
        if not (paths[key] / "meta" / "manifest.json").exists():
            vladata.convert(CalvinSource(str(root)), paths[key], workers=procs, image_codec=codec,
                            overwrite=True, progress=False)
    if not (paths["wds"] / "index.json").exists():
        export_wds(vladata.open(paths["lossless"]), str(paths["wds"]), samples=256, context=31,
                   shard_size=256 << 20, overwrite=True)
    if not (paths["memmap"] / "done").exists():
        paths["memmap"].mkdir(exist_ok=True)
        r = StoreReader(str(paths["lossless"]))
        for cam in CAMS:
            a = r[cam]
            mm = np.lib.format.open_memmap(paths["memmap"] / f"{cam}.npy", "w+", np.uint8, a.shape)
            for lo in range(0, a.shape[0], 1024):
                hi = min(a.shape[0], lo + 1024)
                a.read_into(lo, hi, mm[lo:hi])
            mm.flush()
            del mm
        (paths["memmap"] / "done").touch()
    return paths


def warm(path: Path) -> None:
    """Read every file under ``path`` once, so the page cache holds it."""
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


# -- loaders -------------------------------------------------------------------------------------

def measure(it, batches: int, warmup: int) -> float:
    """windows/s over the next ``batches`` batches of ``it`` after ``warmup`` batches."""
    for _ in range(warmup):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["index"])
    return n / (time.perf_counter() - t0)


def best_of_rounds(cases, rounds: int, first_pass: frozenset = frozenset()) -> dict:
    """Windows/s of every case ``(name, workers, make, batches)``, best of ``rounds`` interleaved
    rounds (the machine may be shared); each loader is made once and kept across rounds, then
    closed. A case named in ``first_pass`` also records its first pass over the data."""
    best: dict[tuple[str, int], float] = {}
    live = {}
    for rnd in range(rounds):
        for name, w, make, batches in cases:
            if (name, w) not in live:
                obj = make()
                live[(name, w)] = (obj, obj if isinstance(obj, Ceiling) else cycle(obj))
                if name in first_pass:
                    # the store's files are mapped lazily in each worker: the first pass over the
                    # data pays the page-table faults, later epochs run at the mapped speed
                    first = measure(live[(name, w)][1], len(obj) - 1, 0)
                    best[(name + ", first pass over the data", w)] = first
            obj, it = live[(name, w)]
            time.sleep(0.3)  # let a loader's prefetching of the last case settle
            v = it() if isinstance(it, Ceiling) else measure(it, batches, 2 * max(w, 1) + 1)
            best[(name, w)] = max(best.get((name, w), 0.0), v)
        print(f"round {rnd + 1}/{rounds} done", flush=True)
    for obj, _ in live.values():
        if hasattr(obj, "close"):
            obj.close()
    return best


def cycle(loader):
    while True:
        yield from loader


class NaiveWindows(torch.utils.data.Dataset):
    """The per-frame baseline: every window opens its h + c - 1 CALVIN npz files (as CALVIN's loaders)."""

    def __init__(self, root: Path):
        self.dir = root / "training"
        self.starts = [t for s, e in np.load(self.dir / "ep_start_end_ids.npy")
                       for t in range(s, e + 2 - H - C)]

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        t = self.starts[i]
        frames = []
        for f in range(t, t + H + C - 1):
            with np.load(frame_path(self.dir, f)) as z:
                keys = ("rgb_static", "rgb_gripper", "robot_obs", "rel_actions") if f < t + H else ("rel_actions",)
                frames.append({k: z[k] for k in keys})
        act = np.stack([fr["rel_actions"] for fr in frames]).astype(np.float32)
        return {"rgb_static": np.stack([fr["rgb_static"] for fr in frames[:H]]),
                "rgb_gripper": np.stack([fr["rgb_gripper"] for fr in frames[:H]]),
                "state": np.stack([fr["robot_obs"] for fr in frames[:H]]).astype(np.float32),
                "action": np.stack([act[i:i + C] for i in range(H)]), "index": i}


def naive(root: Path, workers: int):
    dl = torch.utils.data.DataLoader(NaiveWindows(root), batch_size=B, shuffle=True,
                                     num_workers=workers, generator=torch.Generator().manual_seed(0))
    return cycle(dl)


# -- ceilings ------------------------------------------------------------------------------------

class Ceiling:
    """The bound of one case, measured in ``procs`` persistent processes with warm inputs.

    ``memmap``: copy random windows of the same bytes out of numpy memmaps (mapped once, every
    page touched before timing) into a reused batch buffer. ``jpeg``: decode random windows of the
    store's JPEG frames, held in memory, into a reused batch buffer.
    """

    def __init__(self, kind: str, procs: int, source, n: int, isolated: bool = False):
        self.kind, self.procs, self.n = kind, procs, n
        if procs == 1 and not isolated:  # isolated: own process (its state apart from others')
            _ceiling_init(kind, source)
            self.pool = None
        else:
            self.pool = mp.get_context("fork").Pool(procs, _ceiling_init, (kind, source))
        self.round = 0

    def __call__(self) -> float:
        self.round += 1
        args = [(self.n, self.round * 100 + k) for k in range(self.procs)]
        t0 = time.perf_counter()
        res = [_ceiling_run(args[0])] if self.pool is None else self.pool.map(_ceiling_run, args)
        wall = time.perf_counter() - t0
        return sum(n for n, _ in res) / wall

    def close(self):
        if self.pool is not None:
            self.pool.terminate()


_STATE: dict = {}


def _ceiling_init(kind, source):
    if kind == "memmap":
        mms = [np.load(Path(source) / f"{cam}.npy", mmap_mode="r") for cam in CAMS]
        for m in mms:  # touch every page of the mapping once
            for lo in range(0, m.shape[0], 256):
                np.asarray(m[lo:lo + 256]).sum(dtype=np.uint64)
        _STATE.update(kind=kind, data=mms, shapes=[m.shape[1:] for m in mms], n=mms[0].shape[0])
    else:
        _STATE.update(kind=kind, data=[f[0] for f in source], shapes=[f[1] for f in source],
                      n=len(source[0][0]))
        if kind == "video":
            _STATE.update(decoders=[f[2] for f in source], gop=source[0][3])
    _STATE["bufs"] = [np.zeros((B, H, *shape), np.uint8) for shape in _STATE["shapes"]]
    for b in _STATE["bufs"]:
        b[...] = 1  # first touch of the batch buffer here, not in the timing


def _ceiling_run(args):
    n, seed = args
    st = _STATE
    starts = np.random.default_rng(seed).integers(0, st["n"] - H, n)
    t0 = time.perf_counter()
    for k, t in enumerate(starts):
        for data, buf in zip(st["data"], st["bufs"]):
            if st["kind"] == "memmap":
                buf[k % B] = data[t:t + H]
            else:
                for i in range(H):
                    decode_jpeg(data[t + i], buf[k % B, i])
    return n, time.perf_counter() - t0


def _video_ceiling_run(args):
    """Random windows decoded with plain PyAV from the keyframe before each, packets in memory."""
    import av
    n, seed = args
    st = _STATE
    starts = np.random.default_rng(seed).integers(0, st["n"] - H, n)
    decs = [av.CodecContext.create(d, "r") for d in st["decoders"]]
    for d in decs:
        d.thread_count = 1
    t0 = time.perf_counter()
    for k, t in enumerate(starts):
        for data, buf, dec in zip(st["data"], st["bufs"], decs):
            a = t
            while a < t + H:  # per shard piece: from its keyframe
                b = min(t + H, (a // 64 + 1) * 64)
                key = a - (a % 64) % st["gop"]
                dec.flush_buffers()
                for r in range(key, b):
                    pkt = av.Packet(data[r])
                    pkt.pts = r
                    for fr in dec.decode(pkt):
                        if fr.pts >= t:
                            buf[k % B, fr.pts - t] = fr.to_ndarray(format="rgb24", threads=1)
                a = b
    return n, time.perf_counter() - t0


class VideoCeiling(Ceiling):
    def __init__(self, procs: int, source, n: int):
        self.kind, self.procs, self.n, self.round = "video", procs, n, 0
        self.pool = mp.get_context("fork").Pool(procs, _ceiling_init, ("video", source))

    def __call__(self) -> float:
        self.round += 1
        args = [(self.n, self.round * 100 + k) for k in range(self.procs)]
        t0 = time.perf_counter()
        self.pool.map(_video_ceiling_run, args)
        return self.n * self.procs / (time.perf_counter() - t0)


# -- main ----------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/vla-bench")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=2, help="processes for generation/conversion")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batches", type=int, default=40, help="batches per round (JPEG: 1/2, collate: 1/4)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--naive-batches", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--verify-only", action="store_true",
                    help="only the store cases, with chunk CRC32C verification off and on")
    ap.add_argument("--codecs", action="store_true",
                    help="only the image-codec comparison (raw, jpeg, h264, av1)")
    a = ap.parse_args(argv)
    if a.codecs:
        return codecs_main(a)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = generate(work, a.frames, a.procs)
    paths = prepare(work, root, a.procs)
    ds = vladata.open(paths["lossless"])
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {ds.num_frames} frames, "
          f"{len(ds)} episodes; lossless {_du(paths['lossless'])}, jpeg {_du(paths['jpeg'])}, "
          f"wds {_du(paths['wds'])}, npz {_du(root)}", flush=True)
    workers = [int(w) for w in a.workers.split(",")]
    kw = dict(history=H, chunk=C, split="train", over="episodes")
    # every case: (name, workers, make(): batch iterator | ceiling function, batches per round)
    cases = []
    for key, name in (("lossless", "(a) store, lossless"), ("jpeg", "(b) store, JPEG q90")):
        wd = vladata.open(paths[key]).windows(**kw)
        for w in workers:
            cases.append((name, w, lambda wd=wd, w=w: wd.loader(batch_size=B, num_workers=w),
                          a.batches if key == "lossless" else a.batches // 2))
    wd = vladata.open(paths["lossless"]).windows(**kw)
    for w in workers:
        cases.append(("(a') store, lossless, torch default collate", w, lambda w=w:
                      torch.utils.data.DataLoader(wd, batch_size=B, shuffle=True, num_workers=w,
                                                  persistent_workers=w > 0), a.batches // 4))
    for w in workers:
        cases.append(("(c) wds stream, 256-frame samples", w, lambda w=w: WindowStream(
            str(paths["wds"]), **kw, batch_size=B, shuffle_buffer=4).loader(num_workers=w), a.batches))
    for w in workers:  # the cost of checking every chunk's CRC32C on the window path
        for key, name in (("lossless", "(a) store, lossless"), ("jpeg", "(b) store, JPEG q90")):
            wv = vladata.open(paths[key]).windows(**kw, verify=True)
            cases.append((name + ", verify=True", w, lambda wv=wv, w=w:
                          wv.loader(batch_size=B, num_workers=w),
                          a.batches if key == "lossless" else a.batches // 2))
    n = a.batches * B
    r = StoreReader(str(paths["jpeg"]))
    m = min(4096, ds.num_frames)
    frames = [(r[cam].read_items(0, m), tuple(ds.info["features"][cam]["shape"])) for cam in CAMS]
    for p in (1, 2):
        cases.append((f"(e) ceiling: memmap copy, {p} process{'es' * (p > 1)}", p,
                       lambda p=p: Ceiling("memmap", p, str(paths["memmap"]), n), 0))
    for p in (1, 2):
        cases.append((f"(f) ceiling: JPEG decode only, {p} process{'es' * (p > 1)}", p,
                       lambda p=p: Ceiling("jpeg", p, frames, max(64, n // 2)), 0))
    if a.verify_only:
        cases = [c for c in cases if c[0].startswith(("(a) ", "(b) "))]
    for p in (paths["lossless"], paths["jpeg"], paths["wds"], paths["memmap"]):
        warm(p)
    best = best_of_rounds(cases, a.rounds, frozenset({"(a) store, lossless"}))
    if not a.verify_only:
        warm(root / "training")
        for w in workers:  # slow: one round
            best[("(d) naive: per-frame CALVIN npz", w)] = measure(naive(root, w), a.naive_batches,
                                                                   max(w, 1))
    rows = [(name, w, v) for (name, w), v in sorted(best.items())]
    print(f"\nbest of {a.rounds} rounds, windows/s (history {H}, chunk {C}, batch {B}, two cameras "
          f"200x200 + 84x84, {ds.num_frames} frames; 1-min load average at the end: {os.getloadavg()[0]:.1f})")
    print("| case | workers / processes | windows/s |\n|---|---|---|")
    for name, w, v in rows:
        print(f"| {name} | {w} | {v:,.0f} |")
    print("\nchunk CRC32C verification (verify=True vs the default):")
    for w in workers:
        for name in ("(a) store, lossless", "(b) store, JPEG q90"):
            on, off = best[(name + ", verify=True", w)], best[(name, w)]
            print(f"  {name}, workers={w}: {on:,.0f} vs {off:,.0f} windows/s: "
                  f"{on / off:.2f}x ({100 * (1 - on / off):+.1f}% cost)")
    if a.verify_only:
        return
    ceil = {p: best[(f"(e) ceiling: memmap copy, {p} process{'es' * (p > 1)}", p)] for p in (1, 2)}
    jceil = {p: best[(f"(f) ceiling: JPEG decode only, {p} process{'es' * (p > 1)}", p)] for p in (1, 2)}
    print("\ntargets (2 cores):")
    for w in workers:
        p = 1 if w == 0 else 2
        v = best[("(a) store, lossless", w)]
        print(f"  lossless, workers={w}: {v:,.0f} windows/s (target >= 2,000), {100 * v / ceil[p]:.0f}% "
              f"of the {p}-process memmap ceiling (target >= 25%)")
        v = best[("(b) store, JPEG q90", w)]
        print(f"  JPEG, workers={w}: {v:,.0f} windows/s, {100 * v / jceil[p]:.0f}% of the {p}-process "
              f"JPEG-decode ceiling (target >= 70%)")
    if a.json:
        Path(a.json).write_text(json.dumps({"frames": ds.num_frames, "rows": rows}, indent=1))


CODECS = ("raw", "jpeg", "h264", "av1")


def codecs_main(a) -> None:
    """The ``--codecs`` comparison (see the module docstring)."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    root = generate(work, a.frames, a.procs)
    info = {}
    for codec in CODECS:
        out = work / f"codec-{codec}.vla"
        if not (out / "meta" / "manifest.json").exists():
            s = vladata.convert(CalvinSource(str(root)), out, workers=a.procs, image_codec=codec,
                                overwrite=True, progress=False)
            (work / f"codec-{codec}.json").write_text(json.dumps({"fps": s.frames / s.seconds}))
        ds = vladata.open(out)
        nbytes = {cam: sum(f.stat().st_size for f in (out / "data" / cam).rglob("*")
                           if f.is_file()) / ds.num_frames for cam in CAMS}
        info[codec] = {"bytes": nbytes, "convert_fps": json.loads(
            (work / f"codec-{codec}.json").read_text())["fps"], "ds": ds,
            "storage": ds.info["features"][CAMS[0]]["storage"]}
        warm(out)
    workers = [int(w) for w in a.workers.split(",")]
    kw = dict(history=H, chunk=C, split="train", over="episodes")
    n = max(64, a.batches * B // 4)
    ds0 = info["raw"]["ds"]
    cases = []
    for codec in CODECS:
        wd = info[codec]["ds"].windows(**kw)
        for w in workers:
            cases.append((codec, w, lambda wd=wd, w=w: wd.loader(batch_size=B, num_workers=w)))
        r = StoreReader(str(work / f"codec-{codec}.vla"))
        m = ds0.num_frames
        if codec == "raw":
            src = None
        else:
            src = [(r[cam].read_items(0, m), tuple(ds0.info["features"][cam]["shape"]),
                    r[cam].attrs.get("video", {}).get("decoder"),
                    r[cam].attrs.get("video", {}).get("gop")) for cam in CAMS]
        for p in sorted({1 if w == 0 else 2 for w in workers}):
            if codec in ("h264", "av1"):
                cases.append((codec + " ceiling", p, lambda p=p, s=src: VideoCeiling(p, s, n)))
            elif codec == "jpeg":
                cases.append((codec + " ceiling", p, lambda p=p, s=src: Ceiling(
                    "jpeg", p, [f[:2] for f in s], n, isolated=True)))
    best = best_of_rounds([(name, w, make, a.batches if name == "raw" else max(4, a.batches // 4))
                           for name, w, make in cases], a.rounds)
    raw_bytes = sum(info["raw"]["bytes"].values())
    print(f"\nimage codecs, best of {a.rounds} rounds ({ds0.num_frames} frames, two cameras "
          f"200x200 + 84x84, windows of history {H}, batch {B}; load average "
          f"{os.getloadavg()[0]:.1f})")
    print("| codec | settings | bytes/frame (static + gripper) | x smaller than raw | "
          "PSNR mean/min dB (static) | convert frames/s | windows/s, 0 workers | "
          "windows/s, 2 workers | decode ms/window (1 proc) | % of decode ceiling, 0 / 2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for codec in CODECS:
        i = info[codec]
        s = i["storage"]
        b = sum(i["bytes"].values())
        settings = {"raw": "lossless", "jpeg": "q90"}.get(codec) or \
            f"gop {s['gop']}, crf {s['crf']}, {s['encoder']} {s['preset']}"
        psnr = s.get("psnr")
        w0, w2 = best.get((codec, 0)), best.get((codec, 2))
        ceil = {p: best.get((codec + " ceiling", p)) for p in (1, 2)}
        pct = " / ".join("-" if c is None or v is None else f"{100 * v / c:.0f}%"
                         for v, c in ((w0, ceil[1]), (w2, ceil[2])))
        ms = "-" if w0 is None else f"{1000 / w0:.2f}"
        q = "-" if not psnr else f"{psnr['mean']} / {psnr['min']}"
        print(f"| {codec} | {settings} | {b:,.0f} ({i['bytes'][CAMS[0]]:,.0f} + "
              f"{i['bytes'][CAMS[1]]:,.0f}) | {raw_bytes / b:.0f} | "
              f"{q} | "
              f"{i['convert_fps']:,.0f} | {w0 or 0:,.0f} | {w2 or 0:,.0f} | {ms} | {pct} |")
        rows.append({"codec": codec, "bytes_per_frame": b, "convert_fps": i["convert_fps"],
                     "windows_0": w0, "windows_2": w2, "ceiling_1": ceil[1], "ceiling_2": ceil[2]})
    print("decode ms/window: 1000 / windows/s with 0 workers (the whole window: both cameras, "
          "state, actions); ceilings: the same frames decoded in a bare loop, no loader")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


def _du(p: Path) -> str:
    total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return f"{total / 2**20:,.0f} MiB"


if __name__ == "__main__":
    main()
