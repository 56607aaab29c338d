"""Nothing outside the output is ever deleted: `vladata convert` and `vladata export` write only
into a new, empty or vlakit-marked directory, never into or around the source, and --overwrite
deletes only what vlakit wrote. Every case checks the exit status, that the message names the
path, that no complete-looking output is left, and that nothing outside the output changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main as cli
from vladata.errors import IncompleteStoreError, StoreError
from vladata.sources.calvin import CalvinSource
from vladata.store import output
from vladata.store.writer import convert
from vladata.stream import export_state


def tree_hash(path: Path) -> str:
    """Every name, link target and file byte under ``path``."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from vladata.samples.calvin import write_sample
    return write_sample(tmp_path_factory.mktemp("safety") / "raw", train_segments=2,
                        val_segments=1, frames_per_segment=(40, 60), static_size=12,
                        gripper_size=8, depth=False, seed=3)


@pytest.fixture
def raw_hash(raw):
    before = tree_hash(raw)
    yield before
    assert tree_hash(raw) == before, "the source changed"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _no_store(path: Path) -> None:
    assert not (path / "meta/manifest.json").exists()
    with pytest.raises(StoreError):
        vladata.open(path)


@pytest.fixture
def mydocs(tmp_path):
    d = tmp_path / "mydocs"
    d.mkdir()
    (d / "thesis.txt").write_text("four years of work")
    (d / "figures").mkdir()
    (d / "figures" / "fig1.png").write_bytes(b"\x89PNG...")
    return d


# -- convert -------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
def test_a_non_store_directory_is_refused(raw, raw_hash, mydocs, flags):
    before = tree_hash(mydocs)
    r = run("convert", "calvin", raw, mydocs, *flags)
    assert r.exit_code == 1, r.output
    assert str(mydocs) in r.output and "not a vlakit store" in r.output
    assert tree_hash(mydocs) == before
    assert (mydocs / "thesis.txt").read_text() == "four years of work"
    _no_store(mydocs)


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_an_output_overlapping_the_source_is_refused(raw, raw_hash, tmp_path, where):
    if where == "same":
        out, how = raw, "is the source"
    elif where == "inside":
        out, how = raw / "store.vla", "is inside the source"
    elif where == "contains":
        out, how = raw.parent, "contains the source"
    else:
        out, how = tmp_path / "link", "is the source"
        out.symlink_to(raw, target_is_directory=True)
    r = run("convert", "calvin", raw, out, "--overwrite")
    assert r.exit_code == 1, r.output
    assert str(out) in r.output and how in r.output
    assert not (raw / "store.vla").exists() and not (raw / output.MARKER).exists()
    assert not (raw.parent / output.MARKER).exists()


