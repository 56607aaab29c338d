"""A bounded, seeded fuzzer of the source readers (used by test_fuzz.py).

Each reader gets small samples written by :mod:`vladata.samples`; a case restores them, mutates
one of their files (byte flips, a truncation or inserted bytes), then runs the reader end to end
(construct, ``features()``, ``plan()``, ``read()`` of every episode, the frame check the store
writer applies). The only acceptable outcomes are success and a :class:`VladataError`; anything
else is a leak, reported with the case number, the file and the traceback's last frames.

:func:`fuzz` runs in a child process and reports each case's start and end through a pipe, so
the parent can tell a hang (no report within the per-case timeout) from slow progress.
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from vladata.episode import check_frames
from vladata.errors import VladataError

READERS = ("calvin", "oxe", "hdf5", "lerobot", "rosbag")


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flip 1-8 bytes, truncate, insert 1-16 random bytes (seeded by ``rng``)."""
    b = bytearray(data)
    op = int(rng.integers(3)) if b else 2
    if op == 0:
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    elif op == 1:
        del b[int(rng.integers(len(b))):]
    else:
        at = int(rng.integers(len(b) + 1))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    return bytes(b)


def exercise(source) -> None:
    """Everything a conversion asks of a source."""
    feats = source.features()
    for i, info in enumerate(source.plan()):
        check_frames(source.read(i), feats, info.length, episode=info.source_id)
    source.describe()


def samples(reader: str, root: Path) -> list[tuple[Path, Callable[[], None]]]:
    """``(file to mutate, run)`` pairs of ``reader``'s samples written under ``root``."""
    if reader == "calvin":
        from vladata.samples.calvin import write_sample
        from vladata.sources.calvin import CalvinSource
        d = write_sample(root / "calvin", train_segments=1, val_segments=1,
                         frames_per_segment=(3, 4), static_size=8, gripper_size=6, depth=False)
        run = lambda: exercise(CalvinSource(str(d)))  # noqa: E731
        files = [p for p in sorted(d.rglob("*")) if p.is_file() and p.suffix in (".npz", ".npy")]
        frames = [p for p in files if p.name.startswith("episode_")]
        keep = [p for p in files if not p.name.startswith("episode_")] + frames[:2] + frames[-1:]
        return [(p, run) for p in keep]
    if reader == "oxe":
        from vladata.samples.oxe import write_sample
        from vladata.sources.oxe import OxeSource
        out = []
        for name in ("fractal20220817_data", "taco_play"):
            d = write_sample(root / name, dataset=name, episodes=2, shards=1, steps=(3, 4),
                             splits={"train": 1.0})
            run = (lambda d=d: exercise(OxeSource(str(d), progress=False)))
            out += [(p, run) for p in sorted(d.iterdir()) if p.is_file()]
        return out
    if reader == "hdf5":
        from vladata.samples import hdf5 as h
        from vladata.sources.hdf5 import Hdf5Source
        out = []
        for layout, kw in (("aloha", {}), ("aloha", {"compress": True})):
            d = root / f"aloha{len(out)}"
            h.write_aloha(d, episodes=2, length=3, size=(8, 10), **kw)
            run = (lambda d=d: exercise(Hdf5Source(str(d), layout="aloha")))
            out += [(p, run) for p in sorted(d.glob("*.hdf5"))]
        f = root / "robomimic" / "demo.hdf5"
        h.write_robomimic(f, demos=2, lengths=[3, 4], image_size=6, valid=(1,))
        out.append((f, lambda: exercise(Hdf5Source(str(f), layout="robomimic"))))
        return out
    if reader == "lerobot":
        from vladata.samples.lerobot import write_sample
        from vladata.sources.lerobot import LeRobotSource
        out = []
        for version, kw in (("v3.0", {"cameras": ("top",), "image_cameras": ("wrist",)}),
                            ("v2.1", {"cameras": ()})):
            d = root / version
            write_sample(d, version, episodes=2, lengths=[3, 4], size=(8, 8), **kw)
            run = (lambda d=d: exercise(LeRobotSource(str(d))))
            out += [(p, run) for p in sorted(d.rglob("*")) if p.is_file()]
        return out
    if reader == "rosbag":
        from vladata.samples.rosbag import write_sample
        from vladata.sources.rosbag import RosbagSource
        out = []
        for storage in ("ros1", "sqlite3", "mcap"):
            d = root / storage
            write_sample(d, storage, episodes=1, duration_s=0.4, size=(4, 6))
            run = (lambda d=d: exercise(RosbagSource(str(d), str(d / "mapping.yaml"))))
            out += [(p, run) for p in sorted(d.rglob("*")) if p.is_file()]
        return out
    raise ValueError(reader)


def fuzz(reader: str, cases: int, seed: int, conn) -> None:
    """Child process body: run ``cases`` mutated cases, reporting each over ``conn``."""
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        targets = samples(reader, Path(tmp))
        originals = {p: p.read_bytes() for p, _ in targets}
        baseline = []  # every unmutated sample must read: else the cases test nothing
        for run in dict.fromkeys(run for _, run in targets):
            try:
                run()
            except Exception as e:  # noqa: BLE001
                baseline.append(f"{type(e).__name__}: {e}")
        conn.send(("ready", len(targets), baseline))
        for c in range(cases):
            rng = np.random.default_rng([seed, c])
            for p, data in originals.items():
                p.write_bytes(data)
            path, run = targets[int(rng.integers(len(targets)))]
            path.write_bytes(mutate(originals[path], rng))
            conn.send(("start", c, str(Path(path).relative_to(tmp))))
            try:
                run()
                outcome = None
            except VladataError:
                outcome = None
            except Exception as e:  # noqa: BLE001 -- a leak is what this harness looks for
                tb = "".join(traceback.format_exception(e)[-4:])
                outcome = f"{type(e).__name__}: {e}\n{tb}"
            conn.send(("done", c, outcome))
    conn.send(("end",))
