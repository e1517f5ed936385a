"""What the compiled hot paths (zspark/_native.c) are held to: the pure-Python path's verdict on
the same input, and the check the property tests (test_native.py) and the fuzzer
(tests/fuzz/fuzz_native.py) both apply.

plain_bson_frames may say "valid as it is" (the frame's string fields) or "let Python decide"
(None) for any frame. It must never say the first of a frame the Python path would reject,
convert or read differently, and its fields must be the ones Python reads.

json_fields may likewise leave any payload to Python (None); whatever tuple it gives must be
json_fields_reference's, which exists only for a payload that decode_event decodes. So may
ndjson_frames leave any body to Python; whatever documents it gives must be those of the dicts
the HTTP source decodes from the body's lines, journaled as the same bytes.
"""
import datetime

import bson

from zspark import _native
from zspark.event import STRING_FIELDS, InvalidEvent, sender_fields
from zspark.journal import codec, record
from zspark.sources.httperrors import HttpError
from zspark.sources.httpingest import _parse_ndjson
from zspark.sources.zmq import SPLICEABLE_FIELDS, decode_bson

REJECTED = "rejected"  # the Python path refuses the frame
CONVERTED = "converted"  # it accepts the frame, but not exactly as sent (or not as a frame event)


def python_verdict(frame, limits):
    """The pure-Python path's reading of one BSON frame (sources/zmq.py _normalize): the
    frame's string fields when it journals the frame as it came, else REJECTED or CONVERTED."""
    try:
        doc = decode_bson(frame)
    except Exception:
        return REJECTED
    if not isinstance(doc, dict) or "$command" in doc:
        return CONVERTED
    if not doc.keys() <= SPLICEABLE_FIELDS or None in doc.values():
        return CONVERTED
    try:
        fields = sender_fields(doc, limits)
    except InvalidEvent:
        return REJECTED
    if fields != doc or "ip" in doc or "cookies" in doc:
        return CONVERTED
    return {k: v for k, v in doc.items() if k in STRING_FIELDS}


def native_verdict(frame, limits):
    """The compiled verdict on one frame: its fields or None; the verdict alone (without the
    fields) must be the same."""
    args = ([frame], limits.max_string_bytes, limits.max_depth, limits.max_fields)
    fields = _native.plain_bson_frames(*args)[0]
    alone = _native.plain_bson_frames(*args, False)[0]
    assert alone is (None if fields is None else True), f"verdict alone {alone!r}, with fields {fields!r}"
    return fields


def check_plain_frame(frame, limits):
    """Fail (AssertionError) if the compiled check says a frame is plain that the Python path does
    not journal exactly as sent with those fields; return both verdicts."""
    native = native_verdict(frame, limits)
    python = python_verdict(frame, limits)
    if native is not None:
        assert isinstance(python, dict), f"compiled: plain {native!r}; Python: {python} ({frame!r})"
        assert list(native.items()) == list(python.items()), f"fields {native!r} != {python!r} ({frame!r})"
    return native, python


def document(elements):
    """A BSON document of raw elements (bytes of type, key, value), repeated keys allowed."""
    body = b"".join(elements)
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def element(key, value):
    """The raw BSON element `key: value`."""
    return bson.encode({key: value})[4:-1]


def check_plain_events(raws, limits):
    """Fail if the compiled check calls an event plain that sender_fields does not return as it
    is; return the compiled flags."""
    flags = _native.plain_events(raws, limits.max_string_bytes, limits.max_depth, limits.max_fields)
    assert len(flags) == len(raws)
    for raw, flag in zip(raws, flags):
        if flag:
            try:
                kept = sender_fields(raw, limits) is raw
            except InvalidEvent as e:
                raise AssertionError(f"compiled: plain; Python: {e} ({raw!r})") from None
            assert kept, f"compiled: plain; Python: converted ({raw!r})"
    return flags


def check_encode_batch(fields, offset, assigned):
    """Fail if the compiled encoder writes other bytes than the Python one; return its result
    (None where it leaves the batch to Python)."""
    payloads = _native.encode_spliced(fields, offset, *assigned)
    if payloads is not None:
        assert payloads == codec._encode_batch(fields, offset, assigned), f"encoded differently: {fields!r}"
    return payloads


