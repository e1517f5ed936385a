"""Events as journal records: BSON payloads carrying a stable `_id`.

The `_id` is a 12-byte ObjectId built from the event's receive time (4 bytes, seconds), a hash of
the node id (3 bytes) and the journal offset (5 bytes). It is written into the record, so it is the
same every time the record is read or replayed, and MongoDB inserts of a replay are idempotent.

A BSON event that arrived already in its final form (`FrameEvent`) is not re-encoded: the
sender's bytes are journaled with the assigned fields spliced around them. Decoding such a record
gives exactly the document that was validated (BSON decoding keeps the last of repeated keys, the
same rule by which it was validated). A batch received together (`encode_batch`) has its
senders' fields encoded in one encoder call and is spliced the same way. Every path gives the
bytes `encode_event` gives for the whole event.
"""
import datetime
import functools
import json
import operator
import struct
import zlib

import bson
import orjson

from .. import native
from bson import Int64, ObjectId
from bson.codec_options import CodecOptions
from bson.datetime_ms import _datetime_to_millis

UTC = datetime.timezone.utc
DECODE_OPTIONS = CodecOptions(tz_aware=True, tzinfo=UTC)


def event_id(timestamp, node, offset):
    return ObjectId(_id_prefix(timestamp, node) + (offset & 0xFFFFFFFFFF).to_bytes(5, "big"))


def _id_prefix(timestamp, node):
    """Seconds and node hash: the id's first 7 bytes."""
    return (int(timestamp.timestamp()) & 0xFFFFFFFF).to_bytes(4, "big") + _node_hash(node)


@functools.lru_cache(maxsize=64)
def _node_hash(node):
    return (zlib.crc32(node.encode("utf-8")) & 0xFFFFFF).to_bytes(3, "big")


class FrameEvent:
    """A validated event as the BSON frame it was decoded from, holding no fields but the
    sender's (no _id, timestamp, source, node; no nulls; no $command), and what the appliance
    assigns it besides its id."""

    __slots__ = ("frame", "timestamp", "source", "node")

    def __init__(self, frame, timestamp, source, node):
        self.frame = frame
        self.timestamp = timestamp
        self.source = source
        self.node = node


class FrameBurst:
    """Frames received together, each one valid as it is (a FrameEvent's frame), sharing what
    they are assigned: a ZeroMQ burst held as one object instead of one FrameEvent per frame,
    journaled by one splice call. Slices are bursts too (a journal with no room for a whole burst
    takes it in parts)."""

    __slots__ = ("frames", "timestamp", "source", "node")

    def __init__(self, frames, timestamp, source, node):
        self.frames = frames
        self.timestamp = timestamp
        self.source = source
        self.node = node

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FrameBurst(self.frames[index], self.timestamp, self.source, self.node)
        return FrameEvent(self.frames[index], self.timestamp, self.source, self.node)


def encode_event(item, offset):
    """The journal `encode` hook: set the event's `_id` from its offset and return BSON."""
    if type(item) is FrameEvent:
        return _spliced(memoryview(item.frame), 0, offset, _assigned(item.timestamp, item.source, item.node))
    item["_id"] = event_id(item["timestamp"], item["node"], offset)
    return _encode(item, False, _ENCODE_OPTIONS)


def encode_events(items, offset):
    """The journal `encode_all` hook for a list of events (dicts and FrameEvents), or a
    FrameBurst: each one's encode_event payload."""
    if type(items) is FrameBurst:
        return splice_all(items.frames, offset, _assigned(items.timestamp, items.source, items.node))
    first = items[0] if items else None
    if type(first) is FrameEvent and all(
            type(item) is FrameEvent and item.timestamp is first.timestamp and item.source == first.source
            and item.node == first.node for item in items):
        # A ZeroMQ burst: frames that share all they are assigned, spliced in one call.
        return splice_all([item.frame for item in items], offset,
                          _assigned(first.timestamp, first.source, first.node))
    payloads = []
    assigned = timestamp = source = node = None
    for offset, item in enumerate(items, offset):
        if type(item) is FrameEvent:
            if item.timestamp is not timestamp or (item.source, item.node) != (source, node):
                timestamp, source, node = item.timestamp, item.source, item.node
                assigned = _assigned(timestamp, source, node)
            payloads.append(_spliced(memoryview(item.frame), 0, offset, assigned))
        else:
            payloads.append(encode_event(item, offset))
    return payloads


def _splice_all(docs, offset, assigned):
    """`_spliced` of each whole document in `docs` at `offset`, `offset + 1`, ...: the payloads."""
    return [_spliced(memoryview(doc), 0, offset + i, assigned) for i, doc in enumerate(docs)]


