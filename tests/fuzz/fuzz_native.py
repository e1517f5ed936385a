"""Coverage-guided fuzzing (atheris) of every compiled entry point that network bytes reach,
against the pure-Python reference (tests/native_reference.py).

    .venv/bin/python -m tests.fuzz.fuzz_native -max_total_time=60 [corpus_dir ...]

The input's fourth byte chooses the entry point: a ZeroMQ BSON frame for plain_bson_frames, bytes
to splice and frame as journal records, an HTTP body's JSON for plain_events and the batch
encoder (the first three bytes choose the limits), an HTTP request head for parse_head, or a
journal payload for json_fields (the first three bytes choose the names and the journaled event
the input is also written into), or an NDJSON body for ndjson_frames (the first byte chooses the
request's fields). Without a corpus directory it starts from a few events' frames,
heads and journal payloads (in a temporary one). A failure prints the
input and leaves it in crash-<hash>; `python -m tests.fuzz.fuzz_native crash-<hash>` replays it.
"""
import atexit
import datetime
import json
import os
import shutil
import sys
import tempfile

import atheris
import bson

with atheris.instrument_imports():
    from zspark import _native
    from zspark.event import Limits
    from zspark.journal import codec, record
    # httpframing here, not only where native_reference imports it: atheris instruments what is
    # imported in this block, and the Python parser is the only coverage the head entry has (the
    # C code is not instrumented).
    from zspark.sources import fastjson, httpframing
    from tests.native_reference import (check_encode_batch, check_json_fields, check_ndjson_frames, check_parse_head,
                                        check_parse_run, check_plain_events, check_plain_frame,
                                        json_fields_reference)

SEED_EVENTS = [
    {"type": "page_view", "level": "info", "topic": "web", "context": {"user": "u1", "n": 1, "ok": True}},
    {"type": "t", "extra": [1.5, None, {"a": bson.ObjectId(b"012345678901")}], "env": "prod"},
    {"type": "t", "context": {"deep": {"er": {"still": [b"\x00\x01", bson.Int64(2**40)]}}}},
    {"type": "t", "ip": "10.0.0.1", "timestamp": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},
]

SEED_HEADS = [
    b"POST /log HTTP/1.1\r\nHost: h:8080\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n",
    b"GET /log?type=t HTTP/1.0\r\nConnection: keep-alive, x\r\ncontent-length:\t007 \r\n\r\n",
    b"POST /log HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
]


def limits_of(data):
    """Small limits mostly, so that inputs reach them; now and then the deepest config allows."""
    depth = data[1] % 8 if data[1] < 240 else 200 - (data[1] - 240)
    return Limits(max_string_bytes=1 + data[0] * 4, max_depth=depth, max_fields=1 + data[2] * 2)


ASSIGNED = codec._assigned(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), "zmq_bson", "node")


def check_journal_writing(data):
    """Splice the input's bytes as a document (a lying size field must be refused, never read
    past), then frame the input's pieces as records, find the index's marks in them and read
    them back in runs (also damaged, and the input itself as records)."""
    size = int.from_bytes(data[:4], "little", signed=True) if len(data) >= 4 else 0
    try:
        spliced = _native.splice([data], 12345, *ASSIGNED)
    except ValueError:
        assert not 5 <= size <= len(data), f"refused a document that fits: {data!r}"
    else:
        assert 5 <= size <= len(data), f"spliced a document that does not fit: {data!r}"
        assert spliced == codec._splice_all([data], 12345, ASSIGNED)
    pieces = [data[i:i + 1 + data[i] % 64] for i in range(0, len(data), 7)]
    records = _native.frame_all(2**40 - 3, pieces)
    assert records == record._frame_all(2**40 - 3, pieces)
    spacing = 1 + (data[0] if data else 0)
    assert _native.record_marks(records, 99, spacing) == record._marks(records, 99, spacing)
    # Read back as a reader reads a segment's bytes: the records, the input itself as if it were
    # a segment, and the records with the input written over their middle (damage in a run).
    middle = len(records) // 2
    knob = data[1] if len(data) > 1 else 0
    for buf in (records, data, records[:middle] + data + records[middle + len(data):]):
        check_parse_run(buf, knob % 3, 2**40 - 3 + knob % 4, 2**40 + knob, 1 + knob % 50, 1 + knob * 40,
                        99, knob % 2 * 64 - 1, spacing)


