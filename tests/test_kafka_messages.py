"""What the Kafka sink produces, byte for byte: the JSON of a message is `event_to_json(event)`
whichever encoder wrote it (orjson where it agrees with json, json elsewhere), for every kind of
value an event can hold, read back from the real local broker (Tansu, started on a free port by
this module); topics and keys as the templates say. And how the sink reads its delivery reports
(one callback for the whole batch), with a scripted producer: a batch is confirmed only when
every report came back without error, a message refused for good is matched to its event for the
dead-letter file, and a refusal that cannot be matched fails the batch rather than pass it over.
Also the forwarder's batch decoder (codec.decode_events): the events decode_event gives, or an
error whenever any payload is not exactly one document."""
import collections
import datetime
import json
import socket
import sys
import unittest
import unittest.mock

import bson
import gevent
from bson import Binary, Int64, ObjectId
from confluent_kafka import KafkaError

from zspark.errors import PermanentDeliveryError, TransientDeliveryError
from zspark.config import KafkaConfig
from zspark.journal.codec import decode_event, decode_events, encode_event, event_json_bytes, event_to_json
from zspark import _native, native
from zspark.hours import count_hours
from zspark.sinks import kafka as kafka_sink_module
from zspark.sinks.kafka import KafkaSink

from .support import TempDir, closed_port, kafka_read, start_broker, wait_until

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)

# One context per kind of value an event can hold (and a few it cannot, which json must still write).
VALUES = {
    "ascii": "plain text", "empty": "", "non_ascii": "naïve ☃ 中文 \U0001F600 \u2028\u2029",
    "escapes": "quote \" backslash \\ slash / \n\r\t\b\f \x01\x1f \x7f",
    "ints": [0, 1, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)],
    "int64": [Int64(2**63 - 1), Int64(-(2**63)), Int64(5)],
    "floats": [0.0, -0.0, 1.0, 0.5, 0.1, 0.30000000000000004, 1e-4, 1.5e-4, 123456789012345.67,
               1e15, 1e16, 1.2345e16, 1e21, 1e22, 1.7976931348623157e308, -2.5e300],
    "tiny_floats": [1e-5, 1e-07, 2.5e-9, 9.999e-5, -3e-06, 1e-10, 5e-324],
    "bools_and_null": [True, False, None],
    "nested": {"a": {"b": [1, {"c": [[], {}]}], "": "empty key"}, "list": [[["deep"]]]},
    "datetimes": [datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                  datetime.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
                  datetime.datetime(1, 1, 1, tzinfo=UTC), datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
                  datetime.datetime(999, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)],
    "object_id": ObjectId("65a1e2b3c4d5e6f708192a3b"),
    "bytes": [b"", b"\x00\xffbinary", Binary(b"\x01\x02", 4)],
}


def decoded(event, offset=7):
    """`event` as the forwarder hands it to a sink: normalized fields, journaled, decoded."""
    event = {"timestamp": NOW, **event, "source": "zmq_bson", "node": "node-1"}
    return decode_event(encode_event(event, offset))


def python_calls(function, *args, **kw):
    """function(*args, **kw), and a Counter of the Python functions it called, by name."""
    calls = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            calls[frame.f_code.co_name] += 1

    sys.setprofile(profile)
    try:
        return function(*args, **kw), calls
    finally:
        sys.setprofile(None)


def expected(event):
    return event_to_json(event).encode("utf-8")


