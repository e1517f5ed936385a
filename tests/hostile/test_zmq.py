"""The ZeroMQ sources under hostile frames: random bytes, BSON that decodes to the wrong shapes
(no type, a type that is not a string, nested too deep, big numbers, '$' keys, NUL in keys,
repeated keys, invalid UTF-8), JSON garbage, and frames up to `zmq.max_message_bytes`.

After each batch of frames the test sends a sentinel event on the same socket (ZeroMQ keeps one
sender's frames in order): once it is journaled, every earlier frame has been dealt with, so
/status must count each bad frame as one rejection and each good one as accepted, the journal
must hold exactly the good ones in order, and the source must still be serving.
"""
import itertools
import json
import struct

import bson
from bson import Decimal128, Int64, ObjectId, Regex
from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile.strategies import any_values, deep, json_body, json_values, raw_events
from tests.support import wait_until
from tests.test_zmq import ZmqCase
from zspark.event import InvalidEvent, normalize
from zspark.sources.zmq import COMMANDS, decode_bson, decode_json

LIMIT = 64 * 1024  # zmq.max_message_bytes for these tests: every crafted frame is within it
_uids = itertools.count()


def good_event(uid):
    return {"type": "good", "context": {"uid": uid}}


def _element(kind, name, payload):
    return bytes([kind]) + name + b"\x00" + payload


def _string(value):
    return struct.pack("<i", len(value) + 1) + value + b"\x00"


def raw_document(*elements):
    """A BSON document from raw elements: what bson.encode will not produce."""
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _padded(size, uid):
    """A good BSON event of exactly `size` bytes."""
    doc = {"type": "good", "context": {"uid": uid, "pad": ""}}
    doc["context"]["pad"] = "p" * (size - len(bson.encode(doc)))
    return bson.encode(doc)


# Frames that must be refused, each for its own reason (and the reason is in the comment).
BAD_BSON = [
    bson.encode({"context": {}}),  # no type
    bson.encode({"type": 5}), bson.encode({"type": ["x"]}), bson.encode({"type": {"a": "b"}}),
    bson.encode({"type": ""}),
    bson.encode({"type": None}), bson.encode({"type": b"bytes"}),
    bson.encode({"type": "x", "context": deep(33)}), bson.encode({"type": "x", "extra": deep(200)}),
    bson.encode({"type": "x", "context": {"d": Decimal128("1e6000")}}),
    bson.encode({"type": "x", "context": {"$where": "1"}}), bson.encode({"type": "x", "$where": "1"}),
    bson.encode({"type": "x", "context": {"r": Regex("a")}}),
    bson.encode({"$ref": "c", "$id": 1}),  # decodes to a DBRef, not a document
    bson.encode({"$command": "drop", "type": "x"}), bson.encode({"$command": 5, "type": "x"}),
    bson.encode({"$command": "event_noval", "type": "x", "bad": {"$k": 1}}),
    raw_document(_element(2, b"type", _string(b"x")), _element(0x10, b"a", b"\x01\x00\x00\x00") [:-1]),  # torn
    raw_document(_element(2, b"type", _string(b"caf\xe9"))),  # not UTF-8
    raw_document(_element(2, b"type", _string(b"x")), _element(3, b"context", raw_document(
        _element(2, b"a\xff", _string(b"v"))))),  # a key that is not UTF-8
    raw_document(_element(2, b"type", _string(b"x")), _element(2, b"type", _string(b""))),  # the last `type` counts
    raw_document(_element(2, b"type", _string(b"x")), _element(2, b"ip", _string(b"1.2.3.4\x00evil"))),
    raw_document(_element(2, b"type", _string(b"x")), _element(0x12, b"stimestamp", struct.pack("<q", 2**62))),
    raw_document(_element(2, b"type", _string(b"x")), _element(9, b"stimestamp", struct.pack("<q", -2**63))),
    raw_document(_element(2, b"type", _string(b"x")), _element(0x7F, b"context", b"")),  # MaxKey as context
    bson.encode({"type": "x"})[:-1], bson.encode({"type": "x"}) + b"\x00", b"", b"\x00" * 4, b"\xff" * 4,
    b"\x05\x00\x00\x00\x00",  # an empty document: no type
]
BAD_JSON = [
    b"", b"{", b"[]", b"[{\"type\":\"x\"}]", b'"x"', b"1", b"null", b"\xff", b'{"type":"caf\xe9"}',
    b'{"type":"x","context":{"n":NaN}}', b'{"type":"x","stimestamp":Infinity}',
    b'{"type":"x","stimestamp":1' + b"0" * 400 + b"}", b'{"type":"x","timestamp":-1' + b"0" * 400 + b"}",
    b'{"type":"x","context":{"n":' + b"9" * 30 + b"}}", b'{"type":"x","context":{"n":' + b"9" * 5000 + b"}}",
    b"[" * 60000, b'{"type":"x","context":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"type":"x","context":{"s":"\\ud800"}}', b'{"type":"x","context":{"a\\u0000b":1}}',
    b'{"type":"x","context":{"$gt":1}}', b'{"type":"x"} {"type":"y"}',
    b'{"$command":"nope","type":"x"}', b'{"$command":"event_noval","type":"x","\\udc80":1}',
]


