"""``scripts/demo.sh`` (what ``make demo`` runs) ends by saying whether the policy beats the
baseline, where its run and TensorBoard logs are, and what to do next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_closing_lines(tmp_path):
    bin_dir = tmp_path / "bin"  # the console scripts, running this checkout's code
    bin_dir.mkdir()
    for name in ("vladata", "vlatrain"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.{name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "demo"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out),
           "STEPS": "2", "PYTHONPATH": str(ROOT),
           "SAMPLE_FLAGS": "--train-segments 2 --val-segments 1 --frames 40,60 --image-size 32,24",
           "RUN_FLAGS": "data.num_workers=0 data.batch_size=8 model.image_size=24 model.width=16 "
                        "model.hidden=32 model.layers=1 eval.batches=2 log.progress=false"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tail = r.stdout[r.stdout.index("== vlakit demo done =="):]
    beats = "arm error is below the mean-action baseline" in (out / "eval.txt").read_text()
    assert ("The policy BEATS the mean-action baseline" in tail) == beats
    assert ("The policy does NOT beat the mean-action baseline" in tail) == (not beats)
    for line in (f"run:          {out}/run", f"TensorBoard:  tensorboard --logdir {out}/run/tensorboard",
                 "convert your own data:   vladata convert", "vlatrain init my.vla -o my.yaml",
                 "make sim-demo", "vlatrain rollout CKPT"):
        assert line in tail, (line, tail)
    assert (out / "run" / "tensorboard").is_dir()
