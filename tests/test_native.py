"""The compiled hot paths against their pure-Python reference (tests/native_reference.py), on
random, hostile and mutated input; and the switch between them (zspark/native.py)."""
import datetime
import json
import math
import os
import struct
import subprocess
import sys
import unittest

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from zspark import native
from zspark.errors import InvalidEvent
from zspark.event import Limits, normalize, sender_fields
from zspark.journal import codec, record
from zspark.journal.codec import FrameBurst, FrameEvent, decode_event
from zspark.sources.zmq import SPLICEABLE_FIELDS, decode_bson

from .native_reference import (check_encode_batch, check_json_fields, check_ndjson_frames, check_parse_head,
                               check_parse_run, check_plain_events,
                               check_plain_frame, document, element, json_fields_reference, native_verdict,
                               python_verdict)

SMALL = Limits(max_string_bytes=40, max_depth=3, max_fields=12)
DEFAULT = Limits()
limits = st.sampled_from([SMALL, DEFAULT, Limits(300, 1, 1), Limits(1, 32, 1000), Limits(256, 2, 3)])

# Text a sender might put anywhere: ASCII (the common case), and what the checks must catch.
texts = st.one_of(st.text(st.characters(max_codepoint=127), max_size=50),
                  st.text(max_size=20), st.sampled_from(["", "$x", "a\x00b", "é", "日本", "x" * 257]))
keys = st.one_of(texts, st.sampled_from(["$set", "a.b", "", "k" * 256, "k" * 257]))
scalars = st.one_of(
    texts, st.booleans(), st.none(), st.integers(-2**31, 2**31 - 1), st.integers(-2**63, 2**63 - 1).map(Int64),
    st.floats(allow_nan=True, allow_infinity=True), st.just(ObjectId()),
    st.binary(max_size=10), st.binary(max_size=10).map(lambda b: Binary(b, 4)),
    st.datetimes(timezones=st.just(datetime.timezone.utc)))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)), max_leaves=25)
TOP = ["type", "level", "topic", "env", "version", "referrer", "user_agent", "context", "extra",
       "ip", "cookies", "timestamp", "stimestamp", "$command", "_id", "source", "node", "user"]
events = st.dictionaries(st.sampled_from(TOP), values, max_size=8)

# Events the compiled check must recognise: plain ASCII names and values within the limits.
ascii_text = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=30)
plain_keys = ascii_text.filter(lambda k: not k.startswith("$"))
plain_scalars = st.one_of(ascii_text, st.booleans(), st.none(), st.integers(-2**63, 2**63 - 1),
                          st.floats(allow_nan=False, allow_infinity=False), st.just(ObjectId()), st.binary(max_size=8))
plain_values = st.recursive(plain_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(plain_keys, children, max_size=3)), max_leaves=10)
plain_events = st.fixed_dictionaries(
    {"type": ascii_text.filter(bool)},
    optional={"level": ascii_text, "topic": ascii_text, "env": ascii_text, "user_agent": ascii_text,
              "context": st.dictionaries(plain_keys, plain_values, max_size=4),
              "extra": plain_values.filter(lambda v: v is not None)})


