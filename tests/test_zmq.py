"""The ZeroMQ sources end to end: a real `Server` in this process, PUSH sockets and `zsend` sending
to it, the journal and /status read back.

PUSH has no acknowledgement, so tests wait (polling, with a deadline) for a sentinel event sent
after the frames under test on the same socket: ZeroMQ keeps one sender's frames in order, so once
the sentinel is journaled every earlier frame has been dealt with.
"""
import datetime
import json
import os
import random
import socket
import subprocess
import sys
import unittest

import bson
import gevent
import zmq.green as zmq
from bson import Decimal128, Int64, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from zmq.utils.monitor import recv_monitor_message

from tests.support import ROOT, TempDir, config_data, journal_events, request, wait_until
from zspark.client import ZarkovClient, ZSparkClient
from zspark.config import from_dict
from zspark.server import Server
from zspark.sources.zmq import ZmqSource

UTC = datetime.timezone.utc
EVENT_KEYS = {"_id", "timestamp", "type", "source", "node"}


class ZmqCase(unittest.TestCase):
    zmq_settings = {}
    journal_settings = {}
    event_settings = {}

    def setUp(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        data = config_data(tmp.path, http={"port": 0},
                           zmq={"bson_bind": "tcp://127.0.0.1:*", "json_bind": "tcp://127.0.0.1:*",
                                **self.zmq_settings},
                           journal=self.journal_settings, event=self.event_settings)
        self.server = Server(from_dict(data))
        self.server.start()
        self.addCleanup(self.server.shutdown)
        self.journal_dir = self.server.config.journal.dir
        self.port = self.server.http.address[1]
        endpoints = {source.name: source.endpoint for source in self.server.zmq_sources}
        self.bson_addr = endpoints["zmq_bson"]
        self.json_addr = endpoints["zmq_json"]
        self.context = zmq.Context.instance()

    def tearDown(self):
        self.assertEqual(self.server.exit_code, 0, "a source died: the server stopped itself")

    def client(self, addr, format="bson", context=None, cls=ZSparkClient):
        client = cls(addr, context=context or self.context, format=format)
        self.addCleanup(client.close, 0)
        return client

    def push(self, addr):
        sock = self.context.socket(zmq.PUSH)
        self.addCleanup(sock.close, 0)
        sock.connect(addr)
        return sock

    def events(self):
        return journal_events(self.journal_dir)

    def wait_events(self, count, timeout=15):
        """The journal's events once there are at least `count` of them."""
        def enough():
            events = self.events()
            return events if len(events) >= count else None
        return wait_until(enough, timeout, message=f"{count} event(s) in the journal")

    def source_stats(self, name):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200)
        return json.loads(body)["sources"][name]

    def wait_counts(self, name, accepted, rejected):
        """Wait until /status shows these counts for source `name` (accepted counts follow fsync)."""
        def reached():
            stats = self.source_stats(name)
            return stats if (stats["accepted"], stats["rejected"]) == (accepted, rejected) else None
        try:
            return wait_until(reached, 10, message=f"{name} accepted={accepted} rejected={rejected}")
        except AssertionError:
            self.fail(f"{name}: expected accepted={accepted} rejected={rejected}, /status says "
                      f"{self.source_stats(name)}")


