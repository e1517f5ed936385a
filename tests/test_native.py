"""The compiled hot paths against their pure-Python reference (tests/native_reference.py), on
random, hostile and mutated input; and the switch between them (zspark/native.py)."""
import datetime
import os
import subprocess
import sys
import unittest

import bson
from bson import Binary, Int64, ObjectId
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from zspark import native
from zspark.event import Limits
from zspark.journal import codec, record

from .native_reference import (check_encode_batch, check_parse_head, check_plain_events, check_plain_frame, document,
                               element, native_verdict, python_verdict)

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
