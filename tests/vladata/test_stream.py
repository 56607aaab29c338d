"""The WebDataset streaming form: export, windows equal to the store's, splits, s3://."""

from __future__ import annotations

import json
import socket
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.export import command as export_command
from vladata.stream import StreamFormatError, WindowStream, export_wds, iter_samples
from tests.conftest import build_codec_stores

H, C = 4, 3


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return build_codec_stores(tmp_path_factory, "stream", seed=4)


def _check_window(x, y):
    assert x.keys() == y.keys()
    for k in y:
        if isinstance(y[k], str):
            assert x[k] == y[k], k
        else:
            np.testing.assert_array_equal(np.asarray(x[k]), y[k], err_msg=k)


@pytest.mark.parametrize("codec,samples", [("raw", "episode"), ("jpeg", 40)])
@pytest.mark.parametrize("over,split", [("segments", "train"), ("episodes", "validation")])
def test_stream_yields_the_store_windows(stores, tmp_path, codec, samples, over, split):
    ds = stores[codec]
    idx = export_wds(ds, tmp_path / "wds", samples=samples, shard_size=80_000, context=8)
    assert len(idx["shards"]) > 1 and (tmp_path / "wds" / "index.json").exists()
    w = ds.windows(history=H, chunk=C, split=split, over=over)
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=split, over=over,
                      batch_size=1, shuffle=False)
    assert len(st) == len(w)
    seen = []
    for x in st:  # one unshuffled epoch at batch size 1 is every window exactly once
        _check_window(x, w[int(x["index"])])
        seen.append(int(x["index"]))
    assert sorted(seen) == list(range(len(w)))


def test_samples_are_episodes_or_chunks_never_windows(stores, tmp_path):
    ds = stores["raw"]
    ep = export_wds(ds, tmp_path / "ep", samples="episode")
    assert sum(s["samples"] for s in ep["shards"]) == len(ds)
    ck = export_wds(ds, tmp_path / "ck", samples=50, context=5)
    lengths = ds.episodes["length"].to_list()
    assert sum(s["samples"] for s in ck["shards"]) == sum(-(-n // 50) for n in lengths)
    frames = 0
    for sh in ck["shards"]:
        for s in iter_samples(str(tmp_path / "ck" / sh["url"])):
            m = s["meta"]
            n = s["observation.images.rgb_static"].shape[0]
            assert n == min(m["episode_length"], m["own"][1] + 5) - max(0, m["own"][0] - 5)
            frames += m["own"][1] - m["own"][0]
    assert frames == ds.num_frames  # each frame is "own" in exactly one sample
    # plain webdataset reads the shards too
    import webdataset as wds
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "ep" / ep["shards"][0]["url"]),
                                                  shardshuffle=False)]
    assert keys and all(k.startswith("e") for k in keys)
    with pytest.raises(ValueError, match="context 5"):
        WindowStream(str(tmp_path / "ck"), history=16, chunk=3)


def test_uneven_shards_give_every_rank_the_same_batches(stores, tmp_path):
    ds = stores["raw"]
    idx = export_wds(ds, tmp_path / "wds", samples=30, shard_size=150_000, context=4)
    sizes = [s["samples"] for s in idx["shards"]]
    assert len(set(sizes)) > 1  # uneven
    world, bs = 3, 5
    counts = []
    for rank in range(world):
        st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                          batch_size=bs, rank=rank, world_size=world, seed=2, shuffle_buffer=3)
        want = (len(st.ranges) // world) // bs
        loader = st.loader(num_workers=2 if rank == 0 else 0)
        for epoch in range(2):
            loader.set_epoch(epoch)
            n = 0
            for b in loader:
                assert b["action"].shape == (bs, H, C, 7)
                n += 1
            counts.append(n)
        loader.close()
        # torch's own DataLoader over the IterableDataset gives the same count
        dl = torch.utils.data.DataLoader(st, batch_size=bs, num_workers=2)
        counts.append(sum(1 for _ in dl))
        assert set(counts) == {want}


def test_more_consumers_than_shards(stores, tmp_path):
    ds = stores["raw"]
    export_wds(ds, tmp_path / "wds", samples="episode", shard_size=10 ** 9)  # one shard
    w = ds.windows(history=H, chunk=C, split=None, over="episodes")
    for rank in range(2):
        st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                          batch_size=4, rank=rank, world_size=2)
        loader = st.loader(num_workers=2)
        n = 0
        for b in loader:
            n += 1
            i = int(b["index"][0])
            np.testing.assert_array_equal(b["frame_index"][0].numpy(), w[i]["frame_index"])
        assert n == st.num_batches > 0
        loader.close()