class EventsTest(ZmqCase):
    event_settings = {"unknown_fields": "refuse"}  # the default moves them into context

    def test_bson_event_from_the_client(self):
        stimestamp = datetime.datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
        when = datetime.datetime(2024, 1, 1, tzinfo=UTC)
        oid = ObjectId()
        context = {"user": "rick", "n": 5, "big": Int64(2**40), "when": when, "oid": oid, "blob": b"\x00\x01",
                   "tags": ["a", 1, 2.5, None, True], "nested": {"x": {"y": "z"}}}
        client = self.client(self.bson_addr)
        before = datetime.datetime.now(UTC)
        client.event("click", context, extra={"x": [1, 2]}, topic="web", level="info", env="prod", version="1.0",
                     stimestamp=stimestamp, ip="192.0.2.1")
        (event,) = self.wait_events(1)
        after = datetime.datetime.now(UTC)
        self.assertEqual(event["type"], "click")
        self.assertEqual(event["context"], context)
        self.assertIsInstance(event["context"]["when"], datetime.datetime)
        self.assertIsInstance(event["context"]["oid"], ObjectId)
        self.assertIsInstance(event["context"]["blob"], bytes)
        self.assertEqual(event["extra"], {"x": [1, 2]})
        self.assertEqual((event["topic"], event["level"], event["env"], event["version"], event["ip"]),
                         ("web", "info", "prod", "1.0", "192.0.2.1"))
        self.assertEqual(event["stimestamp"], stimestamp)
        self.assertIsInstance(event["timestamp"], datetime.datetime)
        self.assertIsNotNone(event["timestamp"].tzinfo)
        self.assertTrue(before.replace(microsecond=before.microsecond // 1000 * 1000) <= event["timestamp"] <= after)
        self.assertIsInstance(event["_id"], ObjectId)
        self.assertEqual((event["source"], event["node"]), ("zmq_bson", "test"))
        self.assertEqual(set(event), EVENT_KEYS | {"context", "extra", "topic", "level", "env", "version",
                                                  "stimestamp", "ip"})
        self.wait_counts("zmq_bson", 1, 0)

    def test_json_frames(self):
        client = self.client(self.json_addr, format="json")
        client.event("signup", {"plan": "pro", "seats": 3}, stimestamp=datetime.datetime(2024, 3, 4, 5, 6, 7,
                                                                                          tzinfo=UTC))
        raw = self.push(self.json_addr)
        raw.send(b'{"type":"raw","stimestamp":1700000000,"context":{"f":1.5,"n":null,"ok":false},'
                 b'"cookies":{"sid":"1"},"_id":"forged","source":"forged","node":"forged"}')
        first, second = sorted(self.wait_events(2), key=lambda e: e["type"])
        self.assertEqual(first["type"], "raw")
        self.assertEqual(first["stimestamp"], datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC))
        self.assertEqual(first["context"], {"f": 1.5, "n": None, "ok": False})
        self.assertEqual(first["cookies"], {"sid": "1"})
        self.assertIsInstance(first["_id"], ObjectId)
        self.assertEqual((first["source"], first["node"]), ("zmq_json", "test"))
        self.assertEqual(second["type"], "signup")
        self.assertEqual(second["context"], {"plan": "pro", "seats": 3})
        self.assertEqual(second["stimestamp"], datetime.datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC))
        self.assertEqual(second["source"], "zmq_json")
        self.wait_counts("zmq_json", 2, 0)
        self.assertEqual(self.source_stats("zmq_bson")["accepted"], 0)

    def test_zarkov_client_alias_with_its_default_context(self):
        self.assertIs(ZarkovClient, ZSparkClient)
        client = ZarkovClient(self.bson_addr)  # a plain (not gevent) zmq context, as Zarkov's users had
        self.addCleanup(client.close, 0)
        client.event("zarkov", {"k": "v"})
        (event,) = self.wait_events(1)
        self.assertEqual((event["type"], event["context"], event["source"]), ("zarkov", {"k": "v"}, "zmq_bson"))

    def test_event_noval_keeps_fields_as_they_are(self):
        sent_at = datetime.datetime(2024, 6, 7, 8, 9, 10, tzinfo=UTC)
        for addr, format in ((self.bson_addr, "bson"), (self.json_addr, "json")):
            client = self.client(addr, format=format)
            client.event_noval("legacy", {"a": 1}, extra={"e": 2}, custom_field="kept", level="info",
                               timestamp=sent_at)
            # The same unknown field through the validating path is rejected.
            client.event("validated", {}, custom_field="refused")
            client.event(f"sentinel-{format}")
        events = self.wait_events(4)
        self.assertEqual([e["type"] for e in events if e["source"] == "zmq_bson"], ["legacy", "sentinel-bson"])
        self.assertEqual([e["type"] for e in events if e["source"] == "zmq_json"], ["legacy", "sentinel-json"])
        for event in events:
            if event["type"] == "legacy":
                self.assertEqual(event["custom_field"], "kept")
                self.assertEqual(event["context"], {"a": 1})
                self.assertEqual(event["extra"], {"e": 2})
                self.assertEqual(event["level"], "info")
                self.assertEqual(event["stimestamp"], sent_at)
                self.assertNotIn("$command", event)
        for name in ("zmq_bson", "zmq_json"):
            stats = self.wait_counts(name, 2, 1)
            self.assertIn("custom_field", stats["last_rejection"])

    def test_bson_frames_journaled_as_sent_decode_to_what_was_validated(self):
        def element(name, value):
            return bson.encode({name: value})[4:-1]

        def document(*elements):
            body = b"".join(elements)
            return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"

        sock = self.push(self.bson_addr)
        # Repeated keys: BSON decoding keeps the last one, which is what is validated and stored.
        sock.send(document(element("type", "first"), element("context", {"$bad": 1}),
                           element("type", "repeated"), element("context", {"ok": 1})))
        # A null field is dropped, as from JSON; a sender's timestamp becomes stimestamp.
        sock.send(bson.encode({"type": "nulls", "level": None, "context": {"n": None}}))
        sent_at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        sock.send(bson.encode({"type": "stamped", "timestamp": sent_at}))
        sock.send(bson.encode({"type": "sentinel", "topic": "web", "context": {"u": "ü", "l": [1, 2.5]}}))
        events = self.wait_events(4)
        by_type = {e["type"]: e for e in events}
        self.assertEqual(set(by_type), {"repeated", "nulls", "stamped", "sentinel"})
        self.assertEqual(by_type["repeated"]["context"], {"ok": 1})
        self.assertNotIn("level", by_type["nulls"])
        self.assertEqual(by_type["nulls"]["context"], {"n": None})
        self.assertEqual(by_type["stamped"]["stimestamp"], sent_at)
        sentinel = by_type["sentinel"]
        self.assertEqual(sentinel["context"], {"u": "ü", "l": [1, 2.5]})
        self.assertEqual((sentinel["topic"], sentinel["source"], sentinel["node"]), ("web", "zmq_bson", "test"))
        self.assertIsInstance(sentinel["timestamp"], datetime.datetime)
        for event in events:
            self.assertEqual(set(event) & {"_id", "timestamp", "source", "node"}, {"_id", "timestamp", "source", "node"})

    def test_unknown_command_is_a_counted_rejection(self):
        sock = self.push(self.bson_addr)
        for command in ("drop_database", 5, {"a": 1}, None):
            sock.send(bson.encode({"$command": command, "type": "x"}))
        sock.send(bson.encode({"type": "sentinel"}))
        events = self.wait_events(1)
        self.assertEqual([e["type"] for e in events], ["sentinel"])
        stats = self.wait_counts("zmq_bson", 1, 4)
        self.assertIn("unknown $command", stats["last_rejection"])


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = {"a": value}
    return value


