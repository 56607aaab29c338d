"""`vladata stats` rewrites a store's statistics transactionally: it validates first, always keeps
q01/q99, leaves the store as it was when it fails, and a run interrupted inside its commit is
refused by `vladata.open` until `vladata stats` is run again."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata import atomic
from vladata.errors import IncompleteStoreError
from vladata.normalization import Normalization, normalize
from vladata.sources.calvin import CalvinSource
from vladata.store import finalize
from vladata.store.writer import convert

ROOT = Path(__file__).parents[2]


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from vladata.samples.calvin import write_sample
    d = tmp_path_factory.mktemp("restats")
    raw = write_sample(d / "raw", train_segments=2, val_segments=1, frames_per_segment=(40, 60),
                       static_size=8, gripper_size=4, depth=False, seed=4)
    out = d / "s.vla"
    convert(CalvinSource(str(raw)), out, progress=False)
    return out


@pytest.fixture
def store(pristine, tmp_path):
    out = tmp_path / "s.vla"
    shutil.copytree(pristine, out)
    return out


def _consistent(path: Path, quantiles: list[float]) -> None:
    """The store opens, and its stored action.norm is what its statistics give."""
    ds = vladata.open(path)
    assert json.loads((path / "meta/stats.json").read_text())["quantiles"] == quantiles
    norm = Normalization.from_dict(ds.info["normalization"])
    np.testing.assert_array_equal(ds.array("action.norm")[:],
                                  normalize(ds.array("action")[:], ds.stats["action"], norm))
    assert not (path / finalize.STAGING).exists() and not (path / finalize.COMMIT_MARKER).exists()


def test_extra_quantiles_keep_q01_and_q99(store):
    r = CliRunner().invoke(cli, ["stats", str(store), "--quantiles", "[0.2,0.8]"])
    assert r.exit_code == 0, r.output
    _consistent(store, [0.01, 0.2, 0.8, 0.99])
    assert {"q01", "q20", "q80", "q99"} <= set(vladata.open(store).stats["action"])
    r = CliRunner().invoke(cli, ["stats", str(store), "--quantiles", "[0.5]", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["quantiles"] == [0.01, 0.5, 0.99]


@pytest.mark.parametrize("bad", ["[0.2,1.5]", "[a,b]", "[]"])
def test_invalid_quantiles_change_nothing(store, bad):
    before = tree_hash(store)
    r = CliRunner().invoke(cli, ["stats", str(store), "--quantiles", bad])
    assert r.exit_code == 2 and bad in r.output
    assert tree_hash(store) == before


def test_a_failure_before_the_commit_leaves_the_store_as_it_was(store, monkeypatch):
    before = tree_hash(store)
    calls = []

    def dies_half_way(x, stats, norm):
        calls.append(1)
        raise OSError("disk full")  # after staging began: the staged arrays exist by now

    monkeypatch.setattr(finalize, "normalize", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        finalize.recompute(store, (0.05, 0.95))
    assert calls and tree_hash(store) == before
    _consistent(store, [0.01, 0.99])


def test_a_run_interrupted_inside_the_commit_is_refused_until_rerun(store, monkeypatch):
    real = atomic.write_json

    def killed_at_stats_json(path, obj, **kw):
        if Path(path).name == "stats.json":
            raise KeyboardInterrupt  # arrays and attributes swapped, stats.json not yet
        return real(path, obj, **kw)

    monkeypatch.setattr(atomic, "write_json", killed_at_stats_json)
    with pytest.raises(KeyboardInterrupt):
        finalize.recompute(store, (0.05, 0.95))
    monkeypatch.setattr(atomic, "write_json", real)
    assert (store / finalize.COMMIT_MARKER).exists()
    with pytest.raises(IncompleteStoreError, match="vladata stats"):
        vladata.open(store)
    r = CliRunner().invoke(cli, ["inspect", str(store)])
    assert r.exit_code == 1 and str(store) in r.output and "vladata stats" in r.output
    r = CliRunner().invoke(cli, ["stats", str(store), "--quantiles", "[0.05,0.95]"])
    assert r.exit_code == 0, r.output
    _consistent(store, [0.01, 0.05, 0.95, 0.99])


def test_stats_refuses_an_incomplete_store(store):
    (store / "meta/manifest.json").unlink()
    before = tree_hash(store)
    r = CliRunner().invoke(cli, ["stats", str(store)])
    assert r.exit_code == 1 and str(store) in r.output and "not a complete store" in r.output
    assert tree_hash(store) == before


def _readme_stats_command() -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^vladata stats calvin\.vla --quantiles .*$", readme, re.M)
    assert m, "the README shows `vladata stats ... --quantiles`"
    return m.group(0).split("#")[0].strip()


def _bash(line: str, cwd: Path) -> subprocess.CompletedProcess:
    vladata_cmd = f"{shlex.quote(sys.executable)} -m cli.vladata"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(["bash", "-c", line.replace("vladata ", vladata_cmd + " ", 1)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_command_survives_a_file_named_1(store, tmp_path):
    """Unquoted, bash globs `[0.01,...]` into `1` when such a file exists; the README quotes it,
    and even the globbed form keeps q01/q99."""
    (store.parent / "1").write_text("")
    line = _readme_stats_command()
    r = _bash(line.replace("calvin.vla", store.name), store.parent)
    assert r.returncode == 0, r.stderr
    wanted = [float(q) for q in re.search(r"\[([^\]]*)\]", line).group(1).split(",")]
    _consistent(store, sorted(set(wanted) | {0.01, 0.99}))
    globbed = line.replace("'", "").replace("calvin.vla", store.name)
    r = _bash(globbed, store.parent)
    assert r.returncode == 0, r.stderr
    _consistent(store, [0.01, 0.99, 1.0])  # the shell passed "1": q100, and still q01/q99
