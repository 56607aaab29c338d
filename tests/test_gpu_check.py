"""benchmarks/gpu_check.sh on the CPU: every part present with figures or a stated skip reason,
and a failing part recorded loudly (error + traceback, non-zero exit) without stopping the rest."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
gpu_check = import_benchmark("gpu_check")
gpu_parts = import_benchmark("gpu_parts")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """(exit code, gpu_check.json, gpu_check.md, output) of the whole script with --device cpu."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path_factory.mktemp("work"))}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    report = json.loads((out / "gpu_check.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log",
                                                     "gpu_check.md"]  # few files: all come back
    return res.returncode, report, (out / "gpu_check.md").read_text(), res.stdout + res.stderr


def test_every_part_runs_or_says_why_not(cpu_run):
    code, report, md, log = cpu_run
    assert code == 0, log
    assert report["failed"] == []
    assert list(report["parts"]) == list(gpu_check.PARTS)
    for name, rec in report["parts"].items():
        assert rec["status"] in ("ok", "skipped"), (name, rec)
        if rec["status"] == "skipped":
            assert rec["reason"]
        assert f"{name}: {rec['status'].upper()}" in md
    assert report["parts"]["data"]["frames"] > 0


def test_training_figures_per_precision(cpu_run):
    runs = cpu_run[1]["parts"]["train"]["runs"]
    for p in ("fp32", "bf16"):
        assert runs[p]["samples_per_s"] > 0 and 0 <= runs[p]["data_wait_pct"] <= 100
        assert math.isfinite(runs[p]["final_loss"])
        assert runs[p]["grad_scaler_scale"] is None and runs[p]["fused_adamw"] is False  # CPU
        assert runs[p]["gpu_util_mean_pct"] is None and "no CUDA" in runs[p]["gpu_util_note"]
    assert "fp16 needs CUDA" in runs["fp16"]["skipped"]
    assert runs["bf16"]["speedup_vs_fp32"] > 0


def test_loader_reports_that_pinning_needs_cuda(cpu_run):
    rec = cpu_run[1]["parts"]["loader"]
    assert rec["windows_per_s"] > 0 and rec["batches"] > 0 and rec["bytes_per_window"] > 0
    assert rec["batches_pinned"] is False and rec["h2d_gb_per_s"] is None
    assert rec["memcpy_gb_per_s"]["host"] > 0 and "no CUDA" in rec["memcpy_kind"]
    assert any("pinned memory needs CUDA" in n for n in rec["notes"])


def test_vlm_steps_for_both_models_and_all_variants(cpu_run):
    rec = cpu_run[1]["parts"]["vlm"]
    assert rec["size"] == "tiny"
    assert set(rec["runs"]) == {f"{m}/{t}/{g}" for m in ("paligemma", "qwen2vl")
                                for t, g in (("full", "no-gc"), ("full", "gc"), ("lora", "gc"))}
    for key, run in rec["runs"].items():
        assert run["tokens_per_s"] > 0 and run["samples_per_s"] > 0 and run["seq_len"] > 0, key
        assert all(math.isfinite(x) for x in run["losses"])
        if "/lora/" in key:  # LoRA trains fewer parameters than full fine-tuning
            assert run["trainable_m"] < rec["runs"][key.replace("lora", "full")]["trainable_m"]


def test_act_latency_and_the_skips(cpu_run):
    parts = cpu_run[1]["parts"]
    act = parts["act"]
    for who in ("embedded", "vlm"):
        assert 0 < act[who]["p50_ms"] <= act[who]["p99_ms"]
    assert set(act["headline"]) == {"embedded", "vlm"}
    assert act["embedded"]["timed"] == "vlatrain.policy.Policy.act"  # the runtime, not a forward
    assert "2 CUDA devices" in parts["ddp"]["reason"]
    exact = parts["exact"]
    assert exact["steps"] == gpu_check.SIZES["cpu"]["exact_steps"]
    assert max(exact["max_rel_diff"].values()) <= exact["tolerance"] == gpu_parts.TOLERANCE


def test_a_failing_part_is_loud_and_fails_the_report(tmp_path, monkeypatch):
    missing = tmp_path / "missing.vla"
    rec = gpu_check.run_part("loader", "cpu", missing, tmp_path / "w", tmp_path, 30)
    assert rec["status"] == "error" and str(missing) in rec["error"]
    assert "Traceback" in rec["traceback"]

    def wrong(ctx):
        raise gpu_check.CheckFailed("runs differ", {"max_rel_diff": 0.5})
    monkeypatch.setitem(gpu_parts.FUNCTIONS, "exact", wrong)
    rec = gpu_check.run_part("exact", "cpu", missing, tmp_path / "w", tmp_path, 30)
    assert rec["status"] == "error" and rec["figures"] == {"max_rel_diff": 0.5}
    (tmp_path / "parts" / "vlm.rc").write_text("124\n")  # killed by `timeout`, no JSON
    assert gpu_check.report(tmp_path / "parts", tmp_path, "cpu") == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"loader", "exact", "vlm", "data"} <= set(report["failed"])
    assert "killed at its time budget" in report["parts"]["vlm"]["error"]
    assert "**error**: runs differ" in (tmp_path / "gpu_check.md").read_text()


def test_one_failing_run_keeps_the_others_and_fails_its_part():
    def run(name):
        if name == "bf16":
            raise gpu_check.CheckFailed("a non-finite loss", {"final_loss": float("nan")})
        return {"samples_per_s": 10.0}
    runs = {p: gpu_parts.attempt(run, p) for p in ("fp32", "bf16")}
    assert runs["fp32"] == {"samples_per_s": 10.0}
    assert runs["bf16"]["error"] == "CheckFailed: a non-finite loss"
    assert "Traceback" in runs["bf16"]["traceback"] and math.isnan(runs["bf16"]["final_loss"])
    head = gpu_parts.headline_of(runs, ("samples_per_s",))
    assert head == {"fp32": {"samples_per_s": 10.0}, "bf16": {"error": runs["bf16"]["error"]}}
    with pytest.raises(gpu_check.CheckFailed, match="bf16: CheckFailed") as e:
        gpu_parts.finish({"runs": runs}, runs)
    assert e.value.figures["runs"]["fp32"] == {"samples_per_s": 10.0}
    assert gpu_parts.finish({"runs": {"fp32": runs["fp32"]}}, {"fp32": runs["fp32"]})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA machine runs it for real")
def test_cuda_requested_without_a_device_is_an_error(tmp_path):
    rec = gpu_check.run_part("train", "cuda", tmp_path / "s.vla", tmp_path / "w", tmp_path, 30)
    assert rec["status"] == "error" and "sees no CUDA device" in rec["error"]


def test_cli_subprocesses_keep_the_carried_dependencies_on_the_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", "/other"]))
    path = gpu_parts.child_env()["PYTHONPATH"].split(os.pathsep)
    assert path == [str(ROOT), "/tmp/site", "/other"]