def test_stream_loader_resumes_exactly(stores, tmp_path):
    export_wds(stores["raw"], tmp_path / "wds", samples=40, shard_size=100_000, context=4)

    def make():
        st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, batch_size=6, seed=1)
        return st.loader(num_workers=2)

    full = make()
    want = [b["index"].clone() for b in full]
    full.close()
    first = make()
    got = []
    for b in first:
        got.append(b["index"].clone())
        if len(got) == 5:
            break
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    again = make()
    again.load_state_dict(state)
    got += [b["index"].clone() for b in again]
    again.close()
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_corrupt_and_missing_shards_are_named(stores, tmp_path):
    idx = export_wds(stores["raw"], tmp_path / "wds", samples="episode", shard_size=80_000)
    with pytest.raises(StreamFormatError, match="no index.json"):
        WindowStream(str(tmp_path))
    shard = tmp_path / "wds" / idx["shards"][1]["url"]
    shard.write_bytes(shard.read_bytes()[:3000] + b"\x00garbage" * 100)
    st = WindowStream(str(tmp_path / "wds"), history=H, chunk=C, split=None, over="episodes",
                      batch_size=1, shuffle=False)
    with pytest.raises((StreamFormatError, ValueError), match=str(shard)):
        for _ in st:
            pass


def test_cli_export(stores, tmp_path):
    res = CliRunner().invoke(export_command, [stores["raw"].path, str(tmp_path / "out"), "--format",
                                              "wds", "--chunk", "64", "--shard-size", "200KB"])
    assert res.exit_code == 0, res.output
    idx = json.loads((tmp_path / "out" / "index.json").read_text())
    assert idx["samples"] == 64 and len(idx["shards"]) > 1
    assert all(s["bytes"] <= 200 * 1024 or s["samples"] == 1 for s in idx["shards"])
    with tarfile.open(tmp_path / "out" / idx["shards"][0]["url"]) as t:
        names = t.getnames()
    assert any(n.endswith(".observation.images.rgb_static.npy") for n in names)
    bad = CliRunner().invoke(export_command, [stores["raw"].path, str(tmp_path / "o2"), "--shard-size", "lots"])
    assert bad.exit_code != 0 and "expected a size" in bad.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_streaming_against_a_local_s3_server(stores, tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer
    import s3fs
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("vla-bucket")
        # export straight to s3:// ...
        export_wds(stores["jpeg"], "s3://vla-bucket/calvin/wds", samples=60, context=6,
                   shard_size=60_000, storage_options=opts)
        assert fs.exists("vla-bucket/calvin/wds/index.json")
        w = stores["jpeg"].windows(history=H, chunk=C, split="train", over="segments")
        st = WindowStream("s3://vla-bucket/calvin/wds", history=H, chunk=C, batch_size=1,
                          shuffle=False, storage_options=opts)
        seen = []
        for x in st:
            _check_window(x, w[int(x["index"])])
            seen.append(int(x["index"]))
        assert sorted(seen) == list(range(len(w)))
        # ... and through the batch loader's worker processes
        st = WindowStream("s3://vla-bucket/calvin/wds", history=H, chunk=C, batch_size=8, seed=3,
                          storage_options=opts)
        loader = st.loader(num_workers=2)
        n = 0
        for b in loader:
            j = int(b["index"][3])
            np.testing.assert_array_equal(b["observation.images.rgb_static"][3].numpy(),
                                          w[j]["observation.images.rgb_static"])
            n += 1
        loader.close()
        assert n == st.num_batches == len(w) // 8
    finally:
        server.stop()


def test_stream_loader_takes_what_the_window_loader_takes(stores, tmp_path):
    """``WindowStream.loader(batch_size=..., shuffle=..., seed=..., rank=..., world_size=...)``
    as ``WindowDataset.loader``: the same batches as a stream built with those settings."""
    export_wds(stores["raw"], tmp_path / "wds", samples=40, shard_size=100_000, context=4)
    url = str(tmp_path / "wds")

    def batches(loader):
        out = [(b["index"].clone(), b["action"].clone()) for b in loader]
        loader.close()
        return out

    built = WindowStream(url, history=H, chunk=C, split=None, batch_size=5, seed=3, rank=1,
                         world_size=2)
    base = WindowStream(url, history=H, chunk=C, split=None)  # batch_size 32, seed 0, rank 0
    want = batches(built.loader(num_workers=0))
    got = batches(base.loader(batch_size=5, seed=3, rank=1, world_size=2, num_workers=0,
                              prefetch=1, drop_last=True))
    assert len(got) == built.num_batches and all(len(i) == 5 for i, _ in got)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
    assert base.batch_size == 32 and base.rank == 0  # the stream itself is unchanged
    # the same call works on the store's windows (the API is symmetric)
    stores["raw"].windows(history=H, chunk=C, split=None).loader(
        batch_size=5, seed=3, rank=1, world_size=2, num_workers=0, prefetch=1, drop_last=True).close()
    with pytest.raises(ValueError, match="whole batches"):
        base.loader(batch_size=5, drop_last=False)
