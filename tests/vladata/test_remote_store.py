"""Stores on object storage: conversion to, and reading from, ``s3://`` on a real S3 server.

The server is moto's, on loopback; the S3 client is the real one (s3fs/aiobotocore), configured
the way a user would, through ``AWS_*`` variables (``AWS_ENDPOINT_URL`` names the server).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("s3fs")
pytest.importorskip("upath")

import vladata  # noqa: E402
from cli.vladata import main  # noqa: E402
from vladata.errors import SourceFormatError, StoreError  # noqa: E402
from vladata.samples.calvin import write_sample  # noqa: E402
from vladata.sources.calvin import CalvinSource  # noqa: E402
from vladata.store import fs as store_fs  # noqa: E402
from vladata.store.manifest import verify  # noqa: E402
from tests.helpers.s3 import loopback_s3  # noqa: E402

BUCKET = "vla-stores"
PART = 1024


@pytest.fixture(scope="module")
def s3():
    with loopback_s3(BUCKET, unset=(store_fs.CACHE_ENV,)) as fs:
        yield fs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    src = write_sample(d / "src", train_segments=12, val_segments=3, frames_per_segment=(80, 120),
                       static_size=12, gripper_size=8, depth=False, seed=5)
    ref = d / "local.vla"
    vladata.convert(CalvinSource(str(src)), ref, image_codec="jpeg", part_frames=PART,
                    progress=False)
    return src, ref


def remote_files(fs, url: str) -> dict[str, bytes]:
    base = url.split("://", 1)[1]
    out = {}
    for key in sorted(fs.find(base)):
        rel = key[len(base) + 1:]
        out[rel] = fs.cat_file(key)
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same(local: dict, remote: dict) -> None:
    assert sorted(local) == sorted(remote)
    man = "meta/manifest.json"
    assert json.loads(local[man])["files"] == json.loads(remote[man])["files"]
    assert [k for k in local if k != man and local[k] != remote[k]] == []


def _first_batches(loader, n: int = 3) -> list:
    out = []
    try:
        for b in loader:
            out.append(b)
            if len(out) == n:
                break
    finally:
        loader.close()
    return out


def _windows(ds):
    return ds.windows(history=4, chunk=3, split="train")


def test_convert_to_s3_equals_local_and_reads_back(s3, data):
    src, ref = data
    url = f"s3://{BUCKET}/calvin.vla"
    summary = vladata.convert(CalvinSource(str(src)), url, image_codec="jpeg", part_frames=PART,
                              progress=False)
    assert summary.path == url and summary.parts_written >= 2
    objects = remote_files(s3, url)
    assert not [k for k in objects if k.endswith(".tmp") or k.endswith(".stats.npz")]
    assert ".vlakit-conversion" not in objects
    assert_same(local_files(ref), objects)
    assert summary.bytes == json.loads((ref / "meta/manifest.json").read_bytes())["summary"]["bytes"]
    # read back: tables, episodes, windows and the batch loader equal the local store's
    ds, local = vladata.open(url), vladata.open(ref)
    assert ds.episodes.equals(local.episodes) and ds.num_frames == local.num_frames
    for k, v in local.episode(1).items():
        np.testing.assert_array_equal(ds.episode(1)[k], v, err_msg=k)
    w, lw = _windows(ds), _windows(local)
    assert len(w) == len(lw)
    for i in (0, len(w) // 2, len(w) - 1):
        for k, v in lw[i].items():
            np.testing.assert_array_equal(np.asarray(w[i][k]), np.asarray(v), err_msg=k)
    got, want = (_first_batches(x.loader(batch_size=8, num_workers=1, seed=2,
                                         multiprocessing_context="fork")) for x in (w, lw))
    assert len(got) == len(want) == 3
    for a, b in zip(got, want):
        for k in b:
            if isinstance(b[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), k
    assert verify(url, progress=False) == []


def test_remote_verify_finds_damage(s3, data):
    src, _ = data
    url = f"s3://{BUCKET}/damaged.vla"
    vladata.convert(CalvinSource(str(src)), url, part_frames=PART, progress=False)
    ok = CliRunner().invoke(main, ["verify", url, "--quiet"])
    assert ok.exit_code == 0 and "intact" in ok.output, ok.output
    base = f"{BUCKET}/damaged.vla"
    shard = sorted(k for k in s3.find(f"{base}/data/observation.images.rgb_static/c"))[0]
    blob = bytearray(s3.cat_file(shard))
    blob[10] ^= 0xFF  # same size, one byte changed: only the chunk CRC32C can tell
    s3.pipe(shard, bytes(blob))
    problems = verify(url, progress=False)
    assert len(problems) == 1 and "CRC32C mismatch" in problems[0] and "rgb_static" in problems[0]
    bad = CliRunner().invoke(main, ["verify", url, "--quiet"])
    assert bad.exit_code == 1 and "CRC32C mismatch" in bad.output and "Traceback" not in bad.output
    s3.rm(f"{base}/meta/episodes.parquet")
    assert any("episodes.parquet: missing" in p for p in verify(url, progress=False))
    with pytest.raises(StoreError, match="episodes.parquet"):
        vladata.open(url)


def test_interrupted_s3_conversion_is_resumed(s3, data):
    src, ref = data

    class Failing(CalvinSource):
        def read(self, i, start, stop):
            if i == len(self.plan()) - 1:
                raise SourceFormatError(f"episode {i}: a bad file (test)")
            return super().read(i, start, stop)

    url = f"s3://{BUCKET}/resumed.vla"
    with pytest.raises(SourceFormatError):
        vladata.convert(Failing(str(src)), url, image_codec="jpeg", part_frames=PART,
                        progress=False)
    base = f"{BUCKET}/resumed.vla"
    assert s3.exists(f"{base}/.vlakit-conversion") and not s3.exists(f"{base}/meta/manifest.json")
    with pytest.raises(StoreError, match="incomplete"):
        vladata.open(url)
    done = len(s3.find(f"{base}/meta/parts/", maxdepth=1)) // 2  # a marker and stats per part
    with pytest.raises(StoreError, match="--resume"):
        vladata.convert(CalvinSource(str(src)), url, image_codec="jpeg", progress=False)
    s = vladata.convert(CalvinSource(str(src)), url, image_codec="jpeg", resume=True,
                        progress=False)
    assert s.parts_reused == done >= 1
    assert_same(local_files(ref), remote_files(s3, url))
    # --overwrite deletes only the store's own objects, never a stranger's beside them
    s3.pipe(f"{BUCKET}/resumed.vla.txt", b"not ours")
    vladata.convert(CalvinSource(str(src)), url, image_codec="jpeg", overwrite=True,
                    progress=False)
    assert s3.cat_file(f"{BUCKET}/resumed.vla.txt") == b"not ours"
    assert_same(local_files(ref), remote_files(s3, url))


def test_read_through_cache(s3, data, tmp_path, monkeypatch):
    src, ref = data
    url = f"s3://{BUCKET}/cached.vla"
    vladata.convert(CalvinSource(str(src)), url, image_codec="jpeg", part_frames=PART,
                    progress=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(store_fs.CACHE_ENV, str(cache))
    w, lw = _windows(vladata.open(url)), _windows(vladata.open(ref))
    for i in range(0, len(w), 7):
        for k, v in lw[i].items():
            np.testing.assert_array_equal(np.asarray(w[i][k]), np.asarray(v), err_msg=k)
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    assert cached and not [p for p in cached if p.name.endswith(".tmp")]
    remote = set(remote_files(s3, url).values())
    assert all(p.read_bytes() in remote for p in cached)  # whole copies of the store's objects
    # a second reader is served from the cache: nothing new is fetched
    w2 = _windows(vladata.open(url))
    for i in range(0, len(w2), 7):
        w2[i]
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == cached