# Values a plain event must not hold (each refused or converted by the Python path).
POISONS = ["a\x00b", "é", "x" * (64 * 1024 + 1), float("nan"), float("inf"), -float("inf"), 2**63, -2**63 - 1,
           {"$k": 1}, {"k\x00": 1}, {"é": 1}, {"k" * 257: 1}, datetime.datetime(2020, 1, 1), ("t",),
           {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {
               "p": {"q": {"r": {"s": {"t": {"u": {"v": {"w": {"x": {"y": {"z": {"A": {"B": {"C": {"D": {
                   "E": {"F": 1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}, list(range(1001))]
EDGE_INTEGERS = [2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1, -2**63, 0, -1]

def frame_of(event):
    try:
        return bson.encode(event)
    except Exception:
        assume(False)


class PlainBsonFramesTest(unittest.TestCase):
    @settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
    @given(events, limits)
    @example({"type": "a", "context": {"x": float("nan")}}, DEFAULT)
    @example({"type": "a", "context": {"$x": 1}}, DEFAULT)
    @example({"type": "a\x00"}, DEFAULT)
    @example({"type": ""}, DEFAULT)
    def test_never_plain_where_python_is_not(self, event, lim):
        check_plain_frame(frame_of(event), lim)

    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    @given(plain_events)
    def test_recognises_plain_events(self, event):
        """Not a check that only ever says 'let Python decide'."""
        frame = frame_of(event)
        native, python = check_plain_frame(frame, DEFAULT)
        self.assertIsInstance(python, dict)
        self.assertEqual(native, python)

    @settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
    @given(plain_events, limits, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
           st.integers(0, 10**6), st.integers(-3, 3))
    def test_mutated_frames(self, event, lim, flips, cut_at, size_delta):
        """Bytes flipped, frames cut short or with a size field that lies."""
        frame = bytearray(frame_of(event))
        for at, byte in flips:
            frame[at % len(frame)] = byte
        frame = frame[:max(1, cut_at % (len(frame) + 1))] if cut_at % 3 == 0 else frame
        if size_delta and len(frame) >= 4:
            frame[:4] = (int.from_bytes(frame[:4], "little", signed=True) + size_delta).to_bytes(4, "little", signed=True)
        check_plain_frame(bytes(frame), lim)

    @settings(max_examples=300)
    @given(st.lists(st.tuples(st.sampled_from(TOP[:9]), plain_values), min_size=1, max_size=6))
    def test_raw_elements_with_repeated_keys(self, pairs):
        frame = document([element(k, v) for k, v in pairs])
        check_plain_frame(frame, DEFAULT)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(plain_events, st.sampled_from(range(len(POISONS))), st.sampled_from(["context", "extra"]), st.booleans())
    def test_one_bad_value_anywhere(self, event, which, field, deep):
        poison = POISONS[which]
        assume(not isinstance(poison, tuple))  # BSON has no tuples: it would be an array
        value = {"p": poison}
        event = {**event, field: {"d": [value]} if deep else value}
        frame = frame_of(event)
        native, python = check_plain_frame(frame, DEFAULT)
        self.assertIsNone(native, event)

    def test_limits_at_their_edge(self):
        lim = Limits(max_string_bytes=10, max_depth=2, max_fields=4)
        cases = {
            "string at max_string_bytes": ({"type": "t", "context": {"a": "x" * 10}}, True),
            "string over it": ({"type": "t", "context": {"a": "x" * 11}}, False),
            "type at min(256, max_string_bytes)": ({"type": "x" * 10}, True),
            "type over it": ({"type": "x" * 11}, False),
            "nested at max_depth": ({"type": "t", "context": {"a": {"b": 1}}}, True),
            "nested deeper": ({"type": "t", "context": {"a": {"b": {"c": 1}}}}, False),
            "max_fields values, root included": ({"type": "t", "context": {"a": 1, "b": 2, "c": 3}}, True),
            "one more": ({"type": "t", "context": {"a": 1, "b": 2, "c": 3, "d": 4}}, False),
        }
        for name, (event, plain) in cases.items():
            with self.subTest(name):
                frame = bson.encode(event)
                native, python = check_plain_frame(frame, lim)
                self.assertEqual(native is not None, plain)
                self.assertEqual(isinstance(python, dict), plain or name in ("type over it",))

    def test_python_decides_what_it_must_word(self):
        for event in [{"type": "t", "ip": "127.0.0.1"}, {"type": "t", "timestamp": 5}, {"type": "t", "$command": "event"},
                      {"type": "t", "cookies": {"a": "b"}}, {"type": "t", "user": "u"}, {"type": "é"},
                      {"type": "t", "context": {"d": datetime.datetime(2020, 1, 1)}}, {"type": "t", "extra": None}]:
            with self.subTest(event=event):
                self.assertIsNone(native_verdict(bson.encode(event), DEFAULT))

    def test_deep_nesting_is_left_to_python(self):
        """Past DEPTH_CAP (200, event.max_depth's maximum) the compiled check says nothing, even
        where the limits would allow more; Python decides (and, for a document too deep to
        decode at all, rejects it)."""
        lim = Limits(max_depth=10**6, max_fields=10**6)
        for depth, plain in ((199, True), (201, False), (950, False)):
            with self.subTest(depth=depth):
                value = 1
                for _ in range(depth):  # context is `depth` documents deep
                    value = {"a": value}
                frame = bson.encode({"type": "t", "context": value})
                self.assertEqual(native_verdict(frame, lim) is not None, plain)
                self.assertEqual(list(native._native.plain_events([{"type": "t", "context": value}], 10**6, 10**6, 10**6)),
                                 [int(plain)])

    def test_limits_beyond_a_c_long_mean_unlimited(self):
        """As the callers pass them (native.py), also where ZSPARK_PURE turns the callers off."""
        huge = native._c_limits(Limits(max_string_bytes=2**70, max_depth=2**70, max_fields=2**70))
        frame = bson.encode({"type": "t", "context": {"a": "b"}})
        self.assertEqual(native._native.plain_bson_frames([frame], *huge), [{"type": "t"}])
        self.assertEqual(list(native._native.plain_events([{"type": "t"}], *huge)), [1])

    def test_every_frame_of_a_burst_answered_in_order(self):
        frames = [bson.encode({"type": "a"}), b"\x05\x00\x00\x00\x00", bson.encode({"type": "b", "topic": "t"})]
        got = native._native.plain_bson_frames(frames, 1000, 32, 1000)
        self.assertEqual(got, [{"type": "a"}, None, {"type": "b", "topic": "t"}])
        self.assertEqual(native._native.plain_bson_frames(frames, 1000, 32, 1000, False), [True, None, True])
        self.assertEqual(python_verdict(frames[1], DEFAULT), "rejected")


offsets = st.one_of(st.integers(0, 2**20), st.integers(2**40 - 5, 2**40 + 5), st.integers(2**64 - 1000, 2**64 - 1))

# What JSON decodes to, and a few things it never does (they must be left to Python).
json_scalars = st.one_of(texts, st.booleans(), st.none(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)), max_leaves=25)
json_events = st.dictionaries(st.sampled_from(TOP), json_values, max_size=8)
odd_values = st.one_of(st.just(datetime.datetime(2020, 1, 1)), st.just(ObjectId()), st.binary(max_size=4),
                       st.just(Int64(5)), st.just(("a", "tuple")), st.just(b"\x00"))
plain_json_scalars = st.one_of(ascii_text, st.booleans(), st.none(), st.integers(-2**63, 2**63 - 1),
                               st.floats(allow_nan=False, allow_infinity=False))
plain_json_values = st.recursive(plain_json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(plain_keys, children, max_size=3)), max_leaves=10)
plain_json_events = st.fixed_dictionaries(
    {"type": ascii_text.filter(bool)},
    optional={"level": ascii_text, "env": ascii_text, "referrer": ascii_text,
              "context": st.dictionaries(plain_keys, plain_json_values, max_size=4),
              "extra": plain_json_values.filter(lambda v: v is not None)})
NOW = datetime.datetime(2026, 12, 2, 13, 0, 1, 123456, tzinfo=datetime.timezone.utc)


class DecodedJsonTest(unittest.TestCase):
    """The HTTP path's batches: the plain check and the encoder on decoded JSON."""

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(json_events, max_size=5), limits)
    def test_never_plain_where_python_is_not(self, raws, lim):
        check_plain_events(raws, lim)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(plain_json_events, min_size=1, max_size=5))
    def test_recognises_plain_events(self, raws):
        self.assertEqual(list(check_plain_events(raws, DEFAULT)), [1] * len(raws))

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.dictionaries(keys, st.one_of(json_values, odd_values), max_size=6), max_size=5), offsets)
    def test_encoder_writes_what_python_writes(self, fields, offset):
        assume(offset + len(fields) < 2**64)
        try:
            codec._encode_batch(fields, offset, codec._assigned(NOW, "http", "node"))
        except Exception:  # what Python cannot encode, the compiled encoder must leave to it
            self.assertIsNone(native._native.encode_spliced(fields, offset, *codec._assigned(NOW, "http", "node")))
            return
        check_encode_batch(fields, offset, codec._assigned(NOW, "http", "node"))

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(plain_json_events, min_size=1, max_size=5), offsets)
    def test_encoder_encodes_json(self, fields, offset):
        assume(offset + len(fields) < 2**64)
        self.assertIsNotNone(check_encode_batch(fields, offset, codec._assigned(NOW, "http", "n")))

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(plain_json_events, st.sampled_from(POISONS), st.sampled_from(["context", "extra"]), st.booleans())
    def test_one_bad_value_anywhere(self, event, poison, field, deep):
        """A plain event with one value the Python path refuses or converts, at the top of
        context or extra or nested inside: never plain."""
        value = {"p": poison}
        event = {**event, field: {"d": [value]} if deep else value}
        flags = check_plain_events([event], DEFAULT)
        self.assertEqual(list(flags), [0], event)

    @settings(max_examples=200)
    @given(st.sampled_from(EDGE_INTEGERS), st.booleans())
    def test_encoder_integer_edges(self, n, negative_zero):
        fields = [{"type": "t", "context": {"n": n, "f": -0.0 if negative_zero else 0.0}}]
        self.assertIsNotNone(check_encode_batch(fields, 1, codec._assigned(NOW, "http", "n")))

    def test_left_to_python(self):
        assigned = codec._assigned(NOW, "http", "n")
        for fields in [[{"a": datetime.datetime(2020, 1, 1)}], [{"a\x00": 1}], [{"a": 2**64}], [{1: 2}],
                       [{"a": "\ud800"}], ["not a dict"], [{"a": Int64(1)}], [{"a": [{"b": ObjectId()}]}]]:
            with self.subTest(fields=fields):
                self.assertIsNone(native._native.encode_spliced(fields, 0, *assigned))



def ndjson_line(draw, event):
    """`event` as one NDJSON line, written as a sender might: compact or spaced, escaped or not."""
    text = json.dumps(event, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r ")])))
    return draw(st.sampled_from(["", " ", "\t\r "])) + text + draw(st.sampled_from(["", " \r", "\t"]))


@st.composite
def ndjson_bodies(draw, events):
    lines = [ndjson_line(draw, event) for event in draw(st.lists(events, min_size=1, max_size=6))]
    blank = draw(st.sampled_from(["\n", "\n\n", "\n \r\n"]))
    return (blank.join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()


REQUEST_FIELDS = st.sampled_from([{}, {"ip": "10.1.2.3"}, {"ip": "::1", "referrer": "http://a/", "user_agent": "ua/1"}])
ASSIGNED_NOW = (NOW, "http", "nodé")


class NdjsonFramesTest(unittest.TestCase):
    """NDJSON bodies straight to BSON: the documents of the dicts the HTTP source decodes, and
    the same journal payloads."""

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(ndjson_bodies(st.one_of(json_events, st.dictionaries(keys, json_values, max_size=5), json_values)),
           REQUEST_FIELDS)
    def test_writes_what_python_decodes(self, body, added):
        check_ndjson_frames(body, added, ASSIGNED_NOW)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(ndjson_bodies(plain_json_events), REQUEST_FIELDS)
    def test_writes_plain_events(self, body, added):
        assume(b'"referrer"' not in body or "referrer" not in added)
        self.assertIsNotNone(check_ndjson_frames(body, added, ASSIGNED_NOW), body)

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(ndjson_bodies(plain_json_events), st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)),
                                                      min_size=1, max_size=4), REQUEST_FIELDS)
    def test_mutated_bodies(self, body, flips, added):
        data = bytearray(body)
        for at, byte in flips:
            data[at % len(data)] = byte
        check_ndjson_frames(bytes(data), added, ASSIGNED_NOW)

    def test_left_to_python(self):
        for body in [b'{"a":1,"a":2}', b'{"c":{"a":1,"a":1}}', b'{"ip":"x"}', b'{"_id":1}', b'[{"a":1}]', b'"a"',
                     '{"a":"é"}'.encode(), b'{"a":"\\u00e9"}', b'{"a":"\\u0000"}', b'{"a\\u0000":1}',
                     b'{"a":1e400}', b'{"a":-1e400}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}',
                     b'{"a":9223372036854775808}', b'{"a":-9223372036854775809}', b'{"a":12345678901234567890}',
                     b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b'{"a":+1}',
                     b'{"a":"x\ty"}', b'{"a":1}x', b'{"a":1} {"b":2}', b'{"a":1,}', b'{,}', b'{"a" 1}', b'{"a":tru}',
                     b'', b'\n \r\n\t', b'{"a":1}\n{"b"', "\ufeff{}".encode(), b'{"a":"\\ud83d\\ude00"}',
                     b'{"k":' * 65 + b'1' + b'}' * 65, ("{" + ",".join(f'"k{i}":1' for i in range(65)) + "}").encode()]:
            with self.subTest(body=body):
                self.assertIsNone(native._native.ndjson_frames(body, (b"ip",)))

    def test_edges_it_writes(self):
        body = (b'{"type":"t","n":[0,-0,2147483647,2147483648,-2147483648,-2147483649,999999999999999999,'
                b'-999999999999999999,9223372036854775807,-9223372036854775808],'
                b'"f":[0.0,-0.0,1E5,1e-400,2.5e+3,0.1,5e-324],"s":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0001\\u007F",'
                b'"e":{},"l":[],"d":' + b'{"k":' * 62 + b'[]' + b'}' * 62 + b'}\n{"type":"u"}')
        frames = check_ndjson_frames(body, {"ip": "1.2.3.4"}, ASSIGNED_NOW)
        self.assertEqual(len(frames), 2)


class JournalWritingTest(unittest.TestCase):
    """Splicing the assigned fields and framing records: the compiled code writes the bytes the
    Python code writes."""

    @settings(max_examples=300)
    @given(st.lists(plain_events, max_size=6), offsets,
           st.datetimes(min_value=datetime.datetime(1970, 1, 2), timezones=st.just(datetime.timezone.utc)),
           st.sampled_from(["zmq_bson", "http", "é"]), st.text(min_size=1, max_size=20))
    def test_splice(self, events, offset, timestamp, source, node):
        assume(offset + len(events) < 2**64)
        docs = [bson.encode(e) for e in events]
        assigned = codec._assigned(timestamp, source, node)
        self.assertEqual(native._native.splice(docs, offset, *assigned), codec._splice_all(docs, offset, assigned))

    def test_splice_refuses_a_size_field_that_does_not_fit(self):
        assigned = codec._assigned(datetime.datetime.now(datetime.timezone.utc), "s", "n")
        for doc in [b"", b"\x04\x00\x00\x00", b"\xff\x00\x00\x00\x00", b"\x06\x00\x00\x00\x00"]:
            with self.subTest(doc=doc), self.assertRaises(ValueError):
                native._native.splice([doc], 0, *assigned)

    @settings(max_examples=300)
    @given(st.lists(st.binary(max_size=300), max_size=20), offsets)
    def test_frame_all(self, payloads, offset):
        assume(offset + len(payloads) < 2**64)
        self.assertEqual(native._native.frame_all(offset, payloads), record._frame_all(offset, payloads))

    @settings(max_examples=300)
    @given(st.lists(st.binary(max_size=300), max_size=40), offsets, st.integers(0, 2**40), st.integers(1, 2000))
    def test_record_marks(self, payloads, offset, position, spacing):
        assume(offset + len(payloads) < 2**64)
        data = record._frame_all(offset, payloads)
        self.assertEqual(native._native.record_marks(data, position, spacing), record._marks(data, position, spacing))

    @settings(max_examples=400)
    @given(st.lists(st.binary(max_size=300), max_size=40), offsets, st.integers(0, 2**40), st.integers(1, 2000),
           st.data())
    def test_parse_run(self, payloads, offset, position, spacing, data):
        """A reader's run of records, also damaged, cut short, from any position, with any
        limits: the compiled reader takes what the Python one takes and stops where it stops."""
        assume(offset + len(payloads) < 2**64)
        buf = bytearray(record._frame_all(offset, payloads))
        for at in data.draw(st.lists(st.integers(0, max(0, len(buf) - 1)), max_size=3)) if buf else []:
            buf[at] ^= data.draw(st.integers(1, 255))
        buf = bytes(buf[:data.draw(st.integers(0, len(buf)))])
        near = st.integers(max(-3, offset - 2), min(2**64 - 1, offset + len(payloads) + 2))
        check_parse_run(buf, data.draw(st.sampled_from([0, data.draw(st.integers(0, len(buf)))])),
                        data.draw(near), data.draw(st.one_of(near, st.just(2**64 - 1))),
                        data.draw(st.integers(1, 50)), data.draw(st.integers(1, 20000)), position,
                        data.draw(st.sampled_from([-1, 0, position, position + data.draw(st.integers(0, 20000))])),
                        spacing)

    def test_parse_run_of_what_the_journal_writes(self):
        payloads = [bytes([i]) * i for i in range(50)]
        data = native._native.frame_all(7, payloads)
        records, pos, notes, next_note = check_parse_run(data, 0, 0, 2**64 - 1, 1000, 10**6, 100, 0, 64)
        self.assertEqual((records, pos), (list(enumerate(payloads, 7)), len(data)))
        self.assertEqual(notes, record._marks(data, 100, 64))
        # From offset 20 on, at most 5 records, before offset 23: damage and limits end a run.
        self.assertEqual([o for o, _ in check_parse_run(data, 0, 20, 23, 5, 10**6, 0, -1, 64)[0]], [20, 21, 22])
        self.assertEqual(check_parse_run(data[:-1], 0, 0, 2**64 - 1, 1000, 10**6, 0, -1, 64)[0][-1][0], 55)
        # An offset below any (zcmd tail --from-offset -1) takes from the first record on.
        self.assertEqual(check_parse_run(data, 0, -1, 2**64 - 1, 1000, 10**6, 0, -1, 64)[0][0][0], 7)
        self.assertEqual(check_parse_run(data, 0, 0, -5, 1000, 10**6, 0, -1, 64)[0], [])
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 1
        self.assertLess(len(check_parse_run(bytes(damaged), 0, 0, 2**64 - 1, 1000, 10**6, 0, -1, 64)[0]), 50)

    def test_what_the_journal_writes_reads_back(self):
        payloads = [bytes([i]) * i for i in range(50)]
        data = native._native.frame_all(7, payloads)
        pos, got = 0, []
        while pos < len(data):
            offset, start, end = record.parse(data, pos)
            got.append((offset, data[start:end]))
            pos = end
        self.assertEqual(got, list(enumerate(payloads, 7)))


class SwitchTest(unittest.TestCase):
    def _describe(self, env):
        code = "from zspark import native; print(native.COMPILED, native.describe())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(__file__)))
        return out.stdout.strip()

    def test_zspark_pure_turns_the_compiled_paths_off(self):
        self.assertEqual(self._describe({"ZSPARK_PURE": "1"}), "False pure Python hot paths (ZSPARK_PURE is set)")
        self.assertEqual(self._describe({"ZSPARK_PURE": "0"}), "True compiled hot paths in use (zspark._native)")

    def test_this_run_uses_what_its_environment_asks(self):
        self.assertEqual(native.COMPILED, not native.PURE)


# -- ZeroMQ bursts (native.frame_receiver) ----------------------------------------------------

class ReceiveFramesTest(unittest.TestCase):
    """The compiled receive against its reference, on the same frames sent over TCP to two PULL
    sockets: the same bytes, in the same order, burst by burst; the same errors."""

    def setUp(self):
        import zmq
        self.zmq = zmq
        self.context = zmq.Context()
        self.addCleanup(self.context.destroy, linger=0)
        self.assertTrue(native._found_libzmq(), "the libzmq pyzmq loaded is found")
        self.compiled = native._receive_frames_compiled

    def pair(self):
        pull = self.context.socket(self.zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push = self.context.socket(self.zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        return push, pull

    def sent(self, messages):
        """Two PULL sockets holding `messages` (each a list of parts) whole, as the ZeroMQ source
        takes them: each after a poll."""
        pulls = []
        for _ in range(2):
            push, pull = self.pair()
            for parts in messages:
                push.send_multipart(parts, copy=True)
            pulls.append(pull)
        return pulls

    def drain(self, receive, pull, max_frames, expected):
        bursts = []
        while sum(map(len, bursts)) < expected:
            self.assertTrue(pull.poll(10_000), "the frames arrive")
            burst = receive(pull, max_frames)
            self.assertLessEqual(len(burst), max_frames)
            bursts.append(burst)
        self.assertEqual(receive(pull, max_frames), [], "nothing more")
        return [frame for burst in bursts for frame in burst]

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.lists(st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x00" * 70_000])),
                             min_size=1, max_size=3), max_size=60),
           st.integers(1, 70))
    def test_the_same_frames_as_the_reference(self, messages, max_frames):
        compiled_pull, python_pull = self.sent(messages)
        expected = sum(map(len, messages))
        got = self.drain(self.compiled, compiled_pull, max_frames, expected)
        want = self.drain(native.receive_frames_python, python_pull, max_frames, expected)
        self.assertEqual(got, want)
        self.assertEqual(got, [part for parts in messages for part in parts])
        self.assertTrue(all(type(frame) is bytes for frame in got))

    def test_the_source_receives_as_its_environment_asks(self):
        self.assertIs(native.frame_receiver(),
                      native._receive_frames_compiled if native.COMPILED else native.receive_frames_python)

    def test_the_same_errors(self):
        zmq = self.zmq
        push, pull = self.pair()
        for receive in (self.compiled, native.receive_frames_python):
            with self.subTest(receive=receive.__name__):
                with self.assertRaises(zmq.ZMQError) as raised:
                    receive(push, 10)  # a PUSH socket cannot receive
                self.assertEqual(raised.exception.errno, zmq.ENOTSUP)
        pull.close()
        for receive in (self.compiled, native.receive_frames_python):
            with self.subTest(receive=receive.__name__, closed=True):
                with self.assertRaises(zmq.ZMQError) as raised:
                    receive(pull, 10)
                self.assertEqual(raised.exception.errno, zmq.ENOTSOCK)


# -- HTTP request heads (httpframing.parse_head) ---------------------------------------------------

TCHARS = "!#$%&'*+.^_`|~-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(st.sampled_from(TCHARS), min_size=1, max_size=12)
FRAMING_NAMES = ["Content-Length", "content-length", "CONTENT-LENGTH", "Transfer-Encoding", "transfer-encoding",
                 "Connection", "connection", "CONNECTION", "Host", "Content-Type", "Prefer"]
field_names = st.one_of(tokens, st.sampled_from(FRAMING_NAMES))
ows = st.sampled_from(["", " ", "\t", "  ", " \t "])
field_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30),
    st.sampled_from(["0", "5", "007", "00", "12345678901234567", "123456789012345678", "1234567890123456789",
                     "5, 5", "5,6", "", "chunked", "Chunked", "gzip, chunked", "close", "keep-alive",
                     "Keep-Alive", "keep-alive, close", "upgrade , CLOSE", ",", "x\x80y", "\xff", "a\tb"]))
targets = st.one_of(st.sampled_from(["/log", "/", "*", "/log?type=t&x=%20", "http://h/p", "/\x80\xff"]),
                    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=20))
methods = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT"]), tokens)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "http/1.1"])


@st.composite
def heads(draw, max_fields=8):
    """Request heads built as a sender would write them: most valid, the rest at a rule's edge."""
    line = f"{draw(methods)} {draw(targets)} {draw(versions)}\r\n"
    fields = draw(st.lists(st.tuples(field_names, ows, field_values, ows), max_size=max_fields))
    text = line + "".join(f"{n}:{a}{v}{b}\r\n" for n, a, v, b in fields) + "\r\n"
    return text.encode("latin-1")


COMMON_HEADS = [
    b"POST /log HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n",
    b"GET /log?type=t HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"GET /imok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /imok HTTP/1.0\r\n\r\n",
    b"POST /log HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HEAD /imok HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST /log HTTP/1.1\r\ncontent-length:\t0007 \r\nX-Empty:\r\nX-Obs: caf\xe9\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nConnection: Upgrade, Keep-Alive\r\nConnection: CLOSE\r\n\r\n",
]


class ParseHeadTest(unittest.TestCase):
    """The compiled head parser gives parse_head's Head or leaves the head to Python: never
    another Head, never a Head for a head Python refuses."""

    @settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
    @given(heads())
    def test_generated_heads(self, head):
        check_parse_head(head)

    @settings(max_examples=300)
    @given(st.sampled_from(["GET", "POST", "HEAD"]), st.sampled_from(["/log", "/imok?x=1"]),
           st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
           st.lists(st.tuples(tokens.filter(lambda n: n.lower() not in ("content-length", "transfer-encoding")),
                              st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20)),
                    max_size=10))
    def test_recognises_common_heads(self, method, target, version, fields):
        head = f"{method} {target} {version}\r\n{''.join(f'{n}: {v}' + chr(13) + chr(10) for n, v in fields)}\r\n"
        self.assertIsNotNone(check_parse_head(head.encode()))

    def test_common_heads(self):
        for head in COMMON_HEADS:
            with self.subTest(head=head):
                self.assertIsNotNone(check_parse_head(head))

    def test_one_bad_byte_anywhere(self):
        """Every byte of each common head replaced by each byte value, and each byte removed or
        doubled."""
        for head in COMMON_HEADS:
            for at in range(len(head)):
                for byte in range(256):
                    check_parse_head(head[:at] + bytes([byte]) + head[at + 1:])
                check_parse_head(head[:at] + head[at + 1:])
                check_parse_head(head[:at] + head[at:at + 1] * 2 + head[at:])

    def test_heads_cut_short(self):
        for head in COMMON_HEADS:
            for cut in range(len(head) + 1):
                check_parse_head(head[:cut])
                check_parse_head(head[:cut] + b"\r\n\r\n")

    @settings(max_examples=400)
    @given(heads(max_fields=4), st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), min_size=1,
                                         max_size=4), st.integers(0, 10**4))
    def test_mutated_generated_heads(self, head, flips, cut_at):
        mutated = bytearray(head)
        for at, byte in flips:
            mutated[at % len(mutated)] = byte
        check_parse_head(bytes(mutated))
        check_parse_head(bytes(mutated[:cut_at % len(mutated)]))

    def test_each_rule_at_its_edge(self):
        line = b"POST /log HTTP/1.1\r\n"
        many = b"".join(b"X-%d: v\r\n" % i for i in range(100))
        self.assertEqual(len(check_parse_head(line + many + b"\r\n").headers), 100)  # the most allowed
        self.assertIsNone(check_parse_head(line + many + b"X: v\r\n\r\n"))  # 101: Python's 431
        for size in (64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1):  # MAX_HEAD_BYTES
            head = line + b"X: " + b"v" * (size - len(line) - 7) + b"\r\n\r\n"
            self.assertEqual(len(head), size)
            (self.assertIsNotNone if size <= 64 * 1024 else self.assertIsNone)(check_parse_head(head))
        for value, expected in [(b"0", 0), (b"007", 7), (b"9" * 18, 10**18 - 1), (b"0" * 18, 0)]:
            self.assertEqual(check_parse_head(line + b"Content-Length: " + value + b"\r\n\r\n").content_length, expected)
        for value in (b"9" * 19, b"0" * 19 + b"1", b"5, 5", b"5,5", b"", b"+5", b"-1", b"5 5", b"0x5", b"\xb5"):
            with self.subTest(value=value):
                self.assertIsNone(check_parse_head(line + b"Content-Length: " + value + b"\r\n\r\n"))
        self.assertIsNone(check_parse_head(line + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n"))
        self.assertIsNone(check_parse_head(line + b"Transfer-Encoding: chunked\r\n\r\n"))
        self.assertEqual(check_parse_head(b"HEAD / HTTP/1.1\r\nContent-Length: 000\r\n\r\n").content_length, 0)
        self.assertIsNone(check_parse_head(b"HEAD / HTTP/1.1\r\nContent-Length: 1\r\n\r\n"))  # a body: 400
        self.assertTrue(check_parse_head(b"HEADS / HTTP/1.1\r\nContent-Length: 1\r\n\r\n").persistent)
        persistent = {b"HTTP/1.1": True, b"HTTP/1.1|close": False, b"HTTP/1.1|Close": False,
                      b"HTTP/1.1|keep-alive": True, b"HTTP/1.1|foo, close ,bar": False, b"HTTP/1.1|closed": True,
                      b"HTTP/1.1|,": True, b"HTTP/1.1|\tclose\t": False, b"HTTP/1.0": False,
                      b"HTTP/1.0|keep-alive": True, b"HTTP/1.0|KEEP-ALIVE": True, b"HTTP/1.0|keep-alive,close": False,
                      b"HTTP/1.0|keep-alive|close": False, b"HTTP/1.0|keep-alivex": False}
        for spec, expected in persistent.items():
            version, *options = spec.split(b"|")
            head = b"GET / " + version + b"\r\n" + b"".join(b"Connection: " + o + b"\r\n" for o in options) + b"\r\n"
            with self.subTest(head=head):
                self.assertIs(check_parse_head(head).persistent, expected)
        for bad in (b"GET / HTTP/1.1\r\n\r\nX: y\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n\r\n", b"\r\nGET / HTTP/1.1\r\n\r\n",
                    b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1 \r\n\r\n", b"GET / HTTP/1.1\r\n \r\n\r\n",
                    b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
                    b"GET / HTTP/1.1\r\n: a\r\n\r\n", b"GET / HTTP/1.1\r\nX\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n",
                    b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
                    b"GET / HTTP/1.1\r\nX: a\nb\r\n\r\n", b"GET / HTTP/1.1\n\r\n", b"GET / HTTP/1.1\r\n\n",
                    b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\nextra", b"GET /\x7f HTTP/1.1\r\n\r\n",
                    b"G\x80T / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n\x00", b"", b"\r\n\r\n"):
            with self.subTest(head=bad):
                self.assertIsNone(check_parse_head(bad))
        self.assertIsNone(native._native.parse_head("GET / HTTP/1.1\r\n\r\n"))  # not bytes: Python's to refuse
        self.assertIsNone(native._native.parse_head(bytearray(b"GET / HTTP/1.1\r\n\r\n")))

    def test_failed_allocations(self):
        """Each allocation the compiled parser makes failing in turn (and every one from there on):
        a MemoryError, None (Python decides) or the Head, never another result or a crash."""
        import _testcapi
        from zspark.sources.httpframing import Head, _parse_head
        for head in (COMMON_HEADS[0], COMMON_HEADS[6], b"GET /\xff HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
            expected = _parse_head(head)
            for start, stop in [(i, i + 1) for i in range(60)] + [(i, 0) for i in range(60)]:
                with self.subTest(head=head, start=start, stop=stop):
                    _testcapi.set_nomemory(start, stop)
                    try:
                        fields = native._native.parse_head(head)
                    except MemoryError:
                        continue
                    finally:
                        _testcapi.remove_mem_hooks()
                    self.assertTrue(fields is None or Head(*fields) == expected, fields)

    def test_the_switch(self):
        """parse_head uses the compiled parser where compiled paths are in use, and gives the
        same Head either way."""
        from zspark.sources import httpframing
        self.assertEqual(httpframing._compiled_parse_head is not None, native.COMPILED)
        for head in COMMON_HEADS:
            self.assertEqual(httpframing.parse_head(head), httpframing._parse_head(head))


# -- journal payloads to the forwarder's JSON (json_fields) -------------------------------------

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
MS_MIN, MS_MAX = -62135596800000, 253402300799999  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59.999Z
# What the Kafka forwarder asks for, and more: every string and datetime field an event has (at
# most 8 names a call).
FIELD_NAMES = ("timestamp", "source", "topic")
ALL_FIELD_NAMES = ("timestamp", "source", "node", "type", "level", "topic", "ip", "stimestamp")
MORE_FIELD_NAMES = ("env", "version", "referrer", "user_agent", "_id_", "missing", "timestamp", "node")
field_names = st.sampled_from([FIELD_NAMES, ALL_FIELD_NAMES, MORE_FIELD_NAMES, (), ("topic",)])

# Text as senders send it: mostly ASCII; any Unicode but NUL (refused) and lone surrogates (not
# UTF-8); the characters JSON escapes; 0x7f and line separators, which it does not.
event_text = st.one_of(
    st.text(st.characters(max_codepoint=127, exclude_characters="\x00"), max_size=30),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.sampled_from(["é", "日本語", "\U0001F600", "\u2028\u2029", "\x7f", 'a"b\\c', "\b\f\n\r\t\x01\x1f", "",
                     "\U0010ffff"]))
event_keys = event_text.filter(lambda k: not k.startswith("$"))
json_leaves = st.one_of(event_text, st.integers(-2**63, 2**63 - 1), st.integers(-1000, 1000),
                        st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
bson_leaves = st.one_of(
    json_leaves, st.builds(ObjectId), st.binary(max_size=12), st.integers(-2**63, 2**63 - 1).map(Int64),
    st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                 timezones=st.none() | st.just(UTC)))


def free_form(leaves):
    return st.recursive(leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(
        event_keys, children, max_size=4), max_leaves=20)


def raw_events(leaves, times):
    """Raw events as senders send them: a type, often the other string fields, context and extra
    holding anything the source decodes to, now and then an unknown field (moved to context)."""
    short = st.text(st.characters(max_codepoint=127, exclude_characters="\x00"), max_size=20)
    return st.fixed_dictionaries({"type": short.filter(bool)}, optional={
        "level": short, "topic": short, "env": short, "version": short, "ip": st.ip_addresses().map(str),
        "referrer": event_text, "user_agent": event_text, "stimestamp": times,
        "cookies": st.dictionaries(event_keys, event_text, max_size=3),
        "context": st.dictionaries(event_keys, free_form(leaves), max_size=5), "extra": free_form(leaves),
        "user": event_text, "timestamp": times})


json_times = st.one_of(st.integers(0, 2 * 10**12), st.sampled_from(["2026-01-02T03:04:05.678Z", "1700000000"]))
bson_times = st.datetimes(min_value=datetime.datetime(1, 1, 2), timezones=st.none() | st.just(UTC))
receive_times = st.datetimes(min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2100, 1, 1),
                             timezones=st.just(UTC))
nodes = st.sampled_from(["node-1", "nodé", "n"])


def normalized(raw, source, node, now):
    try:
        return normalize(raw, source, node, now)
    except InvalidEvent:  # deeper than the limits, a key too long...: not an event zspark journals
        assume(False)


@st.composite
def zmq_bson_payloads(draw):
    """Payloads as the ZeroMQ BSON source journals them: a frame holding only sender fields in
    their final form spliced as it came (FrameEvent, one at a time or a burst), any other
    normalized and encoded."""
    node, now, offset = draw(nodes), draw(receive_times), draw(st.integers(0, 2**40))
    raws = draw(st.lists(raw_events(bson_leaves, bson_times), min_size=1, max_size=4))
    items = []
    for raw in raws:
        frame = frame_of(raw)
        doc = decode_bson(frame)
        if doc.keys() <= SPLICEABLE_FIELDS and None not in doc.values():
            try:
                sender_fields(doc)
            except InvalidEvent:
                assume(False)
            items.append(FrameEvent(frame, now, "zmq_bson", node))
        else:
            items.append(normalized(doc, "zmq_bson", node, now))
    if draw(st.booleans()) and all(type(item) is FrameEvent for item in items):
        return codec.encode_events(FrameBurst([item.frame for item in items], now, "zmq_bson", node), offset)
    return codec.encode_events(items, offset)


@st.composite
def http_payloads(draw):
    """Payloads as the HTTP source journals a batch: JSON decoded, the sender fields of each,
    encoded together (encode_batch); or one event normalized and encoded (GET /log)."""
    node, now, offset = draw(nodes), draw(receive_times), draw(st.integers(0, 2**40))
    raws = [json.loads(json.dumps(raw)) for raw in draw(st.lists(raw_events(json_leaves, json_times), min_size=1,
                                                                  max_size=4))]
    if len(raws) == 1 and draw(st.booleans()):
        return [codec.encode_event(normalized(raws[0], "http", node, now), offset)]
    try:
        fields = [sender_fields(raw) for raw in raws]
    except InvalidEvent:
        assume(False)
    return codec.encode_batch(fields, now, "http", node, offset)


journal_payloads = st.one_of(zmq_bson_payloads(), http_payloads())


# BSON built byte by byte: every type, valid or not, as (type byte, value bytes, whether
# json_fields must take it).
def _i32(n):
    return struct.pack("<i", n)


def _i64(n):
    return struct.pack("<q", n)


def strict_utf8(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Sequences Python's strict decoder refuses, and the edges of those it takes.
BAD_UTF8 = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xc2\x41", b"\xe0\x80\x80", b"\xe0\x9f\xbf",
            b"\xe1\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xef\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80", b"\xf4\x8f\xbf", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff",
            b"a\xe2\x82", b"\xe2\x28\xa1", b"\xf0\x9f\x98"]
GOOD_UTF8 = [c.encode() for c in ["\x7f", "\x80", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\ufffd", "\uffff",
                                  "\U00010000", "\U0010ffff", "é日\U0001F600"]]
utf8_bytes = st.one_of(st.text(st.characters(codec="utf-8"), max_size=8).map(str.encode), st.binary(max_size=6),
                       st.sampled_from(BAD_UTF8 + GOOD_UTF8), st.lists(st.sampled_from(BAD_UTF8 + GOOD_UTF8 + [b"a"]),
                                                                       max_size=4).map(b"".join))
# Keys: mostly text, some repeated, now and then $ref or bytes that are not UTF-8.
doc_keys = st.one_of(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                             max_size=6).map(str.encode),
                     st.text("abcdefgh", min_size=1, max_size=3).map(str.encode),
                     st.sampled_from([b"a", b"b", b"type", b"topic", b"timestamp", b"", b"$ref", b"$id"]),
                     utf8_bytes.map(lambda k: k.replace(b"\x00", b"")))
FLOATS = [0.0, -0.0, 1e16, -1e16, 1e15, 1e-5, 1e-4, 5e-324, 1.7976931348623157e308, 0.1, 1e22, 123456789.0,
          1.2345678901234567e-7, 2.5e-05, float("nan"), float("inf"), -float("inf")]


def bson_string(data, size_delta=0):
    return _i32(len(data) + 1 + size_delta) + data + b"\x00"


valid_scalars = st.one_of(
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(FLOATS[:-3])).map(
        lambda x: (1, struct.pack("<d", x), True)),
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=8).map(str.encode), st.sampled_from(GOOD_UTF8)).map(
        lambda s: (2, bson_string(s), True)),
    st.binary(max_size=16).map(lambda b: (5, _i32(len(b)) + b"\x00" + b, True)),
    st.binary(min_size=12, max_size=12).map(lambda b: (7, b, True)),
    st.sampled_from([(8, b"\x00", True), (8, b"\x01", True), (10, b"", True)]),
    st.one_of(st.integers(MS_MIN, MS_MAX), st.sampled_from([MS_MIN, MS_MAX, -1, 0, -1001])).map(
        lambda ms: (9, _i64(ms), True)),
    st.integers(-2**31, 2**31 - 1).map(lambda n: (16, _i32(n), True)),
    st.integers(-2**63, 2**63 - 1).map(lambda n: (18, _i64(n), True)))
any_scalars = st.one_of(
    st.one_of(st.floats(), st.sampled_from(FLOATS)).map(lambda x: (1, struct.pack("<d", x), math.isfinite(x))),
    utf8_bytes.map(lambda s: (2, bson_string(s), strict_utf8(s))),
    st.tuples(utf8_bytes, st.sampled_from([-1, 1, 2, 1000, -1000, -len(b"x") - 2])).map(
        lambda a: (2, bson_string(*a), False)),  # a length field that lies
    st.tuples(st.binary(max_size=16), st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 0x80, 0xff])).map(
        lambda a: (5, _i32(len(a[0])) + bytes([a[1]]) + a[0], a[1] == 0)),
    st.just((5, _i32(-1) + b"\x00", False)),
    st.just((6, b"", False)),  # undefined
    st.sampled_from([0, 1, 2, 0xff]).map(lambda b: (8, bytes([b]), b <= 1)),
    st.one_of(st.integers(-2**63, 2**63 - 1),
              st.sampled_from([MS_MIN, MS_MIN - 1, MS_MAX, MS_MAX + 1, -1, 0, 1, -999, -1000, -1001, 999])).map(
        lambda ms: (9, _i64(ms), MS_MIN <= ms <= MS_MAX)),
    st.just((11, b"a.*\x00i\x00", False)),  # regex
    st.just((12, bson_string(b"c") + b"\x01" * 12, False)),  # DBPointer
    st.just((13, bson_string(b"x"), False)),  # code
    st.just((14, bson_string(b"x"), False)),  # symbol: decodes to str, but not ours
    st.just((15, _i32(4 + 6 + 5) + bson_string(b"x") + _i32(5) + b"\x00", False)),  # code with scope
    st.just((17, _i64(5), False)),  # timestamp
    st.just((19, Decimal128("1.5").bid, False)),
    st.sampled_from([(0xff, b"", False), (0x7f, b"", False), (0, b"", False), (0x14, b"\x00" * 8, False)]))
