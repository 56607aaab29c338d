"""``vladata card``: the store's README.md and thumbnail strips, and a store that still verifies."""

from __future__ import annotations

import shutil
import struct
from collections import Counter

import pytest
from click.testing import CliRunner

import vladata
from cli.vladata import main
from vladata.card import MARKER
from vladata.store.manifest import verify


@pytest.fixture
def store(calvin_store, tmp_path):
    dst = tmp_path / "calvin.vla"
    shutil.copytree(calvin_store, dst)  # the session's store stays as it was
    return dst


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_card_describes_the_store(store):
    r = CliRunner().invoke(main, ["card", str(store)])
    assert r.exit_code == 0, r.output
    text = (store / "README.md").read_text()
    ds = vladata.open(store)
    assert text.startswith(MARKER)
    assert "| source | calvin |" in text and "| fps | 30 |" in text
    for split, d in ds.summary()["splits"].items():
        assert f"| {split} | {d['episodes']:,} | {d['frames']:,} |" in text
    for cam in ("rgb_static", "rgb_gripper"):
        strip = store / "card" / f"{cam}.png"
        assert f"![observation.images.{cam}](card/{cam}.png)" in text
        w, h = _png_size(strip)
        assert h == 96 and w > 96 * 4
    names = ds.info["features"]["action"]["names"]
    mean = ds.stats["action"]["mean"]
    for d, name in enumerate(names):
        assert f"| {d} | {name} | {float(mean[d]):.4g} |" in text
    assert "## State" in text and "tcp_pos_x" in text
    counts = Counter(ds.segments["instruction"].to_list())
    text_, n = counts.most_common(1)[0]
    assert f"| {text_} | {n} |" in text
    assert f"vladata convert calvin {ds.info['source_info']['root']} calvin.vla" in text
    from importlib.metadata import version
    assert f"| vlakit | {version('vlakit')} |" in text
    assert verify(store, progress=False) == []  # the card does not break `vladata verify`


def test_card_stays_outside_the_manifest_and_never_overwrites_a_foreign_readme(store):
    before = (store / "meta" / "manifest.json").read_bytes()
    CliRunner().invoke(main, ["card", str(store)])
    again = CliRunner().invoke(main, ["card", str(store)])  # our own card: refreshed
    assert again.exit_code == 0, again.output
    assert (store / "meta" / "manifest.json").read_bytes() == before
    assert not list(store.rglob("*.tmp"))
    (store / "card" / "rgb_static.png").write_bytes(b"damaged")  # not the store's data
    assert verify(store, progress=False) == [] and vladata.open(store)
    (store / "README.md").write_text("# my notes\n")
    r = CliRunner().invoke(main, ["card", str(store)])
    assert r.exit_code == 1 and "is not a vlakit card" in r.output
    assert (store / "README.md").read_text() == "# my notes\n"