class Encoding(unittest.TestCase):
    def test_each_kind_of_value_is_written_as_event_to_json_writes_it(self):
        for name, value in VALUES.items():
            with self.subTest(name):
                event = decoded({"type": "t", "context": {name: value}})
                self.assertEqual(event_json_bytes(event), expected(event))
                self.assertEqual(event_json_bytes(event), expected(event))  # the same again

    def test_what_the_decoder_never_gives_is_written_as_json_writes_it(self):
        cases = {
            "naive and offset datetimes": {"a": datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
                                           "b": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone(
                                               datetime.timedelta(hours=-3, minutes=-30)))},
            "not finite": {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")},
            "tuples, sets, keys that are not strings": {"t": (1, 2), "s": {3}, 1: "one", None: 2, 1.5: True},
            "subclasses and other BSON types": {"code": bson.Code("x"), "regex": bson.Regex("a.*"),
                                                "dec": bson.Decimal128("1.5"), "ts": bson.Timestamp(1, 2)},
            "deeper than orjson goes": {"d": _deep(300)},
            "integers beyond 64 bits": {"big": 2**64, "neg": -(2**63) - 1},
        }
        for name, context in cases.items():
            with self.subTest(name):
                event = {"type": "t", "context": context}
                self.assertEqual(event_json_bytes(event), expected(event))

    def test_text_json_cannot_encode_fails_alike(self):
        event = {"type": "t", "context": {"lone": "\ud800"}}
        with self.assertRaises(UnicodeEncodeError):
            expected(event)
        with self.assertRaises(UnicodeEncodeError):
            event_json_bytes(event)


class DecodeEvents(unittest.TestCase):
    def test_a_batch_decodes_to_what_each_record_decodes_to(self):
        payloads = [encode_event({"timestamp": NOW, "type": "t", "node": "n", "context": {name: value}}, offset)
                    for offset, (name, value) in enumerate(VALUES.items())]
        self.assertEqual(decode_events(payloads), [decode_event(p) for p in payloads])
        self.assertEqual(decode_events([]), [])

    def test_a_payload_that_is_not_exactly_one_document_fails_the_batch(self):
        a, b = bson.encode({"a": 1}), bson.encode({"b": "x"})
        for name, payloads in {"trailing bytes": [a + b"\x00", b], "two documents in one": [a + b, b],
                               "cut short": [a[:-1], b], "shorter than a size field": [b"\x05\x00", a],
                               "not BSON": [b"\x06\x00\x00\x00\x01\x00", a]}.items():
            with self.subTest(name):
                with self.assertRaises(Exception):
                    decode_events(payloads)


def _deep(depth):
    value = 1
    for _ in range(depth):
        value = {"d": value}
    return value