# Mostly valid values, so that whole documents often are.
bson_scalars = st.one_of(valid_scalars, valid_scalars, any_scalars)


def bson_values(depth):
    if depth >= 5:
        return bson_scalars
    inner = st.deferred(lambda: bson_values(depth + 1))
    return st.one_of(bson_scalars, bson_scalars, bson_documents(inner), bson_arrays(inner))


def bson_documents(values):
    return st.lists(st.tuples(doc_keys, values), max_size=5).map(lambda elements: (3, *bson_document(elements)))


def bson_document(elements):
    """The document of (key, (type, value, ok)) elements, and whether json_fields must take it:
    every element, every key strict UTF-8, none repeated, no $ref (a DBRef)."""
    keys = [key for key, _ in elements]
    ok = (all(ok for _, (_, _, ok) in elements) and all(map(strict_utf8, keys)) and len(set(keys)) == len(keys)
          and b"$ref" not in keys)
    return document([bytes([t]) + key + b"\x00" + value for key, (t, value, _) in elements]), ok


def bson_arrays(values):
    # An array's keys are skipped unread: any do.
    keys = st.one_of(st.just(None), st.binary(max_size=3).map(lambda k: k.replace(b"\x00", b"")))
    return st.lists(st.tuples(keys, values), max_size=5).map(lambda elements: (4, document([
        bytes([t]) + (str(i).encode() if key is None else key) + b"\x00" + value
        for i, (key, (t, value, _)) in enumerate(elements)]), all(ok for _, (_, _, ok) in elements)))