class UnknownFieldsTest(ZmqCase):
    def test_they_go_into_context_from_both_sockets(self):
        for addr, format in ((self.bson_addr, "bson"), (self.json_addr, "json")):
            self.client(addr, format=format).event(f"via-{format}", {"page": "/"}, user="rick")
        events = sorted(self.wait_events(2), key=lambda e: e["type"])
        self.assertEqual([(e["type"], e["context"]) for e in events],
                         [("via-bson", {"page": "/", "user": "rick"}), ("via-json", {"page": "/", "user": "rick"})])
        self.assertFalse(any("user" in e for e in events))


class GarbageTest(ZmqCase):
    event_settings = {"unknown_fields": "refuse"}  # an unknown field is garbage only then

    def bson_garbage(self):
        rng = random.Random(4321)
        good = bson.encode({"type": "x"})
        frames = [rng.randbytes(rng.randrange(0, 200)) for _ in range(30)]
        frames += [
            b"",
            good[:-1],  # truncated
            b"\xff\x00\x00\x00" + good[4:],  # wrong length prefix
            good + good,  # two documents in one frame
            bson.encode({"no_type": 1}),
            bson.encode({"type": 5}),
            bson.encode({"type": ""}),
            bson.encode({"type": "x", "context": "a string"}),
            bson.encode({"type": "x", "context": [1, 2]}),
            bson.encode({"type": "x", "context": {"$where": 1}}),
            bson.encode({"type": "x", "context": {"r": Regex("a.*")}}),
            bson.encode({"type": "x", "context": {"d": Decimal128("1.5")}}),
            bson.encode({"type": "x", "context": {"s": "a\x00b"}}),
            bson.encode({"type": "x", "context": _nested(40)}),
            bson.encode({"type": "x", "stimestamp": Timestamp(1, 1)}),
            bson.encode({"type": "x", "stimestamp": DatetimeMS(2**62)}),  # beyond datetime's range
            bson.encode({"type": "x", "unknown": 1}),
            bson.encode({"type": "x", "ip": "nope"}),
            bson.encode({"type": "x", "cookies": {"a": 1}}),
            bson.encode({"$command": "event_noval", "context": {}}),  # no type
            bson.encode({"$command": "event_noval", "type": "x", "r": Regex("b")}),
            bson.encode({"$command": "event_noval", "type": "x", "ok": {"$bad": 1}}),
        ]
        return frames

    def json_garbage(self):
        return [
            b"", b"{", b"[1,2]", b'"a string"', b"42", b"null", b"true", b"\xff\xfe\xfd",
            b'{"type":"caf\xe9"}',  # not UTF-8
            b'{"type":"x","context":{"v":NaN}}',
            b'{"type":"x","stimestamp":Infinity}',
            b'{"type":"x","stimestamp":"0001-01-01T00:00:00+01:00"}',
            b'{"type":"x","stimestamp":"9999-12-31T23:59:59-01:00"}',
            b'{"type":"x","context":{"n":18446744073709551616}}',
            b'{"type":"x","context":{"n":' + b"9" * 5000 + b"}}",
            b'{"type":"x","context":{"s":"\\ud800"}}',
            b"[" * 100000,
            b'{"type":"x","context":' + json.dumps(_nested(40)).encode() + b"}",
            b'{"$command":"event_noval","type":"x","a\\u0000b":1}',
            b'{"$command":"event_noval","type":"x","\\udc80":1}',
            b'{"$command":"event_noval","type":"x","k":"\\ud800"}',
            b'{"$command":"nope","type":"x"}',
            b'{"type":"x"}{"type":"y"}',
            # JSON frames are UTF-8 without a byte order mark, as over HTTP.
            '{"type":"utf16"}'.encode("utf-16"),
            '{"type":"utf32"}'.encode("utf-32-le"),
            b'\xef\xbb\xbf{"type":"bom"}',
        ]

    def check_garbage(self, addr, name, frames):
        sock = self.push(addr)
        for frame in frames:
            sock.send(frame)
        sock.send(b'{"type":"sentinel"}' if name == "zmq_json" else bson.encode({"type": "sentinel"}))
        events = self.wait_events(1)
        self.assertEqual([e["type"] for e in events], ["sentinel"])
        self.assertEqual(events[0]["source"], name)
        self.wait_counts(name, 1, len(frames))
        # The socket keeps serving, for the same sender and for a new one.
        sock.send(b'{"type":"after"}' if name == "zmq_json" else bson.encode({"type": "after"}))
        other = self.client(addr, format="json" if name == "zmq_json" else "bson")
        other.event("other")
        events = self.wait_events(3)
        self.assertEqual(sorted(e["type"] for e in events), ["after", "other", "sentinel"])
        self.wait_counts(name, 3, len(frames))

    def test_bson_garbage(self):
        self.check_garbage(self.bson_addr, "zmq_bson", self.bson_garbage())

    def test_json_garbage(self):
        self.check_garbage(self.json_addr, "zmq_json", self.json_garbage())

    def test_bson_frames_on_the_json_socket_and_back(self):
        self.check_garbage(self.json_addr, "zmq_json", [bson.encode({"type": "wrong-socket"})])

    def test_a_json_frame_that_is_not_utf8_is_refused_saying_so(self):
        self.check_garbage(self.json_addr, "zmq_json", ['{"type":"utf16"}'.encode("utf-16")])
        self.assertIn("not UTF-8 text (byte 0xff at 0)", self.source_stats("zmq_json")["last_rejection"])


