"""GPU readiness: one prepared device check, run part by part (``benchmarks/gpu_check.sh``).

The check is written on a CPU machine and run in one go where a GPU is lent for a few minutes,
so every part is its own process (``gpu_check.py part NAME``) under its own time budget: a part
that crashes, hangs or breaks the CUDA context records its error and leaves the others alone.
Each writes ``<out>/parts/<name>.json`` (status ``ok``, ``skipped`` with a reason, or ``error``
with the traceback); ``gpu_check.py report`` merges them into ``gpu_check.json`` and a short
``gpu_check.md`` and exits non-zero when any part failed or left no result.

Parts (``benchmarks/gpu_parts.py``; ``gpu_vlm.py`` and ``gpu_act.py`` for c and d):

- ``data``: the CALVIN sample (``vladata sample calvin``) converted into a store;
- ``train`` (a): the embedded model trained from the store, fp32 / bf16 / fp16 + GradScaler;
- ``loader`` (b): the window loader alone feeding the device from pinned memory, against the
  device's raw memcpy bandwidth;
- ``vlm`` (c): a real-size VLM step (PaliGemma-3B, Qwen2-VL-2B shapes, random weights, bf16);
- ``act`` (d): action latency of the embedded model and one VLM;
- ``ddp`` (e): two-process DDP with nccl (two GPUs or skipped);
- ``exact`` (f): a CUDA run and a CPU run of the embedded model agree for 20 steps.

``--device cpu`` runs the same code at small sizes (tiny VLM configs, few steps): the test suite
does, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = ("data", "train", "loader", "vlm", "act", "ddp", "exact")
LETTERS = {"train": "a", "loader": "b", "vlm": "c", "act": "d", "ddp": "e", "exact": "f"}
SOFT = 0.75  # a part plans its work to end within this fraction of its budget

# Sizes per device: the GPU preset is the real check, the CPU preset a fast dry run.
SIZES = {
    "cuda": dict(sample=[], convert_workers=4, batch=64, workers=6, warmup=20, steps=200,
                 log_every=10, loader_batches=300, memcpy_mb=256, memcpy_iters=40,
                 vlm="real", vlm_batch=8, vlm_warmup=2, vlm_steps=5, act_iters=100,
                 act_vlm_iters=30, ddp_steps=100, exact_steps=20, exact_batch=32),
    "cpu": dict(sample=["--train-segments", "2", "--val-segments", "1", "--frames", "40,60",
                        "--image-size", "64,32"], convert_workers=1, batch=8, workers=0,
                warmup=2, steps=4, log_every=2, loader_batches=6, memcpy_mb=8, memcpy_iters=3,
                vlm="tiny", vlm_batch=2, vlm_warmup=1, vlm_steps=1, act_iters=5,
                act_vlm_iters=3, ddp_steps=4, exact_steps=4, exact_batch=8),
}


class CheckFailed(Exception):
    """A part ran but its result is wrong; ``figures`` still go into the report."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


class Skip(Exception):
    """A part (or all of it) does not apply here; the message is the reason."""


@dataclass
class Context:
    device: "object"   # torch.device
    store: Path        # the converted CALVIN sample
    work: Path         # scratch directory of this part
    size: dict
    budget: float
    start: float

    def left(self) -> float:
        """Seconds left of this part's soft budget."""
        return self.start + SOFT * self.budget - time.perf_counter()