@st.composite
def bson_payloads(draw):
    """A generated payload, names asked of it, and whether json_fields must give a tuple."""
    elements = draw(st.lists(st.tuples(doc_keys, bson_values(2)), max_size=8))
    payload, ok = bson_document(elements)
    names = tuple(draw(st.lists(st.one_of(st.sampled_from(["a", "type", "timestamp", "absent", ""]),
                                          doc_keys.map(lambda k: k.decode("utf-8", "replace"))), max_size=4)))
    for key, (t, _, _) in elements:
        if key.decode("utf-8", "replace") in names and t not in (2, 9):
            ok = False
    return payload, names, ok


def nested_payload(depth, array_every=2):
    """A payload `depth` containers deep counting its own document: documents and arrays."""
    value, t = b"\x10x\x00" + _i32(7), None
    for level in range(depth - 1):
        t = 4 if level % array_every == 1 else 3
        value = bytes([t]) + (b"0" if t == 4 else b"d") + b"\x00" + document([value])
    return document([value])


class JsonFieldsTest(unittest.TestCase):
    """json_fields gives event_json_bytes(decode_event(payload)) and the fields asked for, or
    leaves the payload to Python: never other bytes or values, never a tuple where Python cannot
    decode the payload; and it does give them for the events zspark journals."""

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(journal_payloads, field_names)
    def test_journaled_events_take_the_fast_path(self, payloads, names):
        got = check_json_fields(payloads, names)
        self.assertNotIn(None, got, payloads)

    def test_journaled_events_of_every_kind(self):
        now = datetime.datetime(2026, 12, 2, 13, 0, 1, 123456, tzinfo=UTC)
        context = {"s": "x\x01\x1f\"\\\n\t\x7f é 日本 \U0001F600 \u2028", "i": -2**63, "j": 2**63 - 1,
                   "f": [0.1, -0.0, 1e-7, 1e16, 1e300], "b": [True, False], "n": None,
                   "d": {"e": {"f": [[], {}, [{"g": 1}]]}}, "ctl\x01\"\\键": 1}
        frame_context = {**context, "oid": ObjectId(b"\x00\xff" * 6), "bin": b"\x00\xff", "at": now,
                         "old": datetime.datetime(1, 1, 1),
                         "later": datetime.datetime(9999, 12, 31, 23, 59, 59, 999000),
                         "before_epoch": datetime.datetime(1969, 12, 31, 23, 59, 59, 1000), "i64": Int64(5)}
        frames = [bson.encode({"type": "t", "topic": "tópic", "context": frame_context, "extra": [frame_context]}),
                  bson.encode({"type": "t", "ip": "::1", "cookies": {"a": "b"}, "extra": "x"})]
        payloads = codec.encode_events(FrameBurst(frames, now, "zmq_bson", "nodé"), 7)
        normalized_frame = normalize({"type": "t", "timestamp": now, "user": "u", "context": frame_context},
                                     "zmq_bson", "n", now)
        payloads += codec.encode_events([FrameEvent(frames[0], now, "zmq_bson", "n"), normalized_frame], 2**40 - 1)
        payloads += codec.encode_batch([{"type": "t", "context": context}, {"type": "u", "level": "info"}], now, "http",
                                       "n", 2**50)
        get = {"type": "t", "stimestamp": "1969-07-20T20:17:40Z", "context": context}
        payloads.append(codec.encode_event(normalize(get, "http", "n", now), 0))
        for names in (FIELD_NAMES, ALL_FIELD_NAMES, MORE_FIELD_NAMES, ()):
            with self.subTest(names=names):
                got = check_json_fields(payloads, names)
                self.assertNotIn(None, got)
        got = check_json_fields(payloads[-1:], ("timestamp", "stimestamp", "source", "topic"))[0]
        self.assertEqual(got[1:], ((now - EPOCH) // datetime.timedelta(milliseconds=1), -14182940000, "http", None))
        self.assertEqual(json.loads(got[0])["timestamp"], "2026-12-02T13:00:01.123000Z")

    @settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
    @given(bson_payloads())
    def test_generated_documents(self, case):
        payload, names, ok = case
        got = check_json_fields([payload], names)[0]
        if ok:
            self.assertIsNotNone(got, payload)

    @settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(journal_payloads, field_names, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
           st.integers(0, 10**6), st.integers(-3, 3), st.sampled_from(["flip", "cut", "insert", "delete"]))
    def test_mutated_payloads(self, payloads, names, flips, at, size_delta, how):
        """Bytes flipped, payloads cut short, bytes inserted or removed, size fields that lie."""
        mutated = []
        for payload in payloads:
            data = bytearray(payload)
            where = at % (len(data) + 1)
            if how == "flip":
                for i, byte in flips:
                    data[i % len(data)] = byte
            elif how == "cut":
                data = data[:where]
            elif how == "insert":
                data[where:where] = bytes(byte for _, byte in flips) or b"\x00"
            else:
                del data[where:where + 1 + at % 3]
            if size_delta and len(data) >= 4:
                data[:4] = _i32(int.from_bytes(data[:4], "little", signed=True) + size_delta)
            mutated.append(bytes(data))
        check_json_fields(mutated, names)

    @settings(max_examples=500)
    @given(st.binary(max_size=64), st.booleans())
    def test_random_bytes(self, data, sized):
        if sized:  # past the first check: a size field that fits
            data = _i32(len(data) + 5) + data + b"\x00"
        check_json_fields([data], FIELD_NAMES)

    def test_one_bad_byte_anywhere(self):
        """Every byte of a journaled event replaced by each of a few values, removed, doubled; the
        payload cut at every length."""
        now = datetime.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
        frame = bson.encode({"type": "t", "topic": "é", "context": {"a": [1, 2.5, "x\n", None, True], "o": ObjectId(
            b"\x01" * 12), "t": now, "b": b"\x07", "i": Int64(-3), "d": {}}})
        payload = codec.encode_events([FrameEvent(frame, now, "zmq_bson", "n")], 5)[0]
        self.assertIsNotNone(check_json_fields([payload], FIELD_NAMES)[0])
        variants = []
        for at in range(len(payload)):
            variants += [payload[:at] + bytes([byte]) + payload[at + 1:] for byte in (0, 1, 2, 3, 4, 5, 9, 0x10, 0x12,
                                                                                      0x22, 0x5c, 0x7f, 0x80, 0xc3,
                                                                                      0xed, 0xff, payload[at] ^ 1)]
            variants += [payload[:at] + payload[at + 1:], payload[:at] + payload[at:at + 1] * 2 + payload[at + 1:],
                         payload[:at]]
        check_json_fields(variants, FIELD_NAMES)

    def test_what_is_left_to_python(self):
        ok = [element("a", 1)]
        cases = {
            "empty": b"", "short": b"\x05\x00\x00", "size field too large": _i32(6) + b"\x00",
            "size field too small": document(ok)[:-1] + b"\x00\x00",
            "trailing bytes": document(ok) + b"\x00", "no terminator": document(ok)[:-1] + b"\x01",
            "element past the end": _i32(12) + b"\x10a\x00\x01\x00\x00" + b"\x00",
            "string past its document": document([b"\x03d\x00" + _i32(12) + b"\x02s\x00" + _i32(9) + b"x\x00",
                                                  b"\x00" * 8]),
            "string length short": document([b"\x02s\x00" + _i32(2) + b"xy\x00"]),
            "string length long": document([b"\x02s\x00" + _i32(4) + b"xy\x00"]),
            "string without its NUL": document([b"\x02s\x00" + _i32(3) + b"xyz"]),
            "string length zero": document([b"\x02s\x00" + _i32(0) + b"\x00"]),
            "nested document without its NUL": document([b"\x03d\x00" + _i32(5) + b"\x01", b"\x0a" + b"z\x00"]),
            "nested document ending early": document([b"\x03d\x00" + _i32(6) + b"\x0ab\x00\x00", b"\x0az\x00"]),
            "nested size past the parent": document([b"\x03d\x00" + _i32(100) + b"\x00"]),
            "array element past the array": document([b"\x04l\x00" + _i32(8) + b"\x100\x00" + _i32(1) + b"\x00"]),
            "repeated key": document([element("a", 1), element("a", 1)]),
            "repeated key nested": document([b"\x03d\x00" + document([element("b", 1), element("b", 1)])]),
            "repeated key in a list's document": document([b"\x04l\x00" + document([b"\x030\x00" + document(
                [element("k", 1), element("k", 2)])])]),
            "DBRef": bson.encode({"d": {"$ref": "c", "$id": 1}}), "$ref alone": bson.encode({"d": {"$ref": "c"}}),
            "$ref at the top": bson.encode({"$ref": "c", "$id": 1}),
            "nan": bson.encode({"f": float("nan")}), "infinity": bson.encode({"f": [-float("inf")]}),
            "boolean 2": document([b"\x08b\x00\x02"]), "binary subtype 4": bson.encode({"b": Binary(b"x" * 16, 4)}),
            "binary subtype 2": bson.encode({"b": Binary(b"x", 2)}),
            "binary negative": document([b"\x05b\x00" + _i32(-1) + b"\x00"]),
            "datetime before year 1": document([b"\x09t\x00" + _i64(MS_MIN - 1)]),
            "datetime after 9999": document([b"\x09t\x00" + _i64(MS_MAX + 1)]),
            "int64 min as a datetime": document([b"\x09t\x00" + _i64(-2**63)]),
            "decimal": bson.encode({"x": Decimal128("1")}), "regex": bson.encode({"x": Regex("a")}),
            "symbol": document([b"\x0es\x00" + bson_string(b"x")]), "timestamp": bson.encode({"x": Timestamp(1, 2)}),
            "minkey": bson.encode({"x": MinKey()}), "maxkey": bson.encode({"x": MaxKey()}),
            "undefined": document([b"\x06u\x00"]), "code": bson.encode({"x": Code("f")}),
            "code with scope": bson.encode({"x": Code("f", {"a": 1})}),
            "type 0": document([b"\x00a\x00"]), "unknown type": document([b"\x14a\x00" + _i64(1)]),
            "too deep": nested_payload(101),
        }
        for name, payload in cases.items():
            with self.subTest(name):
                self.assertEqual(native._native.json_fields([payload], FIELD_NAMES), [None])
                check_json_fields([payload], FIELD_NAMES)

    def test_every_ascii_character_in_keys_and_text(self):
        text = "".join(map(chr, range(128)))
        payload = bson.encode({"s": text, "t": "\x00", text[1:]: 1, "\x7f": ["\x00\x1f\x20"]})
        got = check_json_fields([payload], ())[0]
        self.assertEqual(got, (json.dumps(decode_event(payload), ensure_ascii=False, separators=(",", ":")).encode(),))
        self.assertIn(b'\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e', got[0])
        self.assertIn(b'\\u001f !\\"#', got[0])
        self.assertIn(b'[\\\\]', got[0])

    def test_utf8(self):
        """Text Python's strict decoder refuses, in a value or a key, at the top or nested: left
        to Python; the edges of what it takes: written."""
        for bad in BAD_UTF8:
            for payload in (document([b"\x02s\x00" + bson_string(bad)]),
                            document([b"\x02" + bad + b"\x00" + bson_string(b"")]),
                            document([b"\x04l\x00" + document([b"\x020\x00" + bson_string(b"ok" + bad + b"ok")])]),
                            document([b"\x03d\x00" + document([b"\x0a" + bad + b"\x00"])])):
                with self.subTest(payload=payload):
                    self.assertEqual(native._native.json_fields([payload], ()), [None])
                    self.assertIsNone(json_fields_reference(payload, ()))
        for good in GOOD_UTF8:
            with self.subTest(good=good):
                payload = document([b"\x02" + good + b"\x00" + bson_string(good + b"\x00" + good)])
                self.assertIsNotNone(check_json_fields([payload], (good.decode(),))[0])

    @settings(max_examples=300)
    @given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(FLOATS[:-3]) | st.sampled_from(
        [m * 10.0**e for e in range(-12, 23) for m in (1, -1.5, 9.999999999999999)]), min_size=1, max_size=8))
    def test_floats(self, xs):
        """float.__repr__ as json.dumps writes it, also where orjson would not (below 1e-4)."""
        payload = bson.encode({"x": xs[0], "l": xs, "d": {"y": xs[-1]}})
        self.assertIsNotNone(check_json_fields([payload], ())[0])

    @settings(max_examples=500)
    @given(st.one_of(st.integers(MS_MIN, MS_MAX), st.integers(-10**12, 10**12), st.sampled_from(
        [MS_MIN, MS_MIN + 1, MS_MAX, MS_MAX - 999, -1, 0, 1, -999, -1000, -1001, 951782400000, 951868800000,
         -2208988800000, 4107542400000, 253402214400000])))
    def test_datetimes(self, ms):
        """isoformat with Z, microseconds only when not zero; floor division below the epoch; leap
        years; the first and last instants of years 1 and 9999."""
        payload = document([b"\x09timestamp\x00" + _i64(ms), b"\x04l\x00" + document([b"\x090\x00" + _i64(ms)])])
        got = check_json_fields([payload], ("timestamp",))[0]
        self.assertEqual(got[1], ms)
        self.assertEqual(type(got[1]), int)

    def test_integers(self):
        for n in [0, -1, 1, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**63 - 1, -2**63, 10**18, -10**18]:
            with self.subTest(n=n):
                payload = document([b"\x12i\x00" + _i64(n)] + ([b"\x10j\x00" + _i32(n)] if -2**31 <= n < 2**31 else []))
                self.assertIsNotNone(check_json_fields([payload], ())[0])

    def test_field_values(self):
        """Each field asked for: a str, a datetime's milliseconds, None where absent; any other
        type leaves the whole payload to Python."""
        at = datetime.datetime(1960, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
        payload = bson.encode({"s": "é", "t": at, "n": None, "i": 5, "d": {"s": "x"}, "e": ""})
        json_bytes = codec.event_json_bytes(decode_event(payload))
        for names, expected in [(("s",), ("é",)), (("t",), (-315619199999,)),
                                (("absent", "s", "s"), (None, "é", "é")), ((), ()),
                                (("e", "t", "s"), ("", -315619199999, "é")), (("\ud800",), (None,)),
                                (("d.s",), (None,)), (("S",), (None,)), (("s\x00",), (None,)), (("",), (None,)),
                                (("a", "b", "c", "d.", "e.", "f", "g", "h"), (None,) * 8)]:
            with self.subTest(names=names):
                self.assertEqual(check_json_fields([payload], names), [(json_bytes, *expected)])
        for name in ("n", "i", "d"):
            with self.subTest(name=name):
                self.assertEqual(native._native.json_fields([payload], ("s", name)), [None])
        self.assertEqual(native._native.json_fields([document([b"\x02\x00" + bson_string(b"v")])], ("",)),
                         [(b'{"":"v"}', "v")])
        # A time only before `times_before`: after it, a time leaves the payload to Python too.
        for names, times_before, expected in [(("t", "s"), 1, [(json_bytes, -315619199999, "é")]),
                                              (("s", "t"), 1, [None]), (("s", "t"), 0, [None]),
                                              (("s", "t"), 2, [(json_bytes, "é", -315619199999)])]:
            with self.subTest(names=names, times_before=times_before):
                self.assertEqual(check_json_fields([payload], names, times_before), expected)

    def test_many_keys(self):
        """More keys than the pairwise check takes (16): a repeat anywhere is still found."""
        for count in (16, 17, 100, 1000):
            keys = [f"k{i}" for i in range(count)]
            with self.subTest(count=count):
                self.assertIsNotNone(check_json_fields([document([element(k, k) for k in keys])], ("k5",))[0])
                for first, second in ((0, count - 1), (count - 2, count - 1), (count // 2, 0)):
                    repeated = keys[:second] + [keys[first]] + keys[second + 1:]
                    nested = document([b"\x03d\x00" + document([element(k, None) for k in repeated])])
                    for payload in (document([element(k, 1) for k in repeated]), nested):
                        self.assertEqual(native._native.json_fields([payload], ()), [None])

    def test_deep_nesting(self):
        """Documents and arrays JSON_DEPTH_CAP (100) deep counting the payload's own: written;
        deeper: left to Python (which, far deeper, cannot decode them)."""
        for depth, written in ((1, True), (2, True), (99, True), (100, True), (101, False), (254, False),
                               (255, False), (2000, False)):
            for array_every in (2, 1000):
                with self.subTest(depth=depth, array_every=array_every):
                    payload = nested_payload(depth, array_every)
                    got = check_json_fields([payload], ())[0]
                    self.assertEqual(got is not None, written)
        self.assertIsNone(json_fields_reference(nested_payload(5000), ()))

    def test_a_batch_in_order(self):
        good = bson.encode({"topic": "a"})
        payloads = [good, b"junk", bson.encode({"topic": 1}), bson.encode({}), good]
        got = check_json_fields(payloads, ("topic",))
        self.assertEqual(got, [(b'{"topic":"a"}', "a"), None, None, (b"{}", None), (b'{"topic":"a"}', "a")])
        self.assertEqual(native._native.json_fields([], ("topic",)), [])
        self.assertEqual(native._native.json_fields((p for p in [good]), ()), [(b'{"topic":"a"}',)])

    def test_wrong_arguments(self):
        good = bson.encode({"a": 1})
        for args, error in [((good, ()), TypeError), (([good, bytearray(good)], ()), TypeError),
                            (([good, memoryview(good)], ()), TypeError), (([good, "x"], ()), TypeError),
                            ((None, ()), TypeError), (([good], ["a"]), TypeError), (([good], "a"), TypeError),
                            (([good], ("a", b"b")), TypeError), (([good], ("a",) * 9), ValueError),
                            (([good],), TypeError)]:
            with self.subTest(args=args):
                with self.assertRaises(error):
                    native._native.json_fields(*args)

    def test_failed_allocations(self):
        """Each allocation json_fields makes failing in turn (and every one from there on): a
        MemoryError, or the result it gives with memory to spare, never another result or a crash."""
        import _testcapi
        now = datetime.datetime(2026, 1, 2, tzinfo=UTC)
        big = [{f"k{i}": "x" * 5000 for i in range(20)}]  # past the buffer's first size and 16 keys
        payloads = [bson.encode({"timestamp": now, "topic": "é", "f": 0.5, "k": big}), b"junk", bson.encode({"a": 1})]
        names = ("timestamp", "topic", "\ud800")
        expected = native._native.json_fields(payloads, names)
        for start, stop in [(i, i + 1) for i in range(40)] + [(i, 0) for i in range(40)]:
            with self.subTest(start=start, stop=stop):
                _testcapi.set_nomemory(start, stop)
                try:
                    got = native._native.json_fields(payloads, names)
                except MemoryError:
                    continue
                finally:
                    _testcapi.remove_mem_hooks()
                self.assertEqual(got, expected)

    def test_the_switch(self):
        """native.json_fields is the compiled function where compiled paths are in use, else None."""
        payloads = [bson.encode({"topic": "t"})]
        got = native.json_fields(payloads, ("topic",))
        self.assertEqual(got, None if not native.COMPILED else [(b'{"topic":"t"}', "t")])