def test_a_file_at_out_is_refused(raw, raw_hash, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = run("convert", "calvin", raw, f, "--overwrite")
    assert r.exit_code == 1 and str(f) in r.output and "a file is there" in r.output
    assert f.read_text() == "keep me"


def test_new_and_empty_outputs_are_written_and_the_marker_removed(raw, raw_hash, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "a" / "new.vla", empty):
        r = run("convert", "calvin", raw, out)
        assert r.exit_code == 0, r.output
        assert not (out / output.MARKER).exists()
        assert vladata.open(out).num_frames > 0 and output.state(out) == "complete"


def test_overwrite_replaces_a_vlakit_store_and_nothing_beside_it(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    neighbour = tmp_path / "thesis.txt"
    neighbour.write_text("four years of work")
    assert run("convert", "calvin", raw, out).exit_code == 0
    (out / "meta" / "stale-part.json").write_text("{}")  # vlakit's folders are vlakit's
    r = run("convert", "calvin", raw, out)
    assert r.exit_code == 1 and str(out) in r.output and "--overwrite" in r.output
    r = run("convert", "calvin", raw, out, "--overwrite", "--format", "wds")
    assert r.exit_code == 0, r.output
    assert not (out / "meta" / "stale-part.json").exists()
    assert vladata.open(out).num_frames > 0 and (out / "wds" / "index.json").exists()
    assert run("convert", "calvin", raw, out, "--overwrite", "--format", "wds").exit_code == 0
    assert neighbour.read_text() == "four years of work"


def test_overwrite_refuses_a_store_holding_foreign_entries(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    assert run("convert", "calvin", raw, out).exit_code == 0
    (out / "thesis.txt").write_text("not vlakit's")
    before = tree_hash(out)
    r = run("convert", "calvin", raw, out, "--overwrite")
    assert r.exit_code == 1 and str(out) in r.output and "thesis.txt" in r.output
    assert tree_hash(out) == before and vladata.open(out).num_frames > 0


class _Crash(CalvinSource):
    """Fails reading one episode, as a killed conversion stops half-way."""

    def read(self, i, lo=0, hi=None):
        if i == 1:
            raise KeyboardInterrupt
        return super().read(i, lo, hi)


def _interrupted(raw, out: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        convert(_Crash(str(raw)), out, progress=False, part_frames=1024)


@pytest.mark.parametrize("legacy", [False, True])
def test_an_interrupted_conversion_is_recognised_as_vlakits(raw, raw_hash, tmp_path, legacy):
    out = tmp_path / "s.vla"
    _interrupted(raw, out)
    assert (out / output.MARKER).exists() and output.state(out) == "interrupted"
    if legacy:  # a store written before the marker existed: its zarr.json says it is vlakit's
        (out / output.MARKER).unlink()
        assert output.state(out) == "interrupted"
    _no_store(out)
    r = run("convert", "calvin", raw, out)
    assert r.exit_code == 1 and str(out) in r.output and "interrupted conversion" in r.output
    r = run("convert", "calvin", raw, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert vladata.open(out).num_frames > 0 and not (out / output.MARKER).exists()


def test_a_conversion_interrupted_before_its_plan_is_still_vlakits(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    out.mkdir()
    (out / output.MARKER).write_text("{}")
    assert output.state(out) == "interrupted"
    r = run("convert", "calvin", raw, out, "--resume")
    assert r.exit_code == 0, r.output
    assert vladata.open(out).num_frames > 0


def test_resume_deletes_the_tmp_files_an_interrupted_run_left(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    _interrupted(raw, out)
    cam = out / "data" / "observation.images.rgb_static" / "c" / "0" / "0" / "0"
    torn = [cam.with_name("0.tmp"), out / "meta" / "plan.json.tmp",
            out / "meta" / "parts" / "part-00000.json.tmp"]
    for p in torn:  # what a crash inside a shard or JSON write leaves
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a fi")
    r = run("convert", "calvin", raw, out, "--resume", "--part-frames", "1024")
    assert r.exit_code == 0, r.output
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    ref = tmp_path / "ref.vla"
    convert(CalvinSource(str(raw)), ref, progress=False, part_frames=1024)
    a, b = vladata.open(out), vladata.open(ref)
    for name in a.features:
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])


def test_resume_on_a_complete_store_does_nothing_and_says_so(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    assert run("convert", "calvin", raw, out).exit_code == 0
    before = tree_hash(out)
    r = run("convert", "calvin", raw, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "already complete" in r.output and str(out) in r.output
    r = run("convert", "calvin", raw, out, "--resume", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["already_complete"] is True
    assert tree_hash(out) == before


def test_resume_on_a_complete_store_of_another_source_is_refused(raw, raw_hash, tmp_path):
    out = tmp_path / "s.vla"
    assert run("convert", "calvin", raw, out).exit_code == 0
    before = tree_hash(out)
    r = run("convert", "calvin", raw, out, "--resume", "--split", "training")
    assert r.exit_code == 1 and str(out) in r.output and "cannot resume" in r.output
    assert tree_hash(out) == before


# -- export --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety-store") / "s.vla"
    convert(CalvinSource(str(raw)), out, progress=False)
    return out


@pytest.fixture
def store_hash(store):
    before = tree_hash(store)
    yield
    assert tree_hash(store) == before, "the exported store changed"


def _listed(out: Path) -> tuple[list[str], list[str]]:
    index = json.loads((out / "index.json").read_text())
    return sorted(p.name for p in out.iterdir()), sorted([s["url"] for s in index["shards"]]
                                                         + ["index.json"])


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_export_refuses_a_non_export_directory(store, store_hash, mydocs, flags):
    before = tree_hash(mydocs)
    r = run("export", store, mydocs, *flags)
    assert r.exit_code == 1 and str(mydocs) in r.output and "not a vlakit export" in r.output
    assert tree_hash(mydocs) == before


def test_export_refuses_a_file(store, store_hash, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = run("export", store, f, "--overwrite")
    assert r.exit_code == 1 and str(f) in r.output and f.read_text() == "keep me"


def test_export_overwrite_replaces_only_a_vlakit_export_and_leaves_no_stale_shards(
        store, store_hash, tmp_path):
    out = tmp_path / "wds"
    r = run("export", store, out, "--chunk", "8", "--context", "2", "--shard-size", "20KB")
    assert r.exit_code == 0, r.output
    many = len(list(out.glob("shard-*.tar")))
    assert many > 2
    names, listed = _listed(out)
    assert names == listed
    before = tree_hash(out)
    r = run("export", store, out)
    assert r.exit_code == 1 and str(out) in r.output and "--overwrite" in r.output
    assert tree_hash(out) == before
    r = run("export", store, out, "--overwrite")
    assert r.exit_code == 0, r.output
    names, listed = _listed(out)
    assert names == listed and len(names) - 1 < many  # the old shards are gone
    assert export_state(str(out)) == "complete"


def test_export_overwrite_refuses_an_export_holding_foreign_entries(store, store_hash, tmp_path):
    out = tmp_path / "wds"
    assert run("export", store, out).exit_code == 0
    (out / "thesis.txt").write_text("not vlakit's")
    before = tree_hash(out)
    r = run("export", store, out, "--overwrite")
    assert r.exit_code == 1 and str(out) in r.output and "thesis.txt" in r.output
    assert tree_hash(out) == before


def test_an_interrupted_export_is_recognised_and_replaced(store, store_hash, tmp_path):
    out = tmp_path / "wds"
    assert run("export", store, out).exit_code == 0
    (out / "index.json").unlink()  # as a kill before the index leaves it ...
    from vladata.stream.output import MARKER
    (out / MARKER).write_text("{}")  # ... with the marker written first
    assert export_state(str(out)) == "interrupted"
    r = run("export", store, out)
    assert r.exit_code == 1 and "interrupted vlakit export" in r.output
    r = run("export", store, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / MARKER).exists() and _listed(out)[0] == _listed(out)[1]


def test_an_interrupted_conversion_is_not_opened(raw, tmp_path):
    out = tmp_path / "s.vla"
    _interrupted(raw, out)
    with pytest.raises(IncompleteStoreError, match="--resume"):
        vladata.open(out)


def test_a_source_that_fails_to_plan_leaves_no_output(tmp_path):
    bad = tmp_path / "not-calvin"
    (bad / "training").mkdir(parents=True)  # no ep_start_end_ids.npy, no frames
    before = tree_hash(bad)
    out = tmp_path / "s.vla"
    r = run("convert", "calvin", bad, out)
    assert r.exit_code == 1 and str(bad) in r.output
    assert not out.exists() and tree_hash(bad) == before
