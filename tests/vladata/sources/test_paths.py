"""Paths from dataset metadata: the safe formatter and the containment check."""

from __future__ import annotations

import pytest

from vladata.errors import SourceFormatError
from vladata.sources.paths import inside, is_inside, safe_format


def test_plain_fields_and_simple_specs():
    values = {"episode_chunk": 1, "episode_index": 42, "video_key": "observation.images.top"}
    assert safe_format("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}"
                       ".mp4", values) == \
        "videos/chunk-001/observation.images.top/episode_000042.mp4"
    assert safe_format("{episode_index:>5}|{{literal}}", values) == "   42|{literal}"


@pytest.mark.parametrize("template, says", [
    ("{episode_index.__class__}", "not a plain name"),
    ("{episode_index.__class__.__mro__}", "not a plain name"),
    ("{episode_index[0]}", "not a plain name"),
    ("{episode_index!r}", "not a plain name"),
    ("{episode_index:{episode_index}}", "not a plain name"),
    ("{0}", "not a plain name"),
    ("{}", "not a plain name"),
    ("{unknown}", "unknown field"),
    ("{episode_index", "malformed"),
    ("{episode_index:s}", "episode_index"),  # a spec the value refuses
])
def test_anything_else_is_refused(template, says):
    with pytest.raises(SourceFormatError, match=says) as e:
        safe_format(template, {"episode_index": 3}, file="meta/info.json", key="data_path")
    assert e.value.file == "meta/info.json" and e.value.key == "data_path"


def test_containment_is_lexical(tmp_path):
    root = tmp_path / "ds"
    assert is_inside(root, "data/x.parquet") and is_inside(root, "a/../b")
    assert not is_inside(root, "../ds2/x") and not is_inside(root, "/etc/passwd")
    assert not is_inside(root, "a/../../x")
    assert is_inside(root, root / "x")
    with pytest.raises(SourceFormatError, match="--allow-outside"):
        inside(root, "../x", file="f", key="k")
    assert inside(root, "../x", allow_outside=True) == root / "../x"
