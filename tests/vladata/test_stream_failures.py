"""The streaming form fails loudly: short, replaced or corrupt shards are errors naming the shard
(and the sample), never repeated windows or an iterator that spins without yielding."""

from __future__ import annotations

import io
import json
import signal
import tarfile
from contextlib import contextmanager

import numpy as np
import pytest

from vladata.loading.batching import LoaderError
from vladata.errors import VladataError
from vladata.stream import StreamFormatError, WindowStream, export_wds
from tests.helpers.stores import build_codec_stores

H, C = 2, 3


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return build_codec_stores(tmp_path_factory, "stream_failures", seed=5)


@contextmanager
def no_hang(seconds=120):
    """Turn a hang into a failure (the guard of a test about hangs; not a timing threshold)."""
    def fail(*_):
        raise AssertionError(f"still iterating after {seconds} s: the stream spins")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def members(path):
    with tarfile.open(path) as t:
        return [(m, t.extractfile(m).read()) for m in t.getmembers()]


def rewrite(path, items):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def cut_before(path, first_name):
    """Truncate the tar at the header of member ``first_name``: a valid, shorter tar stream."""
    with tarfile.open(path) as t:
        offset = next(m.offset for m in t.getmembers() if m.name == first_name)
    path.write_bytes(path.read_bytes()[:offset])


def drain(stream):
    with no_hang():
        return sum(1 for _ in stream)


def export(ds, out, **kw):
    idx = export_wds(ds, out, **kw)
    return idx, [out / s["url"] for s in idx["shards"]]


def test_a_shard_cut_at_a_member_boundary_is_named(stores, tmp_path):
    idx, shards = export(stores["raw"], tmp_path / "wds", samples=40, shard_size=300_000, context=4)
    j = max(range(len(shards)), key=lambda i: idx["shards"][i]["samples"])
    victim = shards[j]
    assert idx["shards"][j]["samples"] >= 2
    names = [m.name for m, _ in members(victim)]
    last_key = names[-1].split(".")[0]
    cut_before(victim, next(n for n in names if n.startswith(last_key)))
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                      batch_size=1, shuffle=False)
    with pytest.raises(StreamFormatError, match=f"{victim}: the shard ends after "
                                                f"{idx['shards'][j]['samples'] - 1} samples"):
        drain(st)


def test_a_split_whose_samples_are_gone_raises_instead_of_hanging(stores, tmp_path):
    ds = stores["raw"]
    _, shards = export(ds, tmp_path / "wds", samples="episode", shard_size=10 ** 9)  # one shard
    val = set(ds.episodes.filter(ds.episodes["split"] == "validation")["episode_index"].to_list())
    names = [m.name for m, _ in members(shards[0])]
    first_val = next(n for n in names if int(n[1:8]) in val)
    cut_before(shards[0], first_val)
    for workers in (None, 2):
        st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split="validation",
                          over="episodes", batch_size=2, shuffle=True)
        if workers is None:
            with pytest.raises(StreamFormatError, match=str(shards[0])):
                drain(st)
        else:  # the batch path: the worker's error reaches the trainer, naming the shard
            loader = st.loader(num_workers=workers)
            try:
                with pytest.raises(LoaderError, match=str(shards[0])):
                    drain(loader)
            finally:
                loader.close()


def test_a_replaced_shard_is_named(stores, tmp_path):
    _, shards = export(stores["raw"], tmp_path / "wds", samples=40, shard_size=300_000, context=4)
    shards[1].write_bytes(shards[0].read_bytes())  # right size, wrong samples
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                      batch_size=1, shuffle=False)
    with pytest.raises(StreamFormatError, match=f"{shards[1]} sample e.*should be"):
        drain(st)