def check_json(data, limits):
    """The HTTP path: a body's JSON decoded as the source decodes it, then the plain check and
    the batch encoder."""
    try:
        value = fastjson.decode(data)
        if value is fastjson.NOT_DECODED:
            value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    raws = value if isinstance(value, list) else [value]
    check_plain_events(raws, limits)
    fields = [raw for raw in raws if isinstance(raw, dict)]
    try:
        codec._encode_batch(fields, 7, ASSIGNED)
    except Exception:
        assert _native.encode_spliced(fields, 7, *ASSIGNED) is None
    else:
        check_encode_batch(fields, 7, ASSIGNED)


NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
# Journal payloads as ingest writes them: frames spliced (FrameEvent), events normalized and encoded.
JOURNALED = (codec.encode_events([codec.FrameEvent(bson.encode(e), NOW, "zmq_bson", "nodé") for e in SEED_EVENTS[:3]],
                                 5)
             + [codec.encode_event({"timestamp": NOW, **SEED_EVENTS[3], "source": "http", "node": "n"}, 2**40 + 1)])
JSON_NAMES = [("timestamp", "source", "topic"), (), ("type", "context", "_id"), ("stimestamp", "node", "ip", "type"),
              ("timestamp",) * 8]


def check_payload(payload, choice):
    """The Kafka forwarder's first step: a journal payload as read from disk (the input as it is),
    and a journaled event with the input written over it from some byte on (its length kept), so
    that random input reaches past the size field and the first element. The Python reference
    reads each one, for the coverage of what it decodes."""
    names = JSON_NAMES[choice[0] % len(JSON_NAMES)]
    base = JOURNALED[choice[1] % len(JOURNALED)]
    at = choice[2] * len(base) // 256
    patched = base[:at] + payload[:len(base) - at] + base[at + len(payload):]
    for data in (payload, patched):
        json_fields_reference(data, names)
    check_json_fields([payload, patched], names, choice[1] % 3 if choice[0] & 128 else 8)


def one_input(data):
    if len(data) < 4:
        return
    entry = data[3] % 6
    if entry == 0:
        check_plain_frame(data[4:], limits_of(data))
    elif entry == 1:
        check_journal_writing(data[4:])
    elif entry == 2:
        check_json(data[4:], limits_of(data))
    elif entry == 3:
        check_head(data[4:])
    elif entry == 4:
        check_payload(data[4:], data[:3])
    else:
        check_ndjson_frames(data[4:], REQUEST_FIELDS[data[0] % len(REQUEST_FIELDS)], (NOW, "http", "nodé"))


REQUEST_FIELDS = [{}, {"ip": "10.0.0.1"}, {"ip": "::1", "referrer": "http://a/", "user_agent": "ua"}]


def check_head(data):
    """The HTTP path's first step: a request head as read off the socket (the compiled parser
    judges exactly those bytes), and the same bytes ended with the empty line, so that mutations
    reach the field lines' rules rather than the end's. Python parses each one even where the
    compiled parser declines it, for the coverage of the rule that refuses it."""
    for head in (data, data + b"\r\n\r\n"):
        if check_parse_head(head) is None:
            try:
                httpframing._parse_head(head)
            except httpframing.FramingError:
                pass


def main(argv):
    if not any(os.path.isdir(a) or os.path.isfile(a) for a in argv[1:] if not a.startswith("-")):
        corpus = tempfile.mkdtemp(prefix="zspark-fuzz-")
        atexit.register(shutil.rmtree, corpus, True)
        for i, event in enumerate(SEED_EVENTS):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(b"\xff\x20\xff" + bytes([i % 2]) + bson.encode(event))
            with open(os.path.join(corpus, f"seed{i}.json"), "wb") as f:
                f.write(b"\xff\x20\xff\x02" + json.dumps(event, default=str).encode())
        for i, head in enumerate(SEED_HEADS):
            with open(os.path.join(corpus, f"seed{i}.head"), "wb") as f:
                f.write(b"\0\0\0\x03" + head)
        with open(os.path.join(corpus, "seed.ndjson"), "wb") as f:
            f.write(b"\1\0\0\x05" + b"\n".join(json.dumps(e, default=str).encode() for e in SEED_EVENTS)
                    + b'\n {"type":"t","context":{"s":"a\\"\\u0041","f":-1.5e-3,"n":[-0,9223372036854775807]}}\r\n')
        for i, payload in enumerate(JOURNALED):
            with open(os.path.join(corpus, f"seed{i}.payload"), "wb") as f:
                f.write(bytes([i, i, 255, 4]) + payload)
        argv = argv + [corpus]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