class OversizeTest(ZmqCase):
    LIMIT = 2000
    zmq_settings = {"max_message_bytes": LIMIT}

    def frame_of(self, size, type):
        doc = {"type": type, "context": {"pad": ""}}
        doc["context"]["pad"] = "p" * (size - len(bson.encode(doc)))
        frame = bson.encode(doc)
        self.assertEqual(len(frame), size)
        return frame

    def test_oversize_frame_is_rejected_and_past_the_hard_limit_dropped_and_the_source_keeps_serving(self):
        sender = self.push(self.bson_addr)
        monitor = sender.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.addCleanup(monitor.close, 0)
        sender.send(self.frame_of(self.LIMIT, "at-the-limit"))
        sender.send(self.frame_of(self.LIMIT + 1, "too-big"))  # counted; the connection is kept
        sender.send(bson.encode({"type": "behind-too-big"}))
        self.wait_counts("zmq_bson", 2, 1)
        # libzmq drops the connection itself past 4 x zmq.max_message_bytes.
        sender.send(self.frame_of(4 * self.LIMIT + 1, "far-too-big"))

        def disconnected():
            while monitor.poll(50):
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    return True
            return False
        wait_until(disconnected, 15, message="the server to drop the connection that sent an oversize frame")
        # A new sender is served, and so is the old one once its PUSH socket has reconnected.
        self.client(self.bson_addr).event("new-sender")
        sender.send(bson.encode({"type": "old-sender-again"}))
        events = self.wait_events(4)
        self.assertEqual(sorted(e["type"] for e in events),
                         ["at-the-limit", "behind-too-big", "new-sender", "old-sender-again"])
        self.assertEqual(self.events(), events)
        self.wait_counts("zmq_bson", 4, 1)