@pytest.mark.parametrize("member,content,expect", [
    ("observation.state.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4', 'fortran", "not a readable .npy"),
    ("action.norm.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 7), }" + b" " * 45 + b"\n",
     "not a readable .npy"),
    ("meta.json", b'{"episode_index": 0, "own": [0,', "meta.json is not valid JSON"),
    ("meta.json", b"\xff\xfe not utf-8", "meta.json is not valid JSON"),
    ("meta.json", b'{"episode_index": 0}', "meta.json lacks"),
    ("meta.json", json.dumps({"episode_index": 0, "episode_length": 9, "split": "train",
                              "frame_start": 0, "own": [0, 9], "segments": []}).encode(),
     "not what the sample key names"),
    ("observation.state.npy", None, "different frame counts"),  # one feature one frame short
    ("npy", None, r"expected frames \[\d+, \d+\) of episode 1"),  # every feature one frame short
])
def test_a_corrupt_member_names_shard_and_sample(stores, tmp_path, member, content, expect):
    _, shards = export(stores["raw"], tmp_path / "wds", samples=40, shard_size=300_000, context=4)
    items = [(m.name, data) for m, data in members(shards[1])]
    key = items[0][0].split(".")[0]
    for i, (name, data) in enumerate(items):
        if name == f"{key}.{member}" or (member == "npy" and name.startswith(key)
                                         and name.endswith(".npy")):
            if content is None:
                arr = np.load(io.BytesIO(data))
                buf = io.BytesIO()
                np.save(buf, arr[:-1])
                content = buf.getvalue()
            items[i] = (name, content)
    rewrite(shards[1], items)
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                      batch_size=1, shuffle=False)
    with pytest.raises(StreamFormatError, match=f"{shards[1]} sample {key}.*{expect}"):
        drain(st)


def test_stream_errors_are_in_the_tree(stores, tmp_path):
    export(stores["raw"], tmp_path / "wds", samples="episode")
    with pytest.raises(VladataError, match="no cameras"):
        WindowStream(str(tmp_path / "wds"), cameras=["nope"])
    with pytest.raises(VladataError, match="no split"):
        WindowStream(str(tmp_path / "wds"), split="nope")
    (tmp_path / "wds" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StreamFormatError, match="index.json: not a vlakit-wds"):
        WindowStream(str(tmp_path / "wds"))


def test_fuzzed_shards_raise_only_stream_errors(stores, tmp_path):
    """150 seeded mutations of a shard (flipped bytes, truncations): reading either
    succeeds (flips inside array data are not detectable in a tar) or raises a VladataError
    naming the shard -- never another exception, never a hang."""
    ds = stores["raw"]
    idx, shards = export(ds, tmp_path / "wds", samples=60, shard_size=10 ** 9, context=2)
    pristine = shards[0].read_bytes()
    with tarfile.open(shards[0]) as t:  # bias the flips towards headers, where parsing happens
        hot = [m.offset for m in t.getmembers()] + [m.offset_data for m in t.getmembers()]
    rng = np.random.default_rng(11)
    outcomes = {"ok": 0, "error": 0}
    for i in range(150):
        data = bytearray(pristine)
        if i % 3 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                base = int(rng.choice(hot)) if rng.random() < 0.8 else 0
                pos = min(len(data) - 1, base + int(rng.integers(0, 160)))
                data[pos] = int(rng.integers(0, 256))
        shards[0].write_bytes(bytes(data))
        st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split="validation",
                          over="episodes", batch_size=4, shuffle=True, seed=i)
        try:
            drain(st)
            outcomes["ok"] += 1
        except VladataError as e:
            assert str(shards[0]) in str(e), e
            outcomes["error"] += 1
    assert outcomes["error"] > 50 and outcomes["ok"] > 0, outcomes


def test_no_consumer_cycles_over_shards_that_yield_nothing(stores, tmp_path, monkeypatch):
    """The last guard against spinning: were a reader ever to return no sample with windows from
    shards the index says hold some, the stream raises instead of cycling forever."""
    import vladata.stream.reader as reader
    _, shards = export(stores["raw"], tmp_path / "wds", samples="episode")
    monkeypatch.setattr(reader, "iter_samples", lambda *a, **k: iter(()))
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split="validation", batch_size=1)
    with pytest.raises(StreamFormatError, match=f"{shards[0]}.*hold no sample with windows for "
                                                "split 'validation'"):
        drain(st)