def write_json(path: Path, obj) -> None:
    """Atomically: a temporary name renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def run_part(name: str, device: str, store: Path, work: Path, out: Path, budget: float) -> dict:
    """Run one part, catching everything: its record (also written to ``out/parts``)."""
    start = time.perf_counter()
    rec = {"part": name, "letter": LETTERS.get(name), "device": device, "budget_s": budget}
    try:
        import torch
        from gpu_parts import FUNCTIONS
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device "
                               f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        size = SIZES[dev.type]
        work.mkdir(parents=True, exist_ok=True)
        rec.update(status="ok", **FUNCTIONS[name](Context(dev, store, work, size, budget, start)))
    except Skip as e:
        rec.update(status="skipped", reason=str(e))
    except CheckFailed as e:
        rec.update(status="error", error=str(e), figures=e.figures, traceback=traceback.format_exc())
    except BaseException as e:  # noqa: BLE001 -- recorded loudly; the report exits non-zero
        rec.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    rec["seconds"] = round(time.perf_counter() - start, 2)
    write_json(out / "parts" / f"{name}.json", rec)
    return rec


def environment() -> dict:
    import platform

    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def report(records: Path, out: Path, device: str) -> int:
    """Merge the parts' records (``records/<name>.json``, and ``<name>.rc``: the exit status the
    script saw) into ``out``/gpu_check.json + gpu_check.md; 1 when any part failed or is missing."""
    parts, failed = {}, []
    for name in PARTS:
        f = records / f"{name}.json"
        if f.is_file():
            parts[name] = json.loads(f.read_text())
        else:  # killed by its budget (timeout) or crashed before writing
            rc = records / f"{name}.rc"
            code = rc.read_text().strip() if rc.is_file() else "unknown"
            why = ("killed at its time budget" if code in ("124", "137") else "crashed")
            parts[name] = {"part": name, "letter": LETTERS.get(name), "status": "error",
                           "error": f"no result: the part {why} (exit code {code})"}
        if parts[name]["status"] == "error":
            failed.append(name)
    result = {"check": "vlakit GPU readiness", "device": device, "environment": environment(),
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "failed": failed, "parts": parts}
    write_json(out / "gpu_check.json", result)
    (out / "gpu_check.md").write_text(summary(result))
    for name in failed:
        print(f"gpu_check: part {name} FAILED: {parts[name]['error']}", file=sys.stderr)
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}"
          f" ({len(failed)} part(s) failed)")
    return 1 if failed else 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def summary(result: dict) -> str:
    """The human summary: one section per part, its headline figures."""
    env = result["environment"]
    lines = [f"# vlakit GPU readiness ({result['written']})", "",
             f"device `{result['device']}`; torch {env['torch']} (CUDA {env['cuda_build']}); "
             f"GPUs: {', '.join(env.get('gpus', [])) or 'none'}; {env['cpu_count']} CPUs", ""]
    for name, rec in result["parts"].items():
        letter = f"({rec['letter']}) " if rec.get("letter") else ""
        lines.append(f"## {letter}{name}: {rec['status'].upper()}"
                     + (f" ({rec['seconds']} s of {rec['budget_s']} s)" if "seconds" in rec else ""))
        if rec["status"] == "skipped":
            lines.append(f"skipped: {rec['reason']}")
        if rec["status"] == "error":
            lines.append(f"**error**: {rec['error']}")
        for k, v in rec.get("headline", {}).items():
            lines.append(f"- {k}: {_fmt(v)}")
        for note in rec.get("notes", []):
            lines.append(f"- note: {note}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("part", help="run one part, write <out>/parts/<name>.json")
    p.add_argument("name", choices=PARTS)
    p.add_argument("--device", default="cuda")
    p.add_argument("--store", required=True, help="the CALVIN store (written by the data part)")
    p.add_argument("--work", required=True, help="scratch directory")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, required=True, help="seconds (the hard timeout)")
    r = sub.add_parser("report", help="merge the parts into gpu_check.json + gpu_check.md")
    r.add_argument("--parts", required=True, help="the parts' records (<out of part>/parts)")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.cmd == "report":
        return report(Path(args.parts), Path(args.out), args.device)
    rec = run_part(args.name, args.device, Path(args.store), Path(args.work) / args.name,
                   Path(args.out), args.budget)
    print(f"gpu_check: {args.name}: {rec['status']} in {rec['seconds']} s"
          + (f": {rec['error']}" if rec["status"] == "error" else "")
          + (f": {rec['reason']}" if rec["status"] == "skipped" else ""), flush=True)
    return 0  # the report decides the exit status (a failed part is in its JSON)


if __name__ == "__main__":
    import gpu_check  # one copy of the module: the parts raise gpu_check.CheckFailed / Skip
    sys.exit(gpu_check.main())
