"""Record framing and segment naming: the journal's on-disk format.

A segment is a file named by the 20-digit offset of its first record (`00000000000000001234.log`),
holding records back to back. Each record is

    magic  b"ZJ"     2 bytes   finds the next record again after a damaged one
    length uint32    4 bytes   payload length
    offset uint64    8 bytes   the record's offset (its position in the whole journal)
    crc    uint32    4 bytes   zlib.crc32 over length, offset and payload
    payload          length bytes

all big-endian. `frame_all` writes records and `marks` says where the index notes them; `parse_run`
reads a run of intact records (the three compiled where native.py says so); `parse` reads one
record out of a buffer; `resync` finds the next intact one after damage. Nothing here does I/O.
"""
import os
import re
import struct
import zlib

from .. import native

MAGIC = b"ZJ"
HEADER = struct.Struct(">2sIQI")
HEADER_SIZE = HEADER.size
_LEN_OFFSET = struct.Struct(">IQ")
MAX_RECORD_BYTES = 256 * 1024**2  # a larger length field is damage, not a record

SEGMENT_SUFFIX = ".log"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log\Z")  # \Z: $ would take a final newline

INCOMPLETE = "incomplete"  # the buffer ends inside this record
CORRUPT = "corrupt"  # bad magic, impossible length or checksum mismatch


def frame(offset, payload):
    """Return the bytes of one record."""
    return frame_all(offset, [payload])


def _frame_all(offset, payloads):
    """The records for `payloads` (bytes) at `offset`, `offset + 1`, ..., joined."""
    chunks = []
    pack_header = HEADER.pack
    pack_len_offset = _LEN_OFFSET.pack
    crc32 = zlib.crc32
    for payload in payloads:
        length = len(payload)
        chunks.append(pack_header(MAGIC, length, offset, crc32(payload, crc32(pack_len_offset(length, offset)))))
        chunks.append(payload)
        offset += 1
    return b"".join(chunks)


def _marks(data, position, spacing):
    """Where the index notes the records of `data` (back to back, as frame_all joins them, at
    file position `position`): `(offset, position)` of the first one and of each starting
    `spacing` bytes or more after the last one given."""
    out = []
    at = 0
    due = position
    unpack = HEADER.unpack_from
    while len(data) - at >= HEADER_SIZE:
        _, length, offset, _ = unpack(data, at)
        if position + at >= due:
            out.append((offset, position + at))
            due = position + at + spacing
        at += HEADER_SIZE + length
    return out


def _parse_run(buf, pos, want, limit, max_records, max_bytes, position, next_note, spacing):
    """The intact records back to back from `buf[pos:]` (bytes), as a reader takes them: those
    with offsets from `want` up (an older one is passed over), stopping before the first record
    that is incomplete or damaged or whose offset is `limit` or more, or once `max_records`
    records or `max_bytes` bytes of payload are taken. `position` is the file position of
    `buf[0]`; where `next_note` >= 0 the index notes (offset, file position) of the first record
    at or after `next_note`, and of each `spacing` bytes or more after the last noted.

    Returns (records, pos, notes, next_note): records (offset, payload), the position after the
    last record parsed, the index's notes, and the next note's position. One call for a
    whole batch: the per-record loop is a third of a forwarder's cost in Python."""
    records, notes = [], []
    size = 0
    while len(records) < max_records and size < max_bytes:
        result = parse(buf, pos)
        if type(result) is not tuple or result[0] >= limit:
            break
        offset, start, end = result
        if 0 <= next_note <= position + pos:
            notes.append((offset, position + pos))
            next_note = position + pos + spacing
        if offset >= want:
            payload = buf[start:end]
            records.append((offset, payload))
            size += len(payload)
            want = offset + 1
        pos = end
    return records, pos, notes, next_note


frame_all = native.compiled("frame_all", _frame_all)
marks = native.compiled("record_marks", _marks)
parse_run = native.compiled("parse_run", _parse_run)


def parse(buf, pos):
    """Parse the record at `buf[pos:]`.

    Returns `(offset, payload_start, payload_end)` for an intact record, or INCOMPLETE, or
    CORRUPT. `buf` may be bytes or a memoryview.
    """
    if len(buf) - pos < HEADER_SIZE:
        return INCOMPLETE if bytes(buf[pos:pos + 2]) == MAGIC[:len(buf) - pos] else CORRUPT
    magic, length, offset, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return CORRUPT
    start = pos + HEADER_SIZE
    end = start + length
    if end > len(buf):
        return INCOMPLETE
    if zlib.crc32(buf[start:end], zlib.crc32(_LEN_OFFSET.pack(length, offset))) != crc:
        return CORRUPT
    return offset, start, end


def resync(buf, pos):
    """Find the next intact record strictly after `pos`; return its position or None."""
    find = buf.find if isinstance(buf, (bytes, bytearray)) else bytes(buf).find
    at = pos
    while True:
        at = find(MAGIC, at + 1)
        if at < 0:
            return None
        if isinstance(parse(buf, at), tuple):
            return at


def segment_name(base_offset):
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


def list_segments(directory):
    """The base offsets of the segments in `directory`, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, names) if m)