def _spliced(doc, start, offset, assigned):
    """The payload made of the sender's BSON document at `doc[start:]` (a memoryview) with the
    assigned fields spliced around its elements: `_id` and `timestamp` first, as the encoder
    puts them, `source` and `node` last. `assigned`: `_assigned(...)` of the event."""
    head, stamp, tail, extra = assigned
    end = start + _INT32.unpack_from(doc, start)[0]
    return b"".join((_INT32.pack(end - start + extra), head, (offset & 0xFFFFFFFFFF).to_bytes(5, "big"), stamp,
                     doc[start + 4:end - 1], tail))


@functools.lru_cache(maxsize=256)
def _assigned(timestamp, source, node):
    """The assigned fields' bytes for _spliced, and what they add to a document's size."""
    head = b"\x07_id\x00" + _id_prefix(timestamp, node)  # the id's offset bytes follow
    stamp = _timestamp_element(timestamp)
    tail = _assigned_strings(source, node)  # ends with the document's NUL
    return head, stamp, tail, len(head) + 5 + len(stamp) + len(tail) - 1


def _timestamp_element(timestamp):
    return b"\x09timestamp\x00" + _INT64.pack(_millis(timestamp))


def _millis(timestamp):
    """Milliseconds since the epoch, as BSON stores a datetime (bson's own conversion costs ten
    times as much, and a single-event request pays it on every request)."""
    if timestamp.tzinfo is None:
        return _datetime_to_millis(timestamp)
    return (timestamp - _EPOCH) // _ONE_MS


@functools.lru_cache(maxsize=64)
def _assigned_strings(source, node):
    """The `source` and `node` elements and the document's terminating NUL."""
    def element(name, value):
        data = value.encode("utf-8")
        return b"\x02" + name + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"
    return element(b"source", source) + element(b"node", node) + b"\x00"


# pymongo's (C) encoder without bson.encode's Python wrapper, a fifth of the cost of a small event.
_encode = bson._dict_to_bson
_ENCODE_OPTIONS = bson.DEFAULT_CODEC_OPTIONS
_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = datetime.timedelta(milliseconds=1)


def encode_batch(fields, timestamp, source, node, offset):
    """Payloads for events received together (one `timestamp`, `source` and `node`), given as
    their sender fields (`event.sender_fields`) and stored at `offset`, `offset + 1`, ...: the
    same bytes as `encode_event` of each whole event.

    One encoder call takes all the sender fields (its fixed cost per call is as much as encoding
    a small event), and the assigned fields are spliced around each one's bytes as for a
    FrameEvent (encoding a datetime costs more than all the sender's fields together).
    """
    assigned = _assigned(timestamp, source, node)
    if _native_encode is not None:
        payloads = _native_encode(fields, offset, *assigned)
        if payloads is not None:
            return payloads
    return _encode_batch(fields, offset, assigned)


def splice_frames(frames, timestamp, source, node, offset, added=b""):
    """Payloads for events received together as BSON documents of their sender fields (what
    native.ndjson_frames writes), each followed by `added` (BSON elements: fields the request gave
    every event, none of which a document has): encode_batch's bytes for the dicts they encode
    with those fields added."""
    head, stamp, tail, extra = _assigned(timestamp, source, node)
    return splice_all(frames, offset, (head, stamp, added + tail, extra + len(added)))


def with_elements(docs, elements):
    """Each BSON document of `docs` with the BSON `elements` after its own."""
    if not elements:
        return docs
    pack = _INT32.pack
    return [b"".join((pack(len(doc) + len(elements)), doc[4:-1], elements, b"\0")) for doc in docs]


def encode_elements(fields):
    """The BSON elements of the dict `fields`, in order (a document's bytes between its size and its NUL)."""
    return _encode(fields, False, _ENCODE_OPTIONS)[4:-1]


def _encode_batch(fields, offset, assigned):
    """encode_batch in Python: the reference of the compiled encoder, and what decides whatever
    that one leaves to it."""
    buf = memoryview(_encode({"": fields}, False, _ENCODE_OPTIONS))
    # buf: int32 size, 0x04 (array) "" NUL, the array: int32 size, then one element per event:
    # 0x03 (document), its index as decimal digits, NUL, the document: int32 size, elements, NUL.
    unpack = _INT32.unpack_from
    payloads = []
    pos = 10
    digits, next_power = 1, 10
    for index in range(len(fields)):
        if index == next_power:
            digits += 1
            next_power *= 10
        start = pos + digits + 2
        payloads.append(_spliced(buf, start, offset + index, assigned))
        pos = start + unpack(buf, start)[0]
    return payloads


def event_ids(timestamp, node, offsets):
    """The ids (as hex text) of events received together at `timestamp` and stored at `offsets`
    (ascending)."""
    if not offsets:
        return []
    # One %-formatting of all of them: a tenth of the cost of formatting each one.
    numbers = tuple(offset & 0xFFFFFFFFFF for offset in offsets) if offsets[-1] > 0xFFFFFFFFFF else tuple(offsets)
    return (",".join([_id_prefix(timestamp, node).hex() + "%010x"] * len(numbers)) % numbers).split(",")


