"""`vlatrain run out=DIR` writes only into its own run directories; interrupts, resumes and
diverged runs leave a run that can be continued, with the exact command to do it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.vlatrain import main
from vlatrain.rundir import MARKER

from tests.helpers.runs import CONFIG, ROOT, TINY  # noqa: E402


def snapshot(d: Path) -> dict:
    """Every file under ``d`` with its size and mtime (to show nothing changed)."""
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def steps(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_non_empty_directory_that_is_not_a_run_is_refused(calvin_rgb_store, tmp_path):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("four years of work")
    before = snapshot(docs)
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=1", f"out={docs}", *TINY)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert f"{docs} is not empty and is not a vlatrain run directory" in r.output
    assert snapshot(docs) == before and not (docs / MARKER).exists()
    (tmp_path / "afile").write_text("x")
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", f"out={tmp_path / 'afile'}", *TINY)
    assert r.exit_code == 1 and "is a file, not a run directory" in r.output
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("where", ["store", "inside", "parent"])
def test_an_out_overlapping_the_store_is_refused(calvin_rgb_store, where):
    store = Path(calvin_rgb_store)
    out = {"store": store, "inside": store / "run", "parent": store.parent}[where]
    before = snapshot(store.parent)
    r = invoke("run", CONFIG, f"data.path={store}", "train.steps=1", f"out={out}", *TINY)
    assert r.exit_code == 1 and f"overlaps the store {store}" in r.output
    assert snapshot(store.parent) == before


def test_a_run_is_marked_and_a_checkpointless_attempt_is_reused(calvin_rgb_store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an empty directory is fine
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=2", f"out={out}", *TINY)
    assert r.exit_code == 0, r.output
    assert json.loads((out / MARKER).read_text())["format"] == "vlatrain-run"
    again = tmp_path / "again"  # a marked run that never reached a checkpoint: reused, relogged
    again.mkdir()
    (again / MARKER).write_text((out / MARKER).read_text())
    (again / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 7, "loss": 9.0}\n')
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=2", f"out={again}", *TINY)
    assert r.exit_code == 0, r.output
    assert steps(again) == [1, 2] and 9.0 not in [json.loads(x)["loss"] for x in
                                                  (again / "metrics.jsonl").read_text().splitlines()]
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=2", f"out={again}", *TINY)
    assert r.exit_code == 1 and "already holds a run" in r.output
    assert f"vlatrain run --resume {again}" in r.output


def test_resume_from_another_directory_with_tensorboard_and_a_torn_metrics_line(
        calvin_rgb_store, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(calvin_rgb_store, work / "store.vla")
    monkeypatch.chdir(work)  # relative data.path and out, as a user types them
    common = [*[t for t in TINY if t != "log.tensorboard=false"], "train.checkpoint_every=2",
              "eval.every=0", "train.keep_last=3"]
    r = invoke("run", CONFIG, "data.path=store.vla", "train.steps=4", "out=runs/a", *common)
    assert r.exit_code == 0, r.output
    run = work / "runs" / "a"
    cfg = (run / "config.yaml").read_text()
    assert f"path: {work / 'store.vla'}" in cfg and f"out: {run}" in cfg
    # as if killed after logging steps 3 and 4 but before step 4's checkpoint, mid-line
    (run / "checkpoints" / "step_0000004.pt").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.2')
    monkeypatch.chdir(tmp_path)  # resume from elsewhere
    r = invoke("run", "--resume", run, "train.steps=4")
    assert r.exit_code == 0, r.output
    assert "dropped its torn last line" in r.output and str(run / "metrics.jsonl") in r.output
    assert steps(run) == [1, 2, 3, 4]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]  # no duplicate steps


def test_resume_at_or_past_train_steps_says_so(calvin_rgb_store, tmp_path):
    out = tmp_path / "run"
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=2", f"out={out}", *TINY)
    assert r.exit_code == 0, r.output
    before = snapshot(out)
    for n in (2, 1):
        r = invoke("run", "--resume", out, f"train.steps={n}")
        assert r.exit_code == 0, r.output
        assert f"already at step 2 (train.steps={n}): nothing to train" in r.output
        assert snapshot(out) == before


def test_a_metrics_line_damaged_mid_file_is_named(calvin_rgb_store, tmp_path):
    out = tmp_path / "run"
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=2",
               "train.checkpoint_every=1", f"out={out}", *TINY)
    assert r.exit_code == 0, r.output
    (out / "checkpoints" / "step_0000002.pt").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0][:10] + "\n" + lines[1] + "\n")
    r = invoke("run", "--resume", out, "train.steps=2")
    assert r.exit_code == 1 and f"{out / 'metrics.jsonl'}: line 1 is not a JSON object" in r.output


def test_a_diverging_run_stops_with_the_step_and_keeps_the_last_good_checkpoint(calvin_rgb_store,
                                                                                tmp_path):
    out = tmp_path / "run"
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", "train.steps=6", "optim.lr=1e30",
               "optim.grad_clip=null", "train.checkpoint_every=1", "eval.every=0", f"out={out}",
               *TINY)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "the loss is not finite at step " in r.output and "arm" in r.output
    bad = int(r.output.split("not finite at step ")[1].split(":")[0])
    assert bad >= 2
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))
    assert kept[-1] == f"step_{bad - 1:07d}.pt"  # nothing saved at or after the bad step
    assert f"vlatrain run --resume {out}" in r.output
    assert steps(out) == list(range(1, bad))  # the bad step is not logged as a number


def test_cli_lets_a_bug_keep_its_traceback(calvin_rgb_store, tmp_path, monkeypatch):
    import vlatrain.recipes.train as recipe

    def broken(cfg, resume=False):
        raise ValueError("an internal bug")
    monkeypatch.setattr(recipe, "run", broken)
    r = invoke("run", CONFIG, f"data.path={calvin_rgb_store}", f"out={tmp_path / 'x'}", *TINY)
    assert isinstance(r.exception, ValueError) and str(r.exception) == "an internal bug"


def test_an_interrupted_run_prints_the_exact_resume_command(calvin_rgb_store, tmp_path):
    out = tmp_path / "run dir"  # a space: the command must be quoted
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cli.vlatrain", "run", CONFIG,
                          f"data.path={calvin_rgb_store}", "train.steps=100000",
                          "train.checkpoint_every=2", "eval.every=0", f"out={out}", *TINY],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a guard against a hang, not a speed threshold
        while not list((out / "checkpoints").glob("step_*.pt")) and time.monotonic() < deadline:
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    command = next(ln.strip() for ln in err.splitlines() if ln.strip().startswith("vlatrain run"))
    argv = shlex.split(command)
    assert argv[:3] == ["vlatrain", "run", "--resume"] and Path(argv[3]) == out
    step = int(err.split("checkpoint of step ")[1].split(";")[0])
    r = invoke(*argv[1:], f"train.steps={step + 1}")
    assert r.exit_code == 0, r.output
    assert steps(out)[-1] == step + 1
    assert torch.load(out / "checkpoints" / f"step_{step + 1:07d}.pt",
                      weights_only=True)["step"] == step + 1
