"""event.normalize under hostile input: for anything at all it returns an event or raises
InvalidEvent with a reason, an event it returns keeps within the limits, and it survives the
journal codec (BSON and back) and event_to_json unchanged."""
import datetime
import json
import math
import unittest

import bson
from bson import ObjectId
from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile.strategies import (any_values, comparable, deep, json_body, json_values, raw_events,
                                      storable_key, utf8, walk)
from zspark.event import (ASSIGNED, FIELDS, INT64_MAX, INT64_MIN, SHORT_LIMIT, InvalidEvent, Limits,
                          normalize)
from zspark.journal.codec import FrameEvent, decode_event, encode_event, event_to_json
from zspark.sources.zmq import SPLICEABLE_FIELDS, decode_bson

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
SHORT_FIELDS = ("type", "level", "topic", "env", "version")
limits = st.builds(Limits, st.integers(1, 300), st.integers(1, 6), st.integers(1, 60)) | st.just(Limits())
offsets = st.integers(0, 2**40 - 1)


def try_normalize(raw, limits=Limits(), trusted=False):
    """The event, or None if rejected; anything but InvalidEvent fails the test."""
    try:
        return normalize(raw, "http", "node-1", now=NOW, limits=limits, trusted=trusted)
    except InvalidEvent as e:
        reason = str(e)
        assert reason and utf8(reason), f"an unhelpful reason: {reason!r}"
        return None


class NormalizeTest(unittest.TestCase):
    def assert_within_limits(self, event, limits, trusted):
        self.assertIs(type(event["type"]), str)
        self.assertTrue(event["type"])
        self.assertEqual(event["timestamp"], NOW)
        self.assertEqual((event["source"], event["node"]), ("http", "node-1"))
        self.assertNotIn("_id", event)
        if not trusted:
            self.assertLessEqual(set(event), FIELDS)
        for name, value in event.items():
            self.assertTrue(storable_key(name), name)
            if name in SHORT_FIELDS:
                self.assertLessEqual(len(value.encode("utf-8")), SHORT_LIMIT, name)
            elif name in ("timestamp", "stimestamp"):
                self.assertIsInstance(value, datetime.datetime)
                self.assertEqual(value.utcoffset(), datetime.timedelta(0), name)
            elif name == "cookies":
                self.assertLessEqual(len(value), limits.max_fields)
            if name in ("context", "extra", "cookies") or name not in FIELDS:
                nodes = list(walk(value))
                if name != "cookies":
                    self.assertLessEqual(len(nodes), limits.max_fields, f"{name}: too many values")
                for node, depth in nodes:
                    self.assert_storable(node, depth, name, limits)
            elif name not in ("timestamp", "stimestamp") and name not in ASSIGNED:
                self.assertIs(type(value), str, name)
                self.assert_storable(value, 1, name, limits if name not in SHORT_FIELDS else None)

    def assert_storable(self, value, depth, name, limits):
        if type(value) in (dict, list):
            self.assertLessEqual(depth, limits.max_depth, f"{name}: nested too deep")
            if type(value) is dict:
                for key in value:
                    self.assertTrue(storable_key(key), f"{name}: key {key!r}")
        elif isinstance(value, str):
            self.assertNotIn("\x00", value, name)
            self.assertTrue(utf8(value), f"{name}: {value!r}")
            if limits is not None:
                self.assertLessEqual(len(value.encode("utf-8")), limits.max_string_bytes, f"{name}: too long")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            self.assertTrue(INT64_MIN <= value <= INT64_MAX, f"{name}: {value}")
        elif isinstance(value, float):
            self.assertTrue(math.isfinite(value), f"{name}: {value}")
        else:
            self.assertIsInstance(value, (datetime.datetime, ObjectId, bytes), name)

    def assert_survives_the_journal(self, event, offset):
        expected = comparable(event)
        record = encode_event(dict(event), offset)
        decoded = decode_event(record)
        self.assertIsInstance(decoded.pop("_id"), ObjectId)
        self.assertEqual(comparable(decoded), expected)
        text = event_to_json(decode_event(record))
        self.assertEqual(json.loads(text)["type"], event["type"])
        text.encode("utf-8")  # strict: what Kafka and /tail send

    @given(raw_events(any_values), limits, st.booleans(), offsets)
    @example({"type": "t", "context": deep(40)}, Limits(), False, 0)
    @example({"type": "t", "referrer": "r" * 100}, Limits(max_string_bytes=50), False, 0)
    @example({"type": "t", "context": {"d": datetime.datetime.min.replace(
        tzinfo=datetime.timezone(datetime.timedelta(hours=1)))}}, Limits(), False, 0)
    @example({"type": "t", "stimestamp": 10**400}, Limits(), False, 0)
    @example({"type": "t", "timestamp": -(10**400)}, Limits(), False, 0)
    def test_any_mapping_gives_a_valid_event_or_a_reason(self, raw, limits, trusted, offset):
        event = try_normalize(raw, limits, trusted)
        if event is not None:
            self.assert_within_limits(event, limits, trusted)
            self.assert_survives_the_journal(event, offset)

    @given(json_values | raw_events(json_values), offsets)
    @example({"type": "t", "stimestamp": 10**400}, 0)
    def test_json_from_the_wire(self, value, offset):
        # What a JSON sender can produce, through the decoder the sources use.
        try:
            decoded = json.loads(json_body(value))
        except RecursionError:
            return
        event = try_normalize(decoded)
        if event is not None:
            self.assert_within_limits(event, Limits(), False)
            self.assert_survives_the_journal(event, offset)

    @given(raw_events(any_values), offsets)
    def test_bson_frames_journaled_as_sent_read_back_as_validated(self, raw, offset):
        """The ZeroMQ path: a frame decoded, normalized, and (when it holds only sender fields
        in their final form) journaled by splicing, not re-encoding: the record must decode to
        exactly what the re-encoded event would."""
        if not isinstance(raw, dict):
            return
        try:
            frame = bson.encode(raw)
            doc = decode_bson(frame)
        except Exception:  # not encodable or not decodable: the sources reject such frames
            return
        event = try_normalize(doc)
        if event is None:
            return
        self.assert_within_limits(event, Limits(), False)
        self.assert_survives_the_journal(event, offset)
        if doc.keys() <= SPLICEABLE_FIELDS and None not in doc.values():
            spliced = decode_event(encode_event(FrameEvent(frame, event["timestamp"], event["source"], event["node"]),
                                                offset))
            reencoded = decode_event(encode_event(dict(event), offset))
            self.assertEqual(spliced, reencoded)


if __name__ == "__main__":
    unittest.main()