def decode_event(payload):
    return bson.decode(payload, codec_options=DECODE_OPTIONS)


def decode_events(payloads):
    """`[decode_event(p) for p in payloads]` in one call of the decoder, whose fixed cost per
    call is an eighth of decoding a small event. Raises if any payload is not one BSON document
    (decode_event then tells which)."""
    # decode_all reads one document after another by their size fields: they are the payloads'
    # documents exactly when each payload's size field is its length.
    if b"".join(map(_SIZE_FIELD, payloads)) != struct.pack(f"<{len(payloads)}i", *map(len, payloads)):
        raise bson.InvalidBSON("a payload's size field is not its length")
    return bson.decode_all(b"".join(payloads), DECODE_OPTIONS)


_SIZE_FIELD = operator.itemgetter(slice(0, 4))


def decode_records(records, skipped=None):
    """`[(offset, event)]` for the `(offset, payload)` records (a list) that hold an event: the one
    way every reader of the journal decodes what it read, or passes it over.

    An intact record that is not one BSON document (written by something other than zspark's
    ingest, or by a bug) is left out, and `skipped(offset, payload, error)` hears of it when
    given (`error`: the decoder's exception), so that each caller counts it and says so in its
    own place (a warning, a summary, a dead letter). All the payloads go to the
    decoder in one call when they all decode, else one at a time to tell which did not."""
    if not records:
        return []
    try:
        return list(zip([offset for offset, _ in records], decode_events([payload for _, payload in records])))
    except Exception:
        pass
    out = []
    for offset, payload in records:
        try:
            out.append((offset, decode_event(payload)))
        except Exception as e:  # bson raises more than InvalidBSON for garbage (ValueError, OverflowError...)
            if skipped is not None:
                skipped(offset, payload, e)
    return out


def to_json_value(value):
    """`json.dumps(default=...)` hook: ids as hex, times as ISO 8601, bytes as hex."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def event_to_json(event, **extra):
    if extra:
        event = {**event, **extra}
    return json.dumps(event, default=to_json_value, ensure_ascii=False, separators=(",", ":"))


def event_json_bytes(event):
    """`event_to_json(event).encode("utf-8")`, written by orjson (a quarter of the instructions)
    whenever orjson writes exactly those bytes, else by json.

    They agree on strings (the same escapes), integers, booleans, null, nesting, key order,
    datetimes without a time zone or in UTC (decoded events hold these) and, through the same
    `default` hook, ObjectIds and bytes. They differ on floats below 1e-4 (json writes 1e-05 and
    1e-07, orjson 0.00001 and 1e-7) and not finite (orjson writes null), and possibly on types
    orjson writes natively and json through the hook (UUID, Enum, date, subclasses): any event
    holding one of those goes to json, as does any that orjson refuses (keys that are not
    strings, nesting deeper than 254, lone surrogates, integers beyond 64 bits).
    """
    if type(event) is dict:
        try:
            data = orjson.dumps(event, default=to_json_value, option=orjson.OPT_UTC_Z)
        except orjson.JSONEncodeError:
            data = None
        if data is not None and _orjson_same(event):
            return data
    return event_to_json(event).encode("utf-8")


_ORJSON_SAME = frozenset((str, int, bool, type(None), Int64, ObjectId, bytes))
_INF = float("inf")


def _orjson_same(value):
    """True if everything in `value` (a dict or list) orjson writes as json does. (orjson has
    refused anything nested deeper than 254 levels before this walks it.)"""
    for v in value.values() if type(value) is dict else value:
        t = type(v)
        if t in _ORJSON_SAME:
            continue
        if t is dict or t is list:
            if not _orjson_same(v):
                return False
        elif t is float:
            if not (_FLOATS_AGREE and (1e-4 <= abs(v) < _INF or v == 0)):
                return False
        elif t is not datetime.datetime or (v.tzinfo is not None and v.tzinfo is not UTC):
            return False
    return True


# Floats from 1e-4 up agree in the orjson this was written against (tests/hostile/test_event_json
# compares random doubles and every decade); an orjson that writes any of these otherwise gets no
# float at all.
_FLOATS_AGREE = all(orjson.dumps(x) == json.dumps(x).encode() for x in [
    0.0, -0.0, 1e-4, 0.30000000000000004, 1e15, 1e16, 1e21, 1.7976931348623157e308] + [
    -1.2345678901234567 * 10.0**e for e in range(-4, 308)])


def _compiled_splice_all(docs, offset, assigned):
    return _native_splice(docs, offset, *assigned)


_native_splice = native.compiled("splice", None)
_native_encode = native.compiled("encode_spliced", None)
splice_all = _compiled_splice_all if _native_splice is not None else _splice_all