def check_ndjson_frames(body, added, assigned):
    """Fail unless the compiled NDJSON writer, where it answers, gives for each line the BSON of
    the dict the HTTP source's own decoding gives (httpingest._parse_ndjson: orjson or json), of
    a line holding none of `added`'s names at its top level; and unless those documents, spliced
    with `added` (a dict of request fields) and the `assigned` fields, are the payloads the batch
    encoder writes of the dicts with `added` added. Return the compiled result."""
    frames = _native.ndjson_frames(body, tuple(name.encode() for name in added))
    if frames is None:
        return None
    try:
        body.decode("utf-8")
        values = _parse_ndjson(body)
    except (UnicodeDecodeError, HttpError) as e:
        raise AssertionError(f"compiled: {len(frames)} documents; Python: {e!r} ({body!r})") from None
    assert len(values) == len(frames), f"compiled: {len(frames)} lines; Python: {len(values)} ({body!r})"
    for value, frame in zip(values, frames):
        assert type(value) is dict and not set(value) & set(added), f"compiled took {value!r}"
        assert frame == bson.encode(value), f"written differently: {value!r} ({body!r})"
    offset = 2**40 - 1
    spliced = codec.splice_frames(frames, *assigned, offset, codec.encode_elements(added) if added else b"")
    assert spliced == codec._encode_batch([{**value, **added} for value in values], offset,
                                          codec._assigned(*assigned)), f"spliced differently: {body!r}"
    return frames


def check_parse_run(buf, pos, want, limit, max_records, max_bytes, position, next_note, spacing):
    """Fail unless the compiled reader of record runs gives what record._parse_run gives."""
    args = (buf, pos, want, limit, max_records, max_bytes, position, next_note, spacing)
    got = _native.parse_run(*args)
    assert got == record._parse_run(*args), f"parsed differently: {args!r}"
    return got


def check_parse_head(head):
    """Fail if the compiled head parser gives anything but the Head httpframing's Python parser
    gives (or gives one where Python refuses the head); return its Head, or None where it leaves
    the head to Python."""
    from zspark.sources.httpframing import FramingError, Head, _parse_head
    fields = _native.parse_head(head)
    if fields is None:
        return None
    try:
        expected = _parse_head(head)
    except FramingError as e:
        raise AssertionError(f"compiled: parsed; Python: {e.status} {e.reason} ({head!r})") from None
    got = Head(*fields)
    assert got == expected, f"parsed differently: {got!r} != {expected!r} ({head!r})"
    assert type(got.content_length) is type(expected.content_length) and type(got.persistent) is bool, \
        f"types differ: {got!r} ({head!r})"
    return got


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_ONE_MS = datetime.timedelta(milliseconds=1)


def json_fields_reference(payload, names, times_before=8):
    """What json_fields must give for one journal payload when it gives a tuple:
    (event_json_bytes(decode_event(payload)), v1, ..., vk), vj the top-level field names[j] as
    decoded (a str, a datetime as int milliseconds since the epoch if j < times_before, None
    where absent). None where there is no such tuple: the payload does not decode (or its JSON
    cannot be written), or a field named holds anything else."""
    try:
        event = codec.decode_event(payload)
    except Exception:  # bson raises more than InvalidBSON for garbage
        return None
    values = []
    for index, name in enumerate(names):
        if name not in event:
            values.append(None)
            continue
        value = event[name]
        if type(value) is str:
            values.append(value)
        elif type(value) is datetime.datetime and index < times_before:
            values.append((value - _EPOCH) // _ONE_MS)
        else:
            return None
    try:
        data = codec.event_json_bytes(event)
    except Exception:  # RecursionError, for one
        return None
    return (data, *values)


def check_json_fields(payloads, names, times_before=8):
    """Fail if json_fields gives a tuple for any payload that is not json_fields_reference's
    (values of the same types too); return its list."""
    got = _native.json_fields(payloads, names, times_before)
    assert type(got) is list and len(got) == len(payloads), f"{got!r} for {len(payloads)} payloads"
    for payload, result in zip(payloads, got):
        if result is None:
            continue
        expected = json_fields_reference(payload, names, times_before)
        assert expected is not None, f"compiled: {result!r}; Python: no tuple ({payload!r}, {names!r})"
        assert type(result) is tuple and result == expected, f"{result!r} != {expected!r} ({payload!r}, {names!r})"
        assert [type(v) for v in result] == [type(v) for v in expected], f"types differ: {result!r} ({payload!r})"
    return got