class BurstTest(ZmqCase):
    def test_a_burst_is_journaled_whole_and_in_order_per_sender(self):
        per_sender = 2000
        senders = [("bson-a", self.client(self.bson_addr)), ("bson-b", self.client(self.bson_addr)),
                   ("json-c", self.client(self.json_addr, format="json"))]
        for i in range(per_sender):
            for name, client in senders:
                client.event("burst", {"sender": name, "seq": i})
        events = self.wait_events(per_sender * len(senders), timeout=30)
        self.assertEqual(len(events), per_sender * len(senders))
        for name, _ in senders:
            seqs = [e["context"]["seq"] for e in events if e["context"]["sender"] == name]
            self.assertEqual(seqs, list(range(per_sender)), name)
        self.assertEqual(len({e["_id"] for e in events}), len(events))
        self.assertEqual({e["source"] for e in events if e["context"]["sender"].startswith("bson")}, {"zmq_bson"})
        self.assertEqual({e["source"] for e in events if e["context"]["sender"] == "json-c"}, {"zmq_json"})
        self.wait_counts("zmq_bson", 2 * per_sender, 0)
        self.wait_counts("zmq_json", per_sender, 0)


    def test_frames_that_cut_documents_elsewhere_are_rejected_each(self):
        # Joined, these three frames are three whole documents, but not the frames' own: the
        # first frame holds a document and the head of the second. A burst must not be decoded
        # as joined frames then, or the bytes journaled would not be the documents validated.
        first, second, third = (bson.encode({"type": t, "context": {"k": "v"}}) for t in ("first", "second", "third"))
        frames = [first + second[:7], second[7:], third]
        self.assertIsNone(ZmqSource._decode_burst(frames))
        self.assertEqual([d["type"] for d in ZmqSource._decode_burst([first, second, third])],
                         ["first", "second", "third"])
        sock = self.push(self.bson_addr)
        for frame in frames:
            sock.send(frame)
        sock.send(bson.encode({"type": "sentinel"}))
        events = self.wait_events(2)
        self.assertEqual([e["type"] for e in events], ["third", "sentinel"])
        self.assertEqual(events[0]["context"], {"k": "v"})
        self.wait_counts("zmq_bson", 2, 2)


