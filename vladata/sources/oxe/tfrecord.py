"""TFRecord framing: reading and writing records, with CRC32C checks.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

where ``masked(crc) = ((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32`` and crc32c is the
Castagnoli CRC (``google_crc32c``, ~10 GB/s). TFDS writes its records uncompressed. A record's
position is a :class:`RecordRef` -- the byte offset of its length field and the length of its
data -- which is all :func:`read_record` needs to seek straight to it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, Iterator

import google_crc32c

from vladata.errors import SourceFormatError

HEADER = 12  # uint64 length + uint32 crc of it
FOOTER = 4   # uint32 crc of the data
_MASK_DELTA = 0xA282EAD8


class RecordError(SourceFormatError):
    """A record of a TFRecord shard is unreadable or does not match ``features.json``.

    The message names the shard file, the record index (0-based within the shard) and, where
    one is at fault, the feature key.
    """

    def __init__(self, message: str, *, file: object, record: int | None = None,
                 key: str | None = None, offset: int | None = None):
        where = str(file)
        if record is not None:
            where += f", record {record}"
        if offset is not None:
            where += f" (byte offset {offset})"
        super().__init__(message, file=where, key=key)
        self.file, self.record, self.offset = file, record, offset


class CorruptRecordError(RecordError):
    """A CRC does not match: the record's bytes are damaged."""


class CorruptLengthError(CorruptRecordError):
    """The CRC of a record's length field does not match: nothing after it can be framed."""


class TruncatedRecordError(RecordError):
    """The file ends inside a record."""


def masked_crc(data: bytes) -> int:
    """The masked CRC32C that TFRecord stores after the length and after the data."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class RecordRef:
    """Where a record lies: ``offset`` of its length field, ``length`` of its data."""

    index: int
    offset: int
    length: int


def frame(data: bytes) -> bytes:
    """``data`` framed as one TFRecord record."""
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc(n)) + data + struct.pack("<I", masked_crc(data))


def write_records(path: str | os.PathLike, records) -> None:
    """Write an iterable of serialized records (bytes) to a new TFRecord file."""
    with open(path, "wb") as f:
        for data in records:
            f.write(frame(bytes(data)))


def _length(head: bytes, path, index: int, offset: int, verify: bool) -> int:
    if len(head) < HEADER:
        raise TruncatedRecordError(f"file ends inside a record header ({len(head)} of {HEADER} "
                                   "bytes)", file=path, record=index, offset=offset)
    (length,) = struct.unpack_from("<Q", head, 0)
    if verify and struct.unpack_from("<I", head, 8)[0] != masked_crc(head[:8]):
        raise CorruptLengthError("CRC mismatch in the record's length field (the length cannot "
                                 "be trusted, so the rest of the shard is unreadable)",
                                 file=path, record=index, offset=offset)
    return length


def _check_data(data: bytes, footer: bytes, length: int, path, index: int, offset: int,
                verify: bool) -> None:
    if len(data) < length or len(footer) < FOOTER:
        raise TruncatedRecordError(f"file ends inside a record: {length} bytes of data and "
                                   f"{FOOTER} of CRC expected, {len(data)} and {len(footer)} "
                                   "present", file=path, record=index, offset=offset)
    if verify and struct.unpack("<I", footer)[0] != masked_crc(data):
        raise CorruptRecordError("CRC mismatch in the record's data", file=path, record=index,
                                 offset=offset)


def scan_records(path: str | os.PathLike, *, verify: bool = True,
                 on_error: Callable[[RecordError], None] | None = None
                 ) -> Iterator[tuple[RecordRef, bytes]]:
    """Every ``(RecordRef, data)`` of a TFRecord file, in order, CRCs checked if ``verify``.

    Raises :class:`TruncatedRecordError` where the file ends inside a record and
    :class:`CorruptRecordError` on a CRC mismatch -- unless ``on_error`` is given, which is then
    called with the error instead (the skip policy): a record whose data CRC fails is skipped
    and the scan goes on (its framing is intact); a bad length field or a truncated record ends
    the scan of this file.
    """
    def fail(err: RecordError) -> None:
        if on_error is None:
            raise err
        on_error(err)

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = index = 0
        while True:
            head = f.read(HEADER)
            if not head:
                return
            try:
                length = _length(head, path, index, offset, verify)
            except RecordError as e:
                fail(e)
                return
            if offset + HEADER + length + FOOTER > size:  # never allocate a bogus length
                fail(TruncatedRecordError(
                    f"file ends inside a record: {length} bytes of data and {FOOTER} of CRC "
                    f"expected, {size - offset - HEADER} bytes left", file=path, record=index,
                    offset=offset))
                return
            data, footer = f.read(length), f.read(FOOTER)
            try:
                _check_data(data, footer, length, path, index, offset, verify)
            except TruncatedRecordError as e:
                fail(e)
                return
            except CorruptRecordError as e:
                fail(e)
            else:
                yield RecordRef(index, offset, length), data
            offset += HEADER + length + FOOTER
            index += 1


def read_record(fd: int, ref: RecordRef, path: object, *, verify: bool = True) -> bytes:
    """The data of the record at ``ref`` in the open file descriptor ``fd`` (``pread``)."""
    length = _length(os.pread(fd, HEADER, ref.offset), path, ref.index, ref.offset, verify)
    if length != ref.length:
        raise CorruptRecordError(f"record length changed since the scan ({ref.length} -> "
                                 f"{length} bytes): was the file modified?", file=path,
                                 record=ref.index, offset=ref.offset)
    data = os.pread(fd, length, ref.offset + HEADER)
    footer = os.pread(fd, FOOTER, ref.offset + HEADER + length)
    _check_data(data, footer, length, path, ref.index, ref.offset, verify)
    return data
