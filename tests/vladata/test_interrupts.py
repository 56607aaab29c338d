"""Interrupts are clean: Ctrl-C during `vladata convert --workers 2` prints one message with the
exact resume command (no worker tracebacks) and stops the workers; a SIGKILLed parent takes its
workers and the multiprocessing resource tracker with it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import IncompleteStoreError
from vladata.sources.calvin import CalvinSource

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="reads process trees from /proc (Linux)")

ROOT = Path(__file__).parents[2]
CAMERA = "data/observation.images.rgb_static/c"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st is not None:
                table[int(d.name)] = st[1]
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in table.items() if pp == parent]
        out += kids
        frontier += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_until(cond, proc, what: str, limit: float = 300) -> None:
    deadline = time.monotonic() + limit  # a guard against hanging, not a speed requirement
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.skip(f"the conversion ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from vladata.samples.calvin import write_sample
    return write_sample(tmp_path_factory.mktemp("interrupts") / "raw", train_segments=4,
                        val_segments=1, frames_per_segment=(650, 750), static_size=48,
                        gripper_size=16, depth=False, seed=8)


def _start(raw: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "cli.vladata", "convert", "calvin", str(raw), str(out),
           "--workers", "2", "--part-frames", "1024"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env, start_new_session=True)


def _workers(proc) -> list[int]:
    return [p for p in _descendants(proc.pid) if "spawn_main" in _cmdline(p)]


def _workers_running(proc, out: Path, *, writing: bool) -> list[int]:
    """Wait until both workers exist (and, if ``writing``, shards appear); return every
    descendant of ``proc`` (the workers and the resource tracker)."""
    _wait_until(lambda: len(_workers(proc)) >= 2 and (not writing or (out / CAMERA).exists()),
                proc, "the workers started")
    return _descendants(proc.pid)


@linux_only
def test_ctrl_c_reports_once_with_the_resume_command(raw, tmp_path):
    out = tmp_path / "s.vla"
    proc = _start(raw, out)
    kids = _workers_running(proc, out, writing=False)  # still starting: the noisiest moment
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count("interrupted") == 1, err
    lines = err.strip().splitlines()
    resume = lines[-1].strip()
    assert str(out) in lines[-2] and "--resume" in resume and "--workers 2" in resume, err
    _wait_until(lambda: not any(_alive(p) for p in kids), None, "the workers to exit")
    assert not (out / "meta/manifest.json").exists()
    with pytest.raises(IncompleteStoreError):
        vladata.open(out)
    argv = shlex.split(resume)
    assert argv[argv.index("-m") + 1] == "cli.vladata" and str(out) in argv
    argv = [sys.executable] + argv[argv.index("-m"):]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert vladata.open(out).num_frames == sum(
        ep["length"] for ep in vladata.open(out).episodes.iter_rows(named=True))


@linux_only
def test_workers_leave_ctrl_c_to_their_parent(raw, tmp_path):
    """SIGINT sent to the workers alone, while they start and while they write, is ignored."""
    out = tmp_path / "s.vla"
    proc = _start(raw, out)
    for writing in (False, True):
        _wait_until(lambda: proc.poll() is not None or (
            len(_workers(proc)) >= 2 and (not writing or (out / CAMERA).exists())), None,
            "the workers started")
        for pid in _workers(proc):
            os.kill(pid, signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert vladata.open(out).num_frames > 0


@linux_only
def test_workers_and_resource_tracker_die_with_a_killed_parent(raw, tmp_path):
    out = tmp_path / "s.vla"
    proc = _start(raw, out)
    kids = _workers_running(proc, out, writing=True)
    assert len(kids) >= 2
    tracker = [p for p in kids if "resource_tracker" in _cmdline(p)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()  # orphaned workers would hold these pipes: do not read them
    proc.stderr.close()
    _wait_until(lambda: not any(_alive(p) for p in kids), None,
                f"the workers {kids} (resource tracker {tracker}) to exit after their parent")
    assert not (out / "meta/manifest.json").exists()


# -- the message, in process ---------------------------------------------------------------------

def test_an_interrupted_single_worker_conversion_names_the_resume_command(raw, tmp_path,
                                                                          monkeypatch):
    def interrupted(self, i, lo=0, hi=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(CalvinSource, "read", interrupted)  # Ctrl-C while reading the source
    out = tmp_path / "s.vla"
    r = CliRunner().invoke(cli, ["convert", "calvin", str(raw), str(out), "--overwrite",
                                 "--part-frames", "2048"])
    assert r.exit_code == 130 and "Traceback" not in r.output
    hint = r.output.strip().splitlines()
    assert str(out) in hint[-2] and "incomplete" in hint[-2]
    assert shlex.split(hint[-1])[1:] == ["convert", "calvin", str(raw), str(out),
                                         "--part-frames", "2048", "--resume"]
    assert not (out / "meta/manifest.json").exists()


def test_an_interrupted_export_names_the_command_that_redoes_it(tmp_path, monkeypatch):
    import vladata.stream

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(vladata.stream, "export_wds", interrupted)
    monkeypatch.setattr(vladata, "open", lambda path: None)
    (tmp_path / "s.vla").mkdir()
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "s.vla"), str(tmp_path / "wds")])
    assert r.exit_code == 130
    assert shlex.split(r.output.strip().splitlines()[-1])[1:] == [
        "export", str(tmp_path / "s.vla"), str(tmp_path / "wds"), "--overwrite"]
