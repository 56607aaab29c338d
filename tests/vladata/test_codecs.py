"""Image codecs: JPEG pass-through (OXE, compressed ALOHA), video (h264/av1) layout, windows,
damage, verify, and ``vladata transcode`` round trips."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import h5py
import numpy as np
import pytest

import vladata
from vladata.episode import EpisodeInfo, FeatureSpec, Segment
from vladata.errors import SourceFormatError, StoreError
from vladata.images import decode_jpeg
from vladata.store.manifest import verify
from vladata.store.shard_reader import ShardFormatError, StoreReader
from vladata.store.transcode import transcode
from vladata.store.writer import convert

CAMS = ("observation.images.front", "observation.images.wrist")


@dataclass
class MovingScene:
    """Three episodes (160 frames: shards of 64, 64, 32 rows) of two smooth, moving cameras."""

    lengths: tuple = (70, 60, 30)
    name: str = "scene"
    fps: float = 10.0

    def features(self):
        return {CAMS[0]: FeatureSpec("uint8", (48, 64, 3), kind="image"),
                CAMS[1]: FeatureSpec("uint8", (32, 32, 3), kind="image"),
                "action": FeatureSpec("float32", (3,), names=("x", "y", "gripper"))}

    def plan(self):
        return [EpisodeInfo(length=n, source_id=f"ep{i}", split="validation" if i == 2 else "train",
                            segments=[Segment(0, n - 1, f"task {i}")])
                for i, n in enumerate(self.lengths)]

    def read(self, i, lo=0, hi=None):
        hi = self.lengths[i] if hi is None else hi
        t = np.arange(lo, hi, dtype=np.float64)
        out = {}
        for cam, (h, w) in zip(CAMS, ((48, 64), (32, 32))):
            y, x = np.mgrid[0:h, 0:w]
            ph = t[:, None, None] * 0.15 + i
            img = np.stack([128 + 100 * np.sin(x / 9 + ph), 128 + 100 * np.cos(y / 7 - ph),
                            (x + y + 3 * t[:, None, None]) % 256], axis=-1)
            out[cam] = img.astype(np.uint8)
        out["action"] = np.stack([np.sin(t / 5 + i), np.cos(t / 4), np.sign(np.sin(t / 9))],
                                 axis=1).astype(np.float32)
        return out

    def describe(self):
        return {"gripper": "-1/1"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("codecs")
    for codec in ("raw", "h264", "av1"):
        convert(MovingScene(), d / f"{codec}.vla", image_codec=codec, progress=False)
    return d


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


# -- video --------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_video_windows_at_shard_and_gop_boundaries_are_within_the_recorded_psnr(stores, codec):
    raw, vid = vladata.open(stores / "raw.vla"), vladata.open(stores / f"{codec}.vla")
    storage = vid.info["features"][CAMS[0]]["storage"]
    assert storage["codec"] == codec and storage["gop"] == 16 and storage["crf"] >= 0
    wr = raw.windows(history=8, chunk=2, over="episodes", split=None)
    wv = vid.windows(history=8, chunk=2, over="episodes", split=None)
    rows = {wr.locate(i)[1]: i for i in range(len(wr))}
    # current steps across a GOP start (16), a shard start (64, 128) and the last row
    for e in (15, 16, 17, 63, 64, 65, 71, 127, 128, 129, 159):
        a, b = wr[rows[e]], wv[rows[e]]
        np.testing.assert_array_equal(a["action"], b["action"])
        for cam in CAMS:
            psnr = vid.info["features"][cam]["storage"]["psnr"]
            assert psnr["min"] > 20, psnr  # a sanity floor: the recorded figure is the test
            for j in range(8):
                assert _psnr(a[cam][j], b[cam][j]) >= psnr["min"] - 1e-3, (e, cam, j)


def test_video_reads_do_not_depend_on_the_order_or_the_kept_decoder(stores):
    vid = vladata.open(stores / "h264.vla")
    order = list(range(0, 150, 7))
    fwd = vid.windows(history=12, chunk=1, over="episodes", split=None)
    got = {i: fwd[i][CAMS[0]] for i in order}
    back = vid.windows(history=12, chunk=1, over="episodes", split=None)
    for i in reversed(order):
        np.testing.assert_array_equal(back[i][CAMS[0]], got[i])
    ep = vid.episode(0)[CAMS[0]]
    fresh = vid.windows(history=1, chunk=1, over="episodes", split=None)
    for i in (0, 31, 32, 69):
        np.testing.assert_array_equal(fresh[i][CAMS[0]][0], ep[i])


def test_video_windows_are_the_same_with_two_loader_workers(stores):
    wv = vladata.open(stores / "av1.vla").windows(history=4, chunk=2, split=None)
    a = [b[CAMS[1]].clone() for b in wv.loader(8, num_workers=0, seed=3)]
    b = [b[CAMS[1]].clone() for b in wv.loader(8, num_workers=2, seed=3)]
    assert len(a) == len(b) > 2
    for x, y in zip(a, b):
        assert (x == y).all()


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_a_shard_decodes_with_plain_pyav_from_the_documented_layout(stores, codec):
    """From the vladata.store.video docstring alone: index at the end, vlen chunk + CRC."""
    arr = stores / f"{codec}.vla" / "data" / CAMS[0]
    meta = json.loads((arr / "zarr.json").read_text())["attributes"]
    shard = (arr / "c" / "1").read_bytes()          # rows 64..127
    index = np.frombuffer(shard[-(64 * 16 + 4):-4], "<u8").reshape(64, 2)
    packets = []
    for off, n in index:
        chunk = shard[int(off):int(off + n)]
        count, length = struct.unpack_from("<II", chunk)
        assert count == 1 and len(chunk) == 8 + length + 4
        packets.append(chunk[8:8 + length])
    dec = av.CodecContext.create(meta["video"]["decoder"], "r")
    frames = []
    for p in packets[16:]:                             # from the keyframe of the second GOP
        frames += [f.to_ndarray(format="rgb24") for f in dec.decode(av.Packet(p))]
    frames += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
    from vladata.store.video import VideoRows
    ours = VideoRows(StoreReader(stores / f"{codec}.vla")[CAMS[0]]).read(80, 128)
    assert len(frames) == 48
    np.testing.assert_array_equal(np.stack(frames), ours)
    raw = StoreReader(stores / "raw.vla")[CAMS[0]].read(80, 128)
    for j in (0, 30, 47):
        assert _psnr(frames[j], raw[j]) >= meta["video"]["psnr"]["min"] - 1e-3


def test_verify_checks_a_video_store_and_names_a_corrupt_packet(stores, tmp_path):
    import shutil
    assert verify(stores / "h264.vla", progress=False) == []
    bad = tmp_path / "bad.vla"
    shutil.copytree(stores / "h264.vla", bad)
    path = bad / "data" / CAMS[0] / "c" / "1"
    data = bytearray(path.read_bytes())
    index = np.frombuffer(bytes(data[-(64 * 16 + 4):-4]), "<u8").reshape(64, 2)
    off = int(index[20, 0]) + 12
    data[off] ^= 0x5A                                  # a bit flip inside packet 20 of shard 1
    path.write_bytes(bytes(data))
    w = vladata.open(bad).windows(history=8, chunk=1, over="episodes", split=None)
    with pytest.raises(ShardFormatError, match=r"c/1.*CRC32C"):
        w[w.ranges.window_index(1, 64 + 22)]
    assert w[0][CAMS[0]].shape == (8, 48, 64, 3)      # other shards still read
    problems = verify(bad, progress=False)
    assert problems and str(path.relative_to(bad)) in problems[0]


def test_undecodable_packets_are_an_error_naming_the_shard(stores, tmp_path):
    """A packet whose CRC32C is right but whose bytes are not video (written so on purpose)."""
    import shutil

    import google_crc32c
    bad = tmp_path / "bad.vla"
    shutil.copytree(stores / "av1.vla", bad)
    path = bad / "data" / CAMS[1] / "c" / "0"
    data = bytearray(path.read_bytes())
    index = np.frombuffer(bytes(data[-(64 * 16 + 4):-4]), "<u8").reshape(64, 2)
    off, n = (int(x) for x in index[3])
    body = bytes(data[off:off + 8]) + b"\xff" * (n - 12)  # vlen header kept, packet garbage
    data[off:off + n] = body + struct.pack("<I", google_crc32c.value(body))
    path.write_bytes(bytes(data))
    w = vladata.open(bad).windows(history=8, chunk=1, over="episodes", split=None)
    with pytest.raises(ShardFormatError, match=r"observation.images.wrist/c/0: .*(decode|damaged)"):
        w[w.ranges.window_index(0, 6)]
    problems = verify(bad, progress=False)
    assert len(problems) == 1 and "observation.images.wrist/c/0" in problems[0]


def test_video_settings_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(StoreError, match="must divide"):
        convert(MovingScene(), tmp_path / "a.vla", image_codec="h264", gop=12, progress=False)
    assert not (tmp_path / "a.vla").exists()

    class Odd(MovingScene):
        def features(self):
            return {**super().features(), CAMS[1]: FeatureSpec("uint8", (31, 32, 3), "image")}
    with pytest.raises(StoreError, match="even height and width"):
        convert(Odd(), tmp_path / "b.vla", image_codec="av1", progress=False)


def test_gop_and_crf_are_recorded(tmp_path):
    convert(MovingScene(lengths=(40,)), tmp_path / "g.vla", image_codec="h264", gop=8, crf=30,
            progress=False)
    meta = json.loads((tmp_path / "g.vla/data" / CAMS[0] / "zarr.json").read_text())
    v = meta["attributes"]["video"]
    assert (v["gop"], v["crf"], v["encoder"]) == (8, 30, "libx264")
    assert set(v["psnr"]) == {"mean", "min"} and v["psnr"]["mean"] >= v["psnr"]["min"]
    packets = StoreReader(tmp_path / "g.vla")[CAMS[0]].read_items(0, 40)

    def nal_types(p: bytes) -> set[int]:  # Annex B: 00 00 01 <header>, type = low 5 bits
        return {p[i + 3] & 0x1F for i in range(len(p) - 3) if p[i:i + 3] == b"\0\0\1"}
    idr = [j for j, p in enumerate(packets) if 5 in nal_types(p)]
    assert idr == [0, 8, 16, 24, 32]                   # closed GOPs of 8
    assert all({7, 8} <= nal_types(packets[j]) for j in idr)  # SPS + PPS in band


# -- transcode ----------------------------------------------------------------------------------

def test_transcode_raw_to_h264_to_raw_keeps_everything_but_pixels(stores, tmp_path):
    transcode(stores / "h264.vla", tmp_path / "back.vla", image_codec="raw", progress=False)
    raw, vid, back = (vladata.open(p) for p in (stores / "raw.vla", stores / "h264.vla",
                                                   tmp_path / "back.vla"))
    assert back.episodes.equals(raw.episodes) and back.segments.equals(raw.segments)
    for name in ("action", "action.norm", "action.tokens"):
        np.testing.assert_array_equal(back.array(name)[:], raw.array(name)[:])
    assert (tmp_path / "back.vla/meta/stats.json").read_text() == \
        (stores / "raw.vla/meta/stats.json").read_text()
    for i in range(len(raw)):
        for cam in CAMS:
            got = back.episode(i)[cam]
            np.testing.assert_array_equal(got, vid.episode(i)[cam])  # decoded exactly once
            assert _psnr(got, raw.episode(i)[cam]) >= \
                vid.info["features"][cam]["storage"]["psnr"]["min"] - 1e-3


def test_transcode_raw_to_jpeg_to_raw_and_jpeg_bytes_pass_through(stores, tmp_path):
    transcode(stores / "raw.vla", tmp_path / "j.vla", image_codec="jpeg", progress=False)
    transcode(tmp_path / "j.vla", tmp_path / "j2.vla", image_codec="jpeg", progress=False)
    transcode(tmp_path / "j.vla", tmp_path / "r.vla", image_codec="raw", progress=False)
    a, b = StoreReader(tmp_path / "j.vla"), StoreReader(tmp_path / "j2.vla")
    for cam in CAMS:
        assert a[cam].read_items(0, 160) == b[cam].read_items(0, 160)
        r = vladata.open(tmp_path / "r.vla").episode(1)[cam]
        np.testing.assert_array_equal(r, vladata.open(tmp_path / "j.vla").episode(1)[cam])
        assert _psnr(r, vladata.open(stores / "raw.vla").episode(1)[cam]) > 30


def test_transcode_refuses_to_write_into_its_input(stores):
    with pytest.raises(StoreError, match="inside the source"):
        transcode(stores / "raw.vla", stores / "raw.vla" / "x", image_codec="jpeg",
                  progress=False)


# -- JPEG pass-through --------------------------------------------------------------------------

def test_oxe_jpeg_pass_through_stores_the_records_bytes(tmp_path):
    from vladata.samples.oxe import write_sample
    from vladata.sources.oxe import OxeSource
    src = write_sample(tmp_path / "src")
    convert(OxeSource(src), tmp_path / "j.vla", image_codec="jpeg", progress=False)
    convert(OxeSource(src), tmp_path / "r.vla", image_codec="raw", progress=False)
    blob = b"".join(p.read_bytes() for p in Path(src).glob("*.tfrecord*"))
    ds, raw = vladata.open(tmp_path / "j.vla"), vladata.open(tmp_path / "r.vla")
    reader = StoreReader(tmp_path / "j.vla")
    cams = [k for k, f in ds.features.items() if f.kind == "image"]
    assert cams
    for cam in cams:
        assert ds.info["features"][cam]["storage"]["codec"] == "jpeg"
        items = reader[cam].read_items(0, len(reader[cam]))
        assert all(b[:2] == b"\xff\xd8" and b in blob for b in items)  # the source's bytes
        pixels = raw.array(cam)[:]
        for j in (0, len(items) // 2, len(items) - 1):
            np.testing.assert_array_equal(decode_jpeg(items[j]), pixels[j])


def test_compressed_aloha_pass_through_keeps_the_cv2_bytes_and_colours(tmp_path):
    from vladata.samples.hdf5 import write_sample
    from vladata.sources.hdf5 import Hdf5Source
    write_sample(tmp_path / "src", "aloha-compressed")
    src = Hdf5Source(str(tmp_path / "src"), layout="aloha")
    convert(src, tmp_path / "j.vla", image_codec="jpeg", progress=False)
    ds = vladata.open(tmp_path / "j.vla")
    cam = "observation.images.cam_high"
    assert ds.info["features"][cam]["storage"]["channel_order"] == "bgr"
    with h5py.File(tmp_path / "src/episode_0.hdf5") as f:
        cells = f["observations/images/cam_high"][:]
    items = StoreReader(tmp_path / "j.vla")[cam].read_items(0, len(cells))
    assert items == [c.tobytes().rstrip(b"\0") for c in cells]
    np.testing.assert_array_equal(ds.episode(0)[cam], src.read(0)[cam])  # RGB, as read() gives


def test_a_jpeg_that_does_not_decode_names_file_episode_key_and_frame(tmp_path):
    from vladata.samples.hdf5 import write_sample
    from vladata.sources.hdf5 import Hdf5Source
    write_sample(tmp_path / "src", "aloha-compressed")
    with h5py.File(tmp_path / "src/episode_1.hdf5", "r+") as f:
        ds = f["observations/images/cam_low"]
        cell = np.zeros(ds.shape[1], np.uint8)
        cell[:6] = list(b"\xff\xd8\xff\xe0\x00\x10")  # a JPEG header, then nothing
        ds[3] = cell
    with pytest.raises(SourceFormatError) as e:
        convert(Hdf5Source(str(tmp_path / "src"), layout="aloha"), tmp_path / "j.vla",
                image_codec="jpeg", progress=False)
    msg = str(e.value)
    assert "episode_1.hdf5" in msg and "cam_low" in msg and "frame 3" in msg
    assert not (tmp_path / "j.vla/meta/manifest.json").exists()


# -- CLI and the stream export ------------------------------------------------------------------

def test_cli_transcode_and_what_convert_help_says(stores, tmp_path):
    from click.testing import CliRunner

    from cli.vladata import main
    run = CliRunner().invoke
    r = run(main, ["transcode", str(stores / "av1.vla"), str(tmp_path / "j.vla"),
                   "--image-codec", "jpeg", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["frames"] == 160
    assert verify(tmp_path / "j.vla", progress=False) == []
    r = run(main, ["transcode", str(stores / "raw.vla"), str(tmp_path / "g.vla"),
                   "--image-codec", "h264", "--gop", "12"])
    assert r.exit_code == 1 and "must divide" in r.output and "Traceback" not in r.output
    for args in (["convert", "--help"], ["convert", "calvin", "--help"]):
        text = " ".join(run(main, args).output.split())
        assert all(w in text for w in ("h264", "av1", "jpeg", "windows/s", "BENCHMARKS.md")), args


def test_stream_export_refuses_video_stores(stores, tmp_path):
    from vladata.errors import SelectionError
    from vladata.stream import export_wds
    with pytest.raises(SelectionError, match="transcode"):
        export_wds(vladata.open(stores / "h264.vla"), str(tmp_path / "wds"))