class BurstsInFlightTest(ZmqCase):
    """Receiving goes on while bursts wait for their fsync: with a slow fsync pace and small
    bursts, one fsync covers many bursts (one burst in flight at a time, as before, would make it
    cover at most two, and cap the rate at two bursts per journal.sync_interval_ms)."""
    zmq_settings = {"receive_batch": 10}
    journal_settings = {"sync_interval_ms": 300}

    def test_one_fsync_covers_more_than_two_bursts(self):
        sock = self.push(self.bson_addr)
        frames = [bson.encode({"type": "queued", "context": {"n": n}}) for n in range(400)]
        for frame in frames:  # under the high-water marks: queued at once, no wait
            sock.send(frame)
        events = self.wait_events(400, timeout=60)
        self.assertEqual([e["context"]["n"] for e in events], list(range(400)))
        self.wait_counts("zmq_bson", 400, 0)
        status, _, body = request(self.port, "GET", "/status")
        syncs = json.loads(body)["journal"]["syncs"]
        self.assertLess(syncs, 400 // 20, "an fsync covered two bursts of 10 at most")


class FullJournalTest(ZmqCase):
    journal_settings = {"max_bytes": 30000}

    def test_a_burst_larger_than_the_whole_journal_goes_in_as_far_as_it_fits(self):
        client = self.client(self.bson_addr)
        for i in range(600):  # one burst, ~100 kB framed: three times the journal
            client.event("burst", {"seq": i, "pad": "p" * 40})
        self.wait_events(150)
        wait_until(lambda: self.source_stats("zmq_bson")["refused"] > 0, 10,
                   message="the rest of the burst held, waiting for room")
        events = self.events()
        self.assertEqual([e["context"]["seq"] for e in events], list(range(len(events))),
                         "the part that fits goes in, in order")
        self.assertGreater(self.server.journal.size_bytes, 30000 * 0.9)

    def test_an_event_larger_than_the_whole_journal_is_rejected_with_the_reason(self):
        client = self.client(self.bson_addr)
        client.event("huge", {"pad": "p" * 40000})
        client.event("after")
        self.assertEqual([e["type"] for e in self.wait_events(1)], ["after"])
        stats = self.wait_counts("zmq_bson", 1, 1)
        self.assertIn("journal.max_bytes", stats["last_rejection"])


def _pump(source, destination):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass
    finally:
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class ZsendTest(ZmqCase):
    ZSEND = os.path.join(ROOT, "scripts", "zsend")

    def zsend(self, *args, input):
        return subprocess.run([sys.executable, self.ZSEND, *args], input=input, capture_output=True, timeout=60,
                              cwd=ROOT)

    def test_good_lines_are_delivered(self):
        lines = b"".join(json.dumps({"type": "line", "context": {"i": i}}).encode() + b"\n" for i in range(50))
        result = self.zsend(self.bson_addr, input=lines + b"\n\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"sent 50 event(s)", result.stderr)
        events = self.wait_events(50)
        self.assertEqual([e["context"]["i"] for e in events], list(range(50)))
        self.assertEqual({e["source"] for e in events}, {"zmq_bson"})

        result = self.zsend("--json", self.json_addr, input=b'{"type":"via-json","stimestamp":"2024-01-01T00:00:00Z"}\n')
        self.assertEqual(result.returncode, 0, result.stderr)
        events = self.wait_events(51)
        self.assertEqual((events[50]["type"], events[50]["source"]), ("via-json", "zmq_json"))
        self.assertEqual(events[50]["stimestamp"], datetime.datetime(2024, 1, 1, tzinfo=UTC))

    def test_events_queued_at_exit_still_go_out(self):
        # A gate between zsend and the server holds the connection (ZeroMQ's handshake cannot
        # finish, so nothing is sent) until zsend has exited, or a while has passed. A zsend that
        # exits without waiting for its queue loses the events; one that waits delivers them once
        # the gate opens.
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        proc = subprocess.Popen([sys.executable, self.ZSEND, f"tcp://127.0.0.1:{listener.getsockname()[1]}"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        proc.stdin.write(b'{"type":"queued-1"}\n{"type":"queued-2"}\n')
        proc.stdin.close()
        downstream, _ = listener.accept()
        self.addCleanup(downstream.close)
        try:
            wait_until(lambda: proc.poll() is not None, timeout=3, message="zsend to exit")
        except AssertionError:
            pass  # still running (waiting for its queue to go out): open the gate now
        upstream = socket.create_connection(("127.0.0.1", int(self.bson_addr.rsplit(":", 1)[1])))
        self.addCleanup(upstream.close)
        pumps = [gevent.spawn(_pump, downstream, upstream), gevent.spawn(_pump, upstream, downstream)]
        self.addCleanup(gevent.killall, pumps)
        self.assertEqual(proc.wait(30), 0, proc.stderr.read())
        events = self.wait_events(2)
        self.assertEqual([e["type"] for e in events], ["queued-1", "queued-2"])

    def test_bad_lines_are_reported_and_the_rest_delivered(self):
        lines = [
            b'{"type":"first"}',
            b'{"type":',  # 2: not JSON
            b"[1, 2]",  # 3: not an object
            b'{"type":"big","context":{"n":99999999999999999999}}',  # 4: beyond what BSON can hold
            b'{"type":"caf\xe9"}',  # 5: not UTF-8
            b'{"level":"info"}',  # 6: no type
            b"",
            b'{"type":"last"}',
        ]
        result = self.zsend(self.bson_addr, input=b"\n".join(lines) + b"\n")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)
        for number in (2, 3, 4, 5, 6):
            self.assertIn(f"line {number}:".encode(), result.stderr)
        self.assertNotIn(b"line 1:", result.stderr)
        self.assertNotIn(b"line 8:", result.stderr)
        self.assertIn(b"sent 2 event(s)", result.stderr)
        events = self.wait_events(2)
        self.assertEqual([e["type"] for e in events], ["first", "last"])


if __name__ == "__main__":
    unittest.main()
