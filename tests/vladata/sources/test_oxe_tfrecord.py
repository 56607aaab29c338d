"""TFRecord framing and tf.train.Example parsing: CRCs, truncation, skip policy, cross-checks."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from vladata.errors import SourceFormatError
from vladata.sources.oxe.example_proto import Example
from vladata.sources.oxe.tfrecord import (FOOTER, HEADER, CorruptLengthError, CorruptRecordError,
                                          RecordRef, TruncatedRecordError, frame, masked_crc,
                                          read_record, scan_records, write_records)

RECORDS = [b"first record", b"", bytes(range(256)) * 40, b"last"]


def _offsets(records):
    out, off = [], 0
    for r in records:
        out.append(off)
        off += HEADER + len(r) + FOOTER
    return out


@pytest.fixture
def shard(tmp_path):
    p = tmp_path / "x-train.tfrecord-00000-of-00001"
    write_records(p, RECORDS)
    return p


def test_crc32c_is_castagnoli_and_masked_as_tensorflow_does():
    # CRC-32C check value of "123456789" is 0xE3069283; TF masks it.
    crc = 0xE3069283
    assert masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    framed = frame(b"abc")
    assert struct.unpack("<Q", framed[:8])[0] == 3 and framed[12:15] == b"abc"
    assert len(framed) == HEADER + 3 + FOOTER


def test_scan_and_pread_round_trip(shard):
    got = list(scan_records(shard))
    assert [bytes(d) for _, d in got] == RECORDS
    assert [r.offset for r, _ in got] == _offsets(RECORDS)
    fd = os.open(shard, os.O_RDONLY)
    try:
        for ref, data in got:
            assert read_record(fd, ref, shard) == data
    finally:
        os.close(fd)


def _flip(path, pos):
    b = bytearray(path.read_bytes())
    b[pos] ^= 0x40
    path.write_bytes(bytes(b))


def test_data_crc_mismatch_names_file_and_record_and_skip_goes_on(shard):
    _flip(shard, _offsets(RECORDS)[2] + HEADER + 100)
    with pytest.raises(CorruptRecordError, match=r"x-train\.tfrecord-00000-of-00001, record 2 "
                                                 r".*CRC mismatch in the record's data"):
        list(scan_records(shard))
    errors = []
    got = [bytes(d) for _, d in scan_records(shard, on_error=errors.append)]
    assert got == [RECORDS[0], RECORDS[1], RECORDS[3]]
    assert len(errors) == 1 and errors[0].record == 2 and isinstance(errors[0], SourceFormatError)
    assert [bytes(d) for _, d in scan_records(shard, verify=False)][2] != RECORDS[2]


def test_length_crc_mismatch_ends_the_shard(shard):
    _flip(shard, _offsets(RECORDS)[1] + 9)  # inside the length's CRC
    with pytest.raises(CorruptLengthError, match="record 1 .*length field"):
        list(scan_records(shard))
    errors = []
    assert [bytes(d) for _, d in scan_records(shard, on_error=errors.append)] == RECORDS[:1]
    assert [type(e) for e in errors] == [CorruptLengthError]


@pytest.mark.parametrize("cut", [3, HEADER + 2, HEADER + 4 + FOOTER - 1])
def test_truncated_last_record(shard, cut):
    start = _offsets(RECORDS)[3]
    shard.write_bytes(shard.read_bytes()[:start + cut])
    with pytest.raises(TruncatedRecordError, match="record 3 .*file ends inside"):
        list(scan_records(shard))
    errors = []
    assert [bytes(d) for _, d in scan_records(shard, on_error=errors.append)] == RECORDS[:3]
    assert errors[0].record == 3


def test_a_bogus_length_is_reported_not_allocated(shard):
    b = bytearray(shard.read_bytes())
    b[0:8] = struct.pack("<Q", 1 << 60)
    shard.write_bytes(bytes(b))
    with pytest.raises(TruncatedRecordError, match="record 0"):
        list(scan_records(shard, verify=False))
    with pytest.raises(CorruptLengthError):
        list(scan_records(shard))


def test_pread_checks_crc_and_length(shard):
    refs = [r for r, _ in scan_records(shard)]
    _flip(shard, refs[2].offset + HEADER + 5)
    fd = os.open(shard, os.O_RDONLY)
    try:
        with pytest.raises(CorruptRecordError, match="record 2"):
            read_record(fd, refs[2], shard)
        with pytest.raises(CorruptRecordError, match="length changed"):
            read_record(fd, RecordRef(0, refs[0].offset, refs[0].length + 1), shard)
        assert read_record(fd, refs[3], shard) == RECORDS[3]
    finally:
        os.close(fd)


def test_example_wire_format_matches_the_tfrecord_package(tmp_path):
    """Our Example (private pool) and tfrecord's compiled example_pb2 read each other's bytes,
    and tfrecord's reader reads our framing."""
    tfrecord = pytest.importorskip("tfrecord")
    from tfrecord import example_pb2
    ours = Example()
    f = ours.features.feature
    f["steps/a"].float_list.value.extend([1.5, -2.25])
    f["steps/b"].int64_list.value.extend([1, -7, 1 << 40])
    f["steps/c"].bytes_list.value.extend([b"x", b"\xff\xd8yz"])
    theirs = example_pb2.Example.FromString(ours.SerializeToString())
    assert list(theirs.features.feature["steps/b"].int64_list.value) == [1, -7, 1 << 40]
    back = Example.FromString(theirs.SerializeToString())
    assert list(back.features.feature["steps/a"].float_list.value) == [1.5, -2.25]
    assert list(back.features.feature["steps/c"].bytes_list.value) == [b"x", b"\xff\xd8yz"]
    p = tmp_path / "t.tfrecord"
    write_records(p, [ours.SerializeToString()] * 2)
    got = list(tfrecord.tfrecord_loader(str(p), None))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0]["steps/b"], [1, -7, 1 << 40])
    # and their writer's framing is what we read, CRCs included
    w = tfrecord.TFRecordWriter(str(tmp_path / "u.tfrecord"))
    w.write({"k": (np.arange(5, dtype=np.float32), "float")})
    w.close()
    (ref, data), = scan_records(tmp_path / "u.tfrecord")
    assert list(Example.FromString(data).features.feature["k"].float_list.value) == [0, 1, 2, 3, 4]