class Broker(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir()
        cls.broker = start_broker(cls.tmp.join("state"))

    @classmethod
    def tearDownClass(cls):
        cls.broker.stop()
        cls.tmp.remove()

    def sink(self, **config):
        sink = KafkaSink(KafkaConfig(enabled=True, brokers=self.broker.address, message_timeout_ms=20000, **config))
        self.addCleanup(sink.close)
        return sink

    def test_the_messages_are_event_to_json_of_each_event_byte_for_byte(self):
        sink = self.sink(topic="values-{env}")
        items = [(offset, decoded({"type": "t", "env": "a", "context": {name: value}}, offset))
                 for offset, (name, value) in enumerate(VALUES.items())]
        self.assertEqual(sink.send(items), [])
        messages = kafka_read(self.broker.address, ["values-a"], done=lambda m: len(m) >= len(items))
        self.assertEqual(sorted(m.value for m in messages), sorted(expected(event) for _, event in items))
        self.assertEqual({m.key for m in messages}, {None})

    def test_topics_and_keys_follow_the_templates(self):
        sink = self.sink(key_field="env")
        events = [decoded({"type": "t", "topic": "routed", "env": "prod", "context": {"i": 0}}, 0),
                  decoded({"type": "t", "env": "dev", "context": {"i": 1}}, 1),  # no topic: default
                  decoded({"type": "t", "topic": "", "context": {"i": 2}}, 2),  # empty: default
                  decoded({"type": "t", "topic": "bad topic!", "context": {"i": 3}}, 3)]
        notice = {"timestamp": NOW, "type": "node_online", "source": "notice", "node": "node-1"}
        items = list(enumerate(events)) + [(4, notice)]
        rejected = sink.send(items)
        self.assertEqual([(offset, event["context"]["i"]) for offset, event, _ in rejected], [(3, 3)])
        self.assertIn("not a legal Kafka topic name", rejected[0][2])
        messages = kafka_read(self.broker.address, ["routed", "zspark", "zspark.notify"],
                              done=lambda m: len(m) >= 4)
        got = {(m.topic, m.key, json.loads(m.value)["_id"] if m.topic != "zspark.notify" else None)
               for m in messages}
        self.assertEqual(got, {("routed", b"prod", str(events[0]["_id"])), ("zspark", b"dev", str(events[1]["_id"])),
                               ("zspark", None, str(events[2]["_id"])), ("zspark.notify", b"node-1", None)})
        self.assertEqual(len(messages), 4)

    def test_a_confirmed_batch_costs_no_python_call_per_message(self):
        """Confirming a batch is the producer's queue draining with no error reported, not a
        delivery callback per message (which cost as much as producing it)."""
        sink = self.sink(topic="quiet")
        items = [(offset, decoded({"type": "t", "context": {"i": offset}}, offset)) for offset in range(2000)]
        rejected, calls = python_calls(sink.send, items)
        self.assertEqual(rejected, [])
        self.assertEqual(calls["on_delivery"], 0)
        messages = kafka_read(self.broker.address, ["quiet"], done=lambda m: len(m) >= 2000)
        self.assertEqual(sorted(json.loads(m.value)["context"]["i"] for m in messages), list(range(2000)))

    def test_records_of_the_common_shape_cost_no_python_call_per_message(self):
        """From the records as read to the confirmed batch, compiled: no Python call per message
        (no decoding to dicts, no JSON writing in Python, no callback). (Under ZSPARK_PURE=1 too:
        the compiled function is what this is about.)"""
        compiled = unittest.mock.patch.object(native, "json_fields", _native.json_fields)
        compiled.start()
        self.addCleanup(compiled.stop)
        sink = self.sink(topic="quiet-records", key_field="level")
        records = [(offset, encode_event({"timestamp": NOW, "type": "t", "level": f"l{offset % 7}",
                                          "context": {"i": offset, "f": 0.5, "ok": True}, "source": "http",
                                          "node": "node-1"}, offset)) for offset in range(2000)]
        sent, calls = python_calls(sink.send_records, records, hours=True)
        self.assertEqual((sent.rejected, sent.undecodable, sent.delivered), ([], [], 2000))
        self.assertLess(sum(calls.values()), 200, calls.most_common(5))
        self.assertEqual(sent.hours, {(1772600400, "quiet-records"): 2000})
        messages = kafka_read(self.broker.address, ["quiet-records"], done=lambda m: len(m) >= 2000)
        self.assertEqual(sorted((m.key, m.value) for m in messages),
                         sorted((f"l{offset % 7}".encode(), expected(decode_event(payload)))
                                for offset, payload in records))

    def test_records_are_sent_as_their_events_are(self):
        sink = self.sink(topic="records-{env}", key_field="env")
        events = [{"type": "t", "env": "a", "context": {name: value}} for name, value in VALUES.items()]
        records = [(offset, encode_event({"timestamp": NOW, **event, "source": "zmq_bson", "node": "node-1"}, offset))
                   for offset, event in enumerate(events)]
        sent = sink.send_records(records)
        self.assertEqual((sent.rejected, sent.undecodable, sent.delivered), ([], [], len(records)))
        messages = kafka_read(self.broker.address, ["records-a"], done=lambda m: len(m) >= len(records))
        self.assertEqual(sorted(m.value for m in messages),
                         sorted(expected(decode_event(payload)) for _, payload in records))
        self.assertEqual({m.key for m in messages}, {b"a"})

    def test_bson_and_plain_formats_are_unchanged(self):
        event = decoded({"type": "t", "topic": "formats", "level": "info", "context": {"x": 1.5}})
        self.sink(format="bson").send([(0, event)])
        self.sink(format="plain", topic="formats-plain").send([(1, event)])
        (bson_message,) = kafka_read(self.broker.address, ["formats"], done=lambda m: len(m) >= 1)
        self.assertEqual(bson_message.value, bson.encode(event))
        (plain,) = kafka_read(self.broker.address, ["formats-plain"], done=lambda m: len(m) >= 1)
        self.assertEqual(plain.value.decode().split("\t"),
                         ["2026-03-04T05:06:07.891000Z", "t", "info", "formats", "", "", "", "", "", '{"x":1.5}'])


class FakeMessage:
    def __init__(self, topic, value, key):
        self._topic, self._value, self._key = topic, value, key

    def topic(self):
        return self._topic

    def value(self):
        return self._value

    def key(self):
        return self._key


class ScriptedProducer:
    """Takes messages and reports each at the next poll, to the producer's `on_delivery`, with
    the error `errors(value)` gives (None: delivered, not reported, as with
    delivery.report.only.error)."""

    def __init__(self, errors, on_delivery):
        self.errors = errors
        self.on_delivery = on_delivery
        self.pending = []
        self.produced = []

    def produce(self, topic, value=None, key=None):
        self.produced.append((topic, key, value))
        self.pending.append(FakeMessage(topic, value, key))

    def poll(self, timeout=None):
        pending, self.pending = self.pending, []
        for msg in pending:
            error = self.errors(msg.value())
            if error is not None:
                self.on_delivery(error, msg)
        return len(pending)

    def flush(self, timeout=None):
        self.poll()
        return 0

    def purge(self):
        self.pending = []

    def __len__(self):  # what the producer's queue still holds: messages not yet reported
        return len(self.pending)


class Reports(unittest.TestCase):
    def sink(self, errors, **config):
        sink = KafkaSink(KafkaConfig(enabled=True, brokers="127.0.0.1:9", **config))
        real = sink.producer
        sink.producer = ScriptedProducer(errors, lambda err, msg: sink._failed.append((err, msg)))
        self.addCleanup(real.purge)
        return sink

    def items(self, contexts):
        return [(offset, decoded({"type": "t", "topic": "reports", "context": context}, offset))
                for offset, context in enumerate(contexts)]

    def test_a_batch_whose_reports_all_came_back_ok_is_confirmed(self):
        sink = self.sink(lambda value: None)
        items = self.items([{"i": i} for i in range(5)])
        self.assertEqual(sink.send(items), [])
        self.assertEqual([value for _, _, value in sink.producer.produced], [expected(e) for _, e in items])

    def test_a_transient_failure_of_one_message_fails_the_batch(self):
        sink = self.sink(lambda value: KafkaError(KafkaError._MSG_TIMED_OUT) if b'"i":3' in value else None)
        with self.assertRaisesRegex(TransientDeliveryError, "1 of 5 message"):
            sink.send(self.items([{"i": i} for i in range(5)]))

    def test_a_message_refused_for_good_is_matched_to_its_event(self):
        too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        sink = self.sink(lambda value: too_large if b'"big"' in value else None)
        items = self.items([{"i": 0}, {"big": 1}, {"i": 2}, {"big": 3}])
        rejected = sink.send(items)
        self.assertEqual([(offset, event) for offset, event, _ in rejected], [items[1], items[3]])
        self.assertTrue(all("Kafka refused it" in reason for _, _, reason in rejected))

    def test_identical_messages_are_matched_by_count(self):
        # The plain format without the id: two events, one message text, both refused.
        too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        sink = self.sink(lambda value: too_large if value.startswith(b"same") else None,
                         format="plain", plain_fields=["type"])
        items = [(offset, decoded({"type": text, "topic": "reports"}, offset))
                 for offset, text in enumerate(["same", "other", "same"])]
        self.assertEqual([offset for offset, _, _ in sink.send(items)], [0, 2])

    def test_a_refusal_that_matches_no_event_fails_the_batch(self):
        sink = self.sink(lambda value: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        real_produce = sink.producer.produce
        sink.producer.produce = lambda topic, value, key: real_produce(topic, value + b" ", key)
        with self.assertRaisesRegex(PermanentDeliveryError, "not delivered"):
            sink.send(self.items([{"i": 0}]))


class Records(unittest.TestCase):
    """send_records, the forwarder's way in: journal records as read, most never decoded (the
    compiled path), must come out as the very messages, refusals and hour counts that `send`
    of their decoded events gives."""

    def sink(self, errors=lambda value: None, **config):
        sink = KafkaSink(KafkaConfig(enabled=True, brokers="127.0.0.1:9", **config))
        real = sink.producer
        sink.producer = ScriptedProducer(errors, lambda err, msg: sink._failed.append((err, msg)))
        self.addCleanup(real.purge)
        return sink

    def batch(self):
        """Records of every shape: plain events, every kind of value, topics routed, missing,
        empty, illegal and not allowed, keys of text and of a number, a notice, an event of an
        hour before, and a record that is no event."""
        events = [{"type": "t", "topic": "routed", "env": "prod", "context": {"i": 0}},
                  {"type": "t", "env": "dev", "context": {"i": 1}},
                  {"type": "t", "topic": "", "context": {"i": 2}},
                  {"type": "t", "topic": "bad topic!", "env": "x", "context": {"i": 3}},
                  {"type": "t", "topic": "secret-1", "env": "x", "context": {"i": 4}},
                  {"type": "t", "topic": "routed", "env": 5, "context": {"i": 5}},
                  {"type": "t", "topic": "routed", "env": "prod", "timestamp": NOW - datetime.timedelta(hours=1)}]
        events += [{"type": "v", "topic": "values", "env": name, "context": {name: value}}
                   for name, value in VALUES.items()]
        records = [(offset, encode_event({"timestamp": NOW, **event, "source": "zmq_bson", "node": "node-1"}, offset))
                   for offset, event in enumerate(events)]
        records.append((len(records), encode_event({"timestamp": NOW, "type": "node_online", "source": "notice",
                                                    "node": "node-1"}, len(records))))
        records.append((len(records), b"\x05\x00\x00\x00no event"))
        return records

    def test_the_messages_refusals_and_hours_are_those_of_the_decoded_events(self):
        too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)

        def errors(value):
            return too_large if b'"ascii"' in value else None
        config = dict(key_field="env", topics_allowed=["routed", "values", "zspark", "bad*"])
        by_events, by_records = self.sink(errors, **config), self.sink(errors, **config)
        records = self.batch()
        items = [(offset, decode_event(payload)) for offset, payload in records[:-1]]
        rejected = by_events.send(items)
        sent = by_records.send_records(records, hours=True)
        self.assertEqual(by_records.producer.produced, by_events.producer.produced)
        self.assertEqual(sent.rejected, rejected)
        self.assertEqual(sorted(offset for offset, _, _ in rejected), [3, 7])  # illegal name, refused
        self.assertEqual([offset for offset, _, _ in sent.undecodable], [len(records) - 1])
        self.assertEqual(sent.delivered, len(items) - 2)
        refused = {offset for offset, _, _ in rejected}
        self.assertEqual(sent.hours, count_hours([event for offset, event in items if offset not in refused],
                                                 by_events.topic_for))
        self.assertEqual(sent.hours[NOW.replace(minute=0, second=0, microsecond=0).timestamp() - 3600, "routed"], 1)
        self.assertEqual(by_records.topics.redirected, by_events.topics.redirected)
        self.assertEqual(by_records.topics.redirected, 1)  # secret-1: not allowed

    def test_templates_and_keys_of_any_field_route_as_the_decoded_events_do(self):
        """Topic templates and keys over fields that hold times (the sender's stimestamp), over
        more fields than the compiled path hands back, and illegal names met again once the cap
        is full: the same messages, refusals and counts either way."""
        stamp = datetime.datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
        events = [{"type": "t", "topic": "bad name", "stimestamp": stamp, "env": "e", "level": "l"},
                  {"type": "t", "topic": "a", "stimestamp": stamp, "env": "e", "level": "l"},
                  {"type": "t", "topic": "bad name", "env": "e", "level": "l"},
                  {"type": "u", "topic": "b", "stimestamp": stamp, "env": "f", "level": "m"}]
        records = [(offset, encode_event({"timestamp": NOW, **event, "source": "http", "node": "node-1"}, offset))
                   for offset, event in enumerate(events)]
        items = [(offset, decode_event(payload)) for offset, payload in records]
        for config in [dict(key_field="stimestamp"), dict(topic="ev.{stimestamp:%Y%m%d}"),
                       dict(topic="{stimestamp}"), dict(max_topics=1),
                       dict(topic="{type}.{env}.{level}.{topic}.{type}.{env}.{level}", key_field="topic")]:
            with self.subTest(**config):
                by_events, by_records = self.sink(**config), self.sink(**config)
                rejected = by_events.send(items)
                sent = by_records.send_records(records, hours=True)
                self.assertEqual(by_records.producer.produced, by_events.producer.produced)
                self.assertEqual(sent.rejected, rejected)
                self.assertEqual(by_records.topics.redirected, by_events.topics.redirected)
                refused = {offset for offset, _, _ in rejected}
                self.assertEqual(sent.hours, count_hours([e for o, e in items if o not in refused],
                                                         by_events.topic_for))
        keyed = self.sink(key_field="stimestamp")
        keyed.send_records(records)  # the two "bad name" are dead-lettered, not produced
        self.assertEqual([key for _, key, _ in keyed.producer.produced], [b"2025-12-31T23:30:00Z"] * 2)

    def test_only_what_the_compiled_path_leaves_is_decoded(self):
        sink = self.sink(key_field="env")
        decoded_offsets = []
        real = kafka_sink_module.decode_records

        def counting(records, skipped=None):
            decoded_offsets.extend(offset for offset, _ in records)
            return real(records, skipped)
        kafka_sink_module.decode_records = counting
        self.addCleanup(setattr, kafka_sink_module, "decode_records", real)
        records = self.batch()
        sink.send_records(records)
        if native.COMPILED:  # the number key, the binary of subtype 4, the notice, the record that is no event
            self.assertEqual(decoded_offsets, [5, 7 + list(VALUES).index("bytes"), len(records) - 2, len(records) - 1])
        else:
            self.assertEqual(decoded_offsets, [offset for offset, _ in records])


class Outage(unittest.TestCase):
    """A broker that goes away mid-batch, with a message timeout far beyond the test: the sink
    says so at once from librdkafka's error callback, and once something accepts connections at
    the broker's address again, the batch in flight is failed for a resend on a new producer
    instead of waiting out the timeout. (No broker: a bare listening socket is "back".)"""

    def test_all_brokers_down_is_reported_at_once_and_their_return_ends_the_batch_in_flight(self):
        port = closed_port()  # nothing listens here yet
        sink = KafkaSink(KafkaConfig(enabled=True, brokers=f"127.0.0.1:{port}", message_timeout_ms=600000))
        self.addCleanup(sink.close, abandon=True)
        said = []
        sink.on_destination = said.append
        items = [(0, decoded({"type": "t", "topic": "outage"}, 0))]
        sending = gevent.spawn(sink.send, items)
        self.addCleanup(sending.kill)
        wait_until(lambda: said, timeout=20, message="the sink saying the broker is down")
        self.assertEqual(said, ["Kafka: 1/1 brokers are down"])
        self.assertFalse(sending.ready(), "the batch waits for its reports meanwhile")

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        sending.join(timeout=20)
        self.assertEqual(said, ["Kafka: 1/1 brokers are down", None], "and that it answers again")
        self.assertTrue(sending.ready(), "the batch in flight ended without waiting for its timeout")
        self.assertIsInstance(sending.exception, TransientDeliveryError)
        self.assertIn("resent on a new producer", str(sending.exception))

    def test_the_probe_reaches_every_bootstrap_broker_as_librdkafka_would(self):
        from zspark.sinks.kafka import _addresses
        self.assertEqual(_addresses("127.0.0.1:9092, SSL://b2:9094,broker3,[::1]:9093,[::1]"),
                         [("127.0.0.1", 9092), ("b2", 9094), ("broker3", 9092), ("::1", 9093), ("::1", 9092)])


if __name__ == "__main__":
    unittest.main()
