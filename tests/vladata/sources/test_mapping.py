"""Mapping files: parsing, validation (every error at once), and the shared decode helpers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import yaml
from PIL import Image

from vladata.errors import ConfigError
from vladata.episode import segments_from_runs
from vladata.images import decode_image, image_format
from vladata.sources.mapping import (Mapping, MappingError, gripper_facts, load_mapping,
                                     parse_mapping)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"

ROSBAG = {
    "version": 1, "format": "rosbag", "name": "arm", "fps": 15, "gripper": "-1/1",
    "language": {"topic": "/instruction"},
    "features": {
        "observation.images.front": {"topic": "/cam/image_raw"},
        "observation.state": {"parts": [{"topic": "/joint_states", "field": "position",
                                         "index": "0:6"},
                                        {"topic": "/gripper", "field": "data"}],
                              "names": ["a", "b", "c", "d", "e", "f", "g"]},
        "action": {"topic": "/cmd", "field": "twist.linear", "index": [0, 2]},
    },
}


def test_parses_a_rosbag_mapping_and_round_trips_through_to_dict():
    m = parse_mapping(ROSBAG)
    assert m.format == "rosbag" and m.fps == 15.0 and m.gripper == "-1/1"
    state = m.feature("observation.state")
    assert [p.topic for p in state.parts] == ["/joint_states", "/gripper"]
    assert state.parts[0].index == (0, 1, 2, 3, 4, 5) and state.parts[1].index is None
    assert m.feature("action").parts[0].index == (0, 2)
    assert m.feature("observation.images.front").kind == "image"
    assert m.sources() == ["/cam/image_raw", "/joint_states", "/gripper", "/cmd"]
    assert Mapping.from_dict(m.to_dict()) == m
    assert Mapping.from_dict(yaml.safe_load(yaml.safe_dump(m.to_dict(), sort_keys=False))) == m


def test_hdf5_mapping_defaults_and_string_shorthand():
    m = parse_mapping({"format": "hdf5", "fps": 50, "features": {"action": "act",
                                                                 "observation.images.top": "img"}})
    assert m.version == 1 and m.gripper == "unknown" and m.split == "train"
    assert m.feature("action").parts[0].key == "act"
    assert m.feature("observation.images.top").encoding == "raw"
    assert m.episodes.files == "*.hdf5" and m.episodes.group is None
    assert Mapping.from_dict(m.to_dict()) == m


def test_every_error_is_reported_at_once(tmp_path):
    bad = {
        "format": "rosbag", "fps": -3, "colour": "red", "gripper": "open",
        "episodes": {"files": "*.h5"},
        "language": {"instruction": "x", "topic": "/t"},
        "features": {
            "observation.images.front": {"topic": "/cam", "index": [0], "encoding": "jpeg"},
            "observation.state": {"parts": [{"key": "qpos"}, {"topic": "/g", "index": "3:1"}]},
            "joint_states": {"topic": "/js"},
            "action.base": {"topic": "/b", "dtype": "complex64", "names": [1, 2]},
        },
    }
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(MappingError) as ei:
        load_mapping(p)
    errors = ei.value.errors
    expected = ["fps: expected a positive number", "colour: unknown key", "gripper: expected",
                "episodes: only for format hdf5", "language: give exactly one of",
                "features.observation.images.front.index: not allowed for an image",
                "features.observation.images.front.encoding: for rosbag",
                "features.observation.state.parts[0].topic: required for format rosbag",
                "features.observation.state.parts[0].key: not used by format rosbag",
                "features.observation.state.parts[1].index: expected",
                "features.joint_states: not a canonical feature name",
                "features.action.base.dtype: expected a numeric dtype",
                "features.action.base.names: expected a list of strings",
                "features.action: missing"]
    for want in expected:
        assert any(want in e for e in errors), (want, errors)
    assert len(errors) == len(expected)
    assert all(e.startswith(str(p)) for e in errors)  # every line names the file
    assert isinstance(ei.value, ConfigError) and isinstance(ei.value, ValueError)


def test_names_must_match_indexed_width():
    doc = {"format": "rosbag", "fps": 10,
           "features": {"action": {"topic": "/a", "index": "0:3", "names": ["x", "y"]}}}
    with pytest.raises(MappingError, match="2 names for 3 indexed values"):
        parse_mapping(doc)


def test_yaml_is_parsed_safely_and_syntax_errors_name_the_file(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("format: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(MappingError, match="invalid YAML") as ei:
        load_mapping(p)
    assert str(p) in str(ei.value)
    p.write_text("format: hdf5\nfeatures: [unclosed\n")
    with pytest.raises(MappingError, match="invalid YAML"):
        load_mapping(p)
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping(tmp_path / "missing.yaml")
    p.write_text("- just\n- a list\n")
    with pytest.raises(MappingError, match="expected a mapping"):
        load_mapping(p)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_mappings_are_valid(path):
    m = load_mapping(path)
    assert "action" in [f.name for f in m.features]
    assert Mapping.from_dict(m.to_dict()) == m


def test_examples_exist():
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {"rosbag_arm.yaml", "hdf5_custom.yaml",
                                                         "aloha_as_mapping.yaml"}


def test_gripper_facts():
    assert gripper_facts("0/1") == {
        "gripper": "0/1", "gripper_meaning": "last action dimension: 0 = closed, 1 = open"}
    assert gripper_facts("unknown") == {"gripper": None, "gripper_meaning": "unknown"}
    assert gripper_facts("unknown", "dims 6 and 13")["gripper_meaning"] == "dims 6 and 13"


def test_segments_from_runs():
    segs = segments_from_runs([0, 0, 1, 1, 1, 0, None, None], {0: "pick", 1: "place"})
    assert [(s.start, s.end, s.instruction, s.task) for s in segs] == \
        [(0, 1, "pick", "pick"), (2, 4, "place", "place"), (5, 5, "pick", "pick")]
    assert segments_from_runs([]) == []
    assert [(s.start, s.end) for s in segments_from_runs(["a"] * 3, task="t")] == [(0, 2)]


def _asymmetric() -> np.ndarray:
    img = np.zeros((16, 24, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 210, 100, 20
    return img


def test_decode_image_channel_order():
    img = _asymmetric()
    jpeg_rgb = simplejpeg.encode_jpeg(img, quality=95, colorspace="RGB")
    out = decode_image(jpeg_rgb, "jpeg", "rgb")
    assert np.abs(out.astype(int) - img).max() <= 3
    swapped = decode_image(jpeg_rgb, "jpeg", "bgr")
    assert np.abs(swapped.astype(int) - img[..., ::-1]).max() <= 3
    # zero padding after the end marker (ALOHA's padded buffers) is ignored
    padded = np.frombuffer(jpeg_rgb + bytes(50), np.uint8)
    np.testing.assert_array_equal(decode_image(padded, "jpeg", "rgb"), out)
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    np.testing.assert_array_equal(decode_image(b.getvalue(), "png"), img)
    np.testing.assert_array_equal(decode_image(b.getvalue(), "png", "bgr"), img[..., ::-1])
    assert image_format(jpeg_rgb) == "jpeg" and image_format(b.getvalue()) == "png"
    assert image_format(b"GIF89a") is None