def expected_outcome(frame, decode):
    """True if the source should take `frame`: the rule for frames the test did not craft."""
    try:
        doc = decode(frame)
    except Exception:
        return False
    if not isinstance(doc, dict):
        return False
    command = doc.pop("$command", "event")
    if command not in COMMANDS:
        return False
    try:
        normalize(doc, "zmq", "node", trusted=command == "event_noval")
    except InvalidEvent:
        return False
    return True


def frames(fmt):
    """Lists of (frame, what must come of it) for the `fmt` ("bson" or "json") socket: the uid of
    a good event that must be journaled, None for a frame that must be refused, "?" for a
    generated frame that the rule says must be journaled."""
    encode = bson.encode if fmt == "bson" else json_body
    decode = decode_bson if fmt == "bson" else decode_json

    def good(fields):
        uid = f"u{next(_uids)}"
        return encode({**good_event(uid), **fields}), uid

    def padded(size):
        uid = f"u{next(_uids)}"
        return _padded(size, uid), uid

    def judged(value):
        try:
            frame = value if isinstance(value, bytes) else encode(value)
        except Exception:  # not encodable (a set, an int over 64 bits...): nothing to send
            return None
        return frame, ("?" if expected_outcome(frame, decode) else None)

    goods = st.fixed_dictionaries({}, optional={
        "level": st.sampled_from(["info", "warn"]), "stimestamp": st.sampled_from([1700000000, "2026-01-01T00:00:00Z"]),
        "extra": st.sampled_from([[1, 2.5, None, True], {"k": "v"}, "s", -(2**63)]),
        "$command": st.sampled_from(COMMANDS)}).map(good)
    if fmt == "bson":
        goods |= st.sampled_from([LIMIT, LIMIT - 1, 1024]).map(padded)
        goods |= st.just({"extra": {"big": Int64(2**63 - 1), "oid": ObjectId(), "blob": b"\x00"}}).map(good)
    crafted = st.sampled_from(BAD_BSON if fmt == "bson" else BAD_JSON).map(lambda frame: (frame, None))
    generated = (raw_events(any_values if fmt == "bson" else json_values) | st.binary(max_size=64)).map(judged).filter(
        lambda pair: pair is not None)
    return st.lists(crafted | goods | generated, min_size=1, max_size=8)


class HostileZmqTest(ZmqCase):
    zmq_settings = {"max_message_bytes": LIMIT}

    def setUp(self):
        super().setUp()
        self.sockets = {"zmq_bson": self.push(self.bson_addr), "zmq_json": self.push(self.json_addr)}
        self.seen = 0  # journal events already checked

    def counts(self, name):
        stats = self.source_stats(name)
        return stats["accepted"], stats["rejected"]

    def check(self, name, sent):
        """Send `sent` [(frame, uid)] and a sentinel on one socket; check what came of them."""
        sock = self.sockets[name]
        accepted, rejected = self.counts(name)
        # A frame on which validation itself failed is rejected too, but logged at ERROR: a bug.
        with self.assertNoLogs("zspark.zmq", "ERROR"):
            self.send_and_check(name, sock, sent, accepted, rejected)

    def send_and_check(self, name, sock, sent, accepted, rejected):
        for frame, _ in sent:
            sock.send(frame)
        sentinel = f"sentinel-{next(_uids)}"
        sock.send((bson.encode if name == "zmq_bson" else json_body)(good_event(sentinel)))
        good = [uid for _, uid in sent if uid is not None] + [sentinel]
        expected = (accepted + len(good), rejected + len(sent) + 1 - len(good))

        def arrived():
            events = self.events()[self.seen:]
            return events if events and events[-1].get("context", {}).get("uid") == sentinel else None
        events = wait_until(arrived, 15, message="the sentinel sent after the frames")
        self.seen += len(events)
        self.assertEqual([e["source"] for e in events], [name] * len(events))
        self.assertEqual(len(events), len(good), "the journal does not hold exactly the good frames")
        self.assertEqual([e.get("context", {}).get("uid") if uid != "?" else "?" for e, uid in zip(events, good)],
                         good, "the journal does not hold the good frames in the order sent")
        try:
            wait_until(lambda: self.counts(name) == expected, 10, message="the counts")
        except AssertionError:
            self.fail(f"{name}: /status (accepted, rejected) = {self.counts(name)}, expected {expected}")

    @given(frames("bson"))
    @example([(frame, None) for frame in BAD_BSON])
    def test_bson_socket(self, sent):
        self.check("zmq_bson", sent)

    @given(frames("json"))
    @example([(frame, None) for frame in BAD_JSON])
    def test_json_socket(self, sent):
        self.check("zmq_json", sent)

    def test_frames_for_the_other_socket(self):
        self.check("zmq_json", [(bson.encode(good_event("x")), None)])
        self.check("zmq_bson", [(json.dumps(good_event("y")).encode(), None)])
