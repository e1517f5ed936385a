"""The JSON the Kafka sink sends (codec.event_json_bytes: orjson where it writes what json
writes, json elsewhere) is `event_to_json(event)` byte for byte, for generated events as the
forwarder reads them from the journal and for anything at all a caller could pass: both give the
same bytes, or both fail alike."""
import datetime
import json
import math
import unittest

from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile.strategies import any_values, raw_events
from zspark.event import InvalidEvent, normalize
from zspark.journal.codec import decode_event, encode_event, event_json_bytes, event_to_json

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)


def outcome(encode, value):
    try:
        return encode(value)
    except Exception as e:  # the same kind of failure counts as the same outcome
        return type(e)


def old(event):
    return event_to_json(event).encode("utf-8")


class EventJson(unittest.TestCase):
    @given(raw_events(any_values), st.booleans(), st.integers(0, 2**40 - 1))
    def test_journaled_events_are_written_as_event_to_json_writes_them(self, raw, trusted, offset):
        try:
            event = normalize(raw, "zmq_bson", "node-1", now=NOW, trusted=trusted)
        except InvalidEvent:
            return
        event = decode_event(encode_event(event, offset))
        self.assertEqual(event_json_bytes(event), old(event))

    @given(st.dictionaries(st.text(max_size=5), any_values, max_size=8))
    @example({"x": {"y": [1e-05, 1e+16, -0.0, float("nan")]}})
    def test_anything_else_gives_the_same_bytes_or_the_same_failure(self, context):
        event = {"type": "t", "context": context}
        self.assertEqual(outcome(event_json_bytes, event), outcome(old, event))

    @given(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
        [m * 10.0**e for e in range(-12, 23) for m in (1, -1.5, 9.999999999999999)]))
    def test_floats(self, x):
        event = {"type": "t", "context": {"x": x, "list": [x, {"y": x}]}}
        self.assertEqual(event_json_bytes(event), old(event))

    @given(st.datetimes(timezones=st.none() | st.just(UTC)))
    def test_datetimes(self, moment):
        event = {"timestamp": moment, "context": {"at": moment}}
        self.assertEqual(event_json_bytes(event), old(event))
        if moment.tzinfo is not None:  # as decoded from the journal: milliseconds, UTC
            millis = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
            event = decode_event(encode_event({"timestamp": millis, "node": "n", "context": {"at": millis}}, 1))
            self.assertEqual(event_json_bytes(event), old(event))

    def test_floats_from_1e_minus_4_up_agree_across_millions(self):
        # Why orjson may write floats at all: over random doubles and every decade, the only
        # differences between orjson and json are below 1e-4 (and NaN, infinities).
        import random
        import struct

        import orjson

        rng = random.Random(20260523)
        values = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(200_000)]
        values += [m * 10.0**e for e in range(-324, 309) for m in (1, 1.5, 9.999999999999999, 1.0000000000000002)]
        for x in values:
            if math.isfinite(x) and (x == 0 or abs(x) >= 1e-4):
                self.assertEqual(orjson.dumps(x), json.dumps(x).encode(), repr(x))


if __name__ == "__main__":
    unittest.main()
