"""Forwarding end to end: `zcmd serve` as a child process fed over HTTP and ZeroMQ, delivering to
the real local Kafka-compatible broker (Tansu) and MongoDB-compatible server (SecantusDB) that
this module starts on free ports (and stops by pid), and to a ZeroMQ PUB socket.

What users see is checked from the outside: the ids answered 200, what a fresh Kafka consumer
reads from the beginning (counted, since the broker's end offsets are not trusted), what pymongo
finds, the dead-letter file, /status. The faults (outages, SIGKILL, SIGTERM under load, a damaged
journal, a full disk) are in tests/faults/.
"""
import datetime
import json
import time
import unittest
import urllib.parse

import bson
import zmq.green as zmq_green
from bson import ObjectId
from bson.codec_options import CodecOptions

from .appliance import ApplianceCase, Services, message_id
from .support import journal_events, kafka_read, request, wait_until

UTC = datetime.timezone.utc
SERVICES = Services()  # one broker and one database for the module
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop


def parse_iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def to_ms(moment):
    """A datetime as BSON stores it: milliseconds."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class ForwardingCase(ApplianceCase):
    services = SERVICES


class Delivery(ForwardingCase):
    def test_http_and_zeromq_events_arrive_in_kafka_and_mongodb_with_their_fields(self):
        self.configure(kafka={"key_field": "env"}, mongo={})
        server = self.serve()
        T, D = self.topic, self.default_topic
        stime = "2024-05-01T12:30:00.250Z"
        full = {"type": "signup", "level": "warn", "topic": T, "env": "prod", "version": "2.1",
                "stimestamp": stime, "ip": "10.1.2.3", "referrer": "https://example.com/from",
                "user_agent": "agent/1.0", "cookies": {"sid": "s-1"}, "extra": {"plan": "pro"},
                "context": {"uid": "h-full", "user": "rick", "n": 42, "big": 2**40, "ratio": 0.5,
                            "ok": True, "nothing": None, "tags": ["a", "b"],
                            "deep": {"x": {"y": [1, {"z": "w"}]}}, "text": "naïve ☃"}}
        sent = {}  # uid -> (event as sent, topic, key, source)
        (full_id,) = self.post(full)
        acked = {"h-full": full_id}
        sent["h-full"] = (full, T, b"prod", "http")
        batch = [{"type": "view", "topic": T, "env": "dev", "context": {"uid": "h-arr-0", "i": 0}},
                 {"type": "view", "context": {"uid": "h-arr-1", "i": 1}},  # no topic, no env
                 {"type": "view", "topic": T, "context": {"uid": "h-arr-2", "i": 2}}]
        acked.update(zip(["h-arr-0", "h-arr-1", "h-arr-2"], self.post(batch)))
        sent["h-arr-0"] = (batch[0], T, b"dev", "http")
        sent["h-arr-1"] = (batch[1], D, None, "http")
        sent["h-arr-2"] = (batch[2], T, None, "http")
        ndjson = "\n".join(json.dumps({"type": "nd", "env": "qa", "context": {"uid": f"h-nd-{i}"}})
                           for i in range(2))
        acked.update(zip(["h-nd-0", "h-nd-1"],
                         self.post(ndjson.encode(), {"Content-Type": "application/x-ndjson"})))
        for i in range(2):
            sent[f"h-nd-{i}"] = ({"type": "nd", "env": "qa", "context": {"uid": f"h-nd-{i}"}}, D, b"qa", "http")
        query = urllib.parse.urlencode({"type": "get", "topic": T, "env": "prod", "uid": "h-get",
                                        "page": "/home"})
        status, _, body = request(self.port, "GET", f"/log?{query}")
        self.assertEqual(status, 200, body)
        acked["h-get"] = json.loads(body)["ids"][0]
        sent["h-get"] = ({"type": "get", "topic": T, "env": "prod",
                          "context": {"uid": "h-get", "page": "/home"}}, T, b"prod", "http")

        bson_client, json_client = self.client("bson"), self.client("json")
        zstime = datetime.datetime(2024, 6, 1, 8, 0, 0, 125000, tzinfo=UTC)
        bson_client.event("zmqb", {"uid": "zb-0", "n": 1, "when": zstime}, topic=T, env="prod",
                          stimestamp=zstime)
        bson_client.event("zmqb", {"uid": "zb-1"})
        json_client.event("zmqj", {"uid": "zj-0", "list": [1, 2.5, "x"]}, topic=T, env="dev")
        json_client.event("zmqj", {"uid": "zj-1"}, extra={"k": "v"})
        sent["zb-0"] = ({"type": "zmqb", "topic": T, "env": "prod", "stimestamp": zstime,
                         "context": {"uid": "zb-0", "n": 1, "when": zstime}}, T, b"prod", "zmq_bson")
        sent["zb-1"] = ({"type": "zmqb", "context": {"uid": "zb-1"}}, D, None, "zmq_bson")
        sent["zj-0"] = ({"type": "zmqj", "topic": T, "env": "dev",
                         "context": {"uid": "zj-0", "list": [1, 2.5, "x"]}}, T, b"dev", "zmq_json")
        sent["zj-1"] = ({"type": "zmqj", "extra": {"k": "v"}, "context": {"uid": "zj-1"}}, D, None, "zmq_json")
        self.wait_accepted("zmq_bson", 2)
        self.wait_accepted("zmq_json", 2)
        self.wait_delivered(["kafka", "mongo"])
        received_by = time.time()

        ids = self.journal_ids()
        self.assertEqual(set(ids), set(sent), "the journal holds exactly what was sent")
        for uid, id_ in acked.items():
            self.assertEqual(ids[uid], id_, f"{uid}: the journal id differs from the 200 answer")

        # Kafka: each event once, in its topic, keyed by env, JSON with the fields as sent.
        messages = self.read_kafka([T, D], ids.values())
        self.assert_each_once(messages, ids.values(), f"Kafka topics {T}, {D}")
        self.assertEqual(len(messages), len(sent))
        kafka_times = {}
        for message in messages:
            value = message.json()
            uid = value["context"]["uid"]
            event, topic, key, source = sent[uid]
            with self.subTest(kafka=uid):
                self.assertEqual(value["_id"], ids[uid])
                self.assertEqual(message.topic, topic)
                self.assertEqual(message.key, key)
                self.assertIsInstance(value["timestamp"], str)
                self.assertTrue(value["timestamp"].endswith("Z"), value["timestamp"])
                moment = parse_iso(value["timestamp"])
                self.assertLessEqual(self.started - 1, moment.timestamp())
                self.assertLessEqual(moment.timestamp(), received_by + 1)
                kafka_times[uid] = moment
                self.assertEqual((value["source"], value["node"]), (source, "test"))
                for name, expected in event.items():
                    if name in ("stimestamp",):
                        self.assertTrue(value[name].endswith("Z"), value[name])
                        self.assertEqual(parse_iso(value[name]),
                                         expected if isinstance(expected, datetime.datetime) else parse_iso(expected))
                    elif name == "context" and uid == "zb-0":
                        self.assertEqual(parse_iso(value[name]["when"]), zstime)
                        self.assertEqual(value[name]["n"], 1)
                    else:
                        self.assertEqual(value[name], expected, name)
        by_uid = {m.json()["context"]["uid"]: m.json() for m in messages}
        self.assertEqual(by_uid["h-get"]["ip"], "127.0.0.1", "GET /log records the sender's address")

        # MongoDB: the same events, _id as answered, times as BSON dates, types kept.
        coll = self.collection()
        docs = {d["context"]["uid"]: d for d in coll.find()}
        self.assertEqual(coll.count_documents({}), len(sent))
        self.assertEqual(set(docs), set(sent))
        for uid, doc in docs.items():
            event, _, _, source = sent[uid]
            with self.subTest(mongo=uid):
                self.assertEqual(doc["_id"], ObjectId(ids[uid]))
                self.assertIsInstance(doc["timestamp"], datetime.datetime)
                self.assertEqual(doc["timestamp"], to_ms(kafka_times[uid]))
                self.assertEqual((doc["source"], doc["node"]), (source, "test"))
                for name, expected in event.items():
                    if name == "stimestamp":
                        self.assertIsInstance(doc[name], datetime.datetime)
                        expected = expected if isinstance(expected, datetime.datetime) else parse_iso(expected)
                        self.assertEqual(doc[name], to_ms(expected))
                    elif name == "context" and uid == "zb-0":
                        self.assertEqual(doc[name], {"uid": "zb-0", "n": 1, "when": to_ms(zstime)})
                    else:
                        self.assertEqual(doc[name], expected, name)
        full_doc = docs["h-full"]
        self.assertIs(type(full_doc["context"]["n"]), int)
        self.assertIs(type(full_doc["context"]["big"]), bson.int64.Int64)
        self.assertIs(type(full_doc["context"]["ratio"]), float)
        self.assertIs(full_doc["context"]["ok"], True)
        self.assertIsNone(full_doc["context"]["nothing"])
        self.assertEqual(coll.count_documents({"type": "view", "context.i": {"$gte": 1}}), 2,
                         "fields must be queryable")

        indexes = {tuple(i["key"]): i for i in coll.index_information().values()}
        self.assertIn((("timestamp", 1),), indexes)
        self.assertIn((("type", 1),), indexes)
        self.assertNotIn("expireAfterSeconds", indexes[(("timestamp", 1),)],
                         "no TTL unless ttl_days is set")

        status = self.status()["forwarders"]
        self.assertEqual(status["kafka"]["delivered"], len(sent))
        self.assertEqual(status["mongo"]["delivered"], len(sent))
        for name in ("kafka", "mongo"):
            self.assertEqual((status[name]["failed"], status[name]["dead_lettered"]), (0, 0), status[name])
            self.assertEqual(status[name]["state"], "running")
        self.stop(server)

    def test_topic_template_over_event_fields_with_default_topic(self):
        self.configure(kafka={"topic": "ev.{env}.{type}", "key_field": "type"})
        server = self.serve()
        click, view = f"click_{self.uid}", f"view_{self.uid}"
        plan = [(click, "prod", f"ev.prod.{click}"), (click, "prod", f"ev.prod.{click}"),
                (click, "dev", f"ev.dev.{click}"), (view, "prod", f"ev.prod.{view}"),
                (view, None, self.default_topic), (view, "", self.default_topic)]
        events = []
        for i, (type_, env, _) in enumerate(plan):
            event = {"type": type_, "context": {"uid": f"t{i}"}}
            if env is not None:
                event["env"] = env
            events.append(event)
        ids = self.post(events)
        self.wait_delivered(["kafka"])
        topics = sorted({topic for _, _, topic in plan})
        messages = self.read_kafka(topics, ids)
        self.assert_each_once(messages, ids, f"Kafka topics {topics}")
        by_id = {message_id(m): m for m in messages}
        for id_, (type_, env, topic) in zip(ids, plan):
            self.assertEqual(by_id[id_].topic, topic, f"event type={type_} env={env!r}")
            self.assertEqual(by_id[id_].key, type_.encode())
        self.stop(server)

    def test_bson_format_and_a_ttl_index(self):
        self.configure(kafka={"format": "bson"}, mongo={"ttl_days": 2})
        server = self.serve()
        events = [{"type": "b", "topic": self.topic, "context": {"uid": f"b{i}", "n": i, "half": i / 2}}
                  for i in range(5)]
        ids = self.post(events)
        self.wait_delivered(["kafka", "mongo"])
        messages = self.read_kafka([self.topic], ids)
        self.assert_each_once(messages, ids, f"Kafka topic {self.topic}")
        options = CodecOptions(tz_aware=True, tzinfo=UTC)
        for message in messages:
            value = bson.decode(message.value, codec_options=options)
            i = value["context"]["n"]
            self.assertIsInstance(value["_id"], ObjectId)
            self.assertEqual(str(value["_id"]), ids[i])
            self.assertIsInstance(value["timestamp"], datetime.datetime)
            self.assertEqual(value["context"], {"uid": f"b{i}", "n": i, "half": i / 2})
            self.assertEqual((value["type"], value["topic"], value["source"]), ("b", self.topic, "http"))
            self.assertIsNone(message.key, "no key_field, no key")

        coll = self.collection()
        self.assertEqual(sorted(str(d["_id"]) for d in coll.find()), sorted(ids))
        indexes = {tuple(i["key"]): i for i in coll.index_information().values()}
        self.assertIn((("timestamp", 1),), indexes)
        self.assertEqual(indexes[(("timestamp", 1),)].get("expireAfterSeconds"), 2 * 86400,
                         "ttl_days: 2 must make the timestamp index a TTL index of 2 days")
        self.assertIn((("type", 1),), indexes)
        self.stop(server)

    def test_plain_format(self):
        # The sparse event's empty fields as sent: not given the request's ip.
        self.configure(kafka={"format": "plain", "key_field": "type"}, http={"post_request_fields": False})
        server = self.serve()
        full = {"type": "p", "level": "info", "topic": self.topic, "env": "prod", "version": "3",
                "ip": "10.0.0.1", "referrer": "https://r.example/\tx", "user_agent": "ua 1",
                "context": {"uid": "p0", "q": "a\tb", "n": 1}}
        sparse = {"type": "p", "topic": self.topic, "context": {"uid": "p1"}}
        ids = self.post([full, sparse])
        self.wait_delivered(["kafka"])
        journaled = {str(e["_id"]): e for e in journal_events(self.journal_dir)}
        messages = kafka_read(self.broker.address, [self.topic], done=lambda ms: len(ms) >= 2, timeout=30)
        self.assertEqual(len(messages), 2, messages)
        by_value = {m.value.decode().split("\t")[-1]: m for m in messages}
        for id_, event in zip(ids, (full, sparse)):
            stamp = journaled[id_]["timestamp"].isoformat().replace("+00:00", "Z")
            context = json.dumps(event["context"], separators=(",", ":"))
            expected = "\t".join([stamp, "p", event.get("level", ""), self.topic, event.get("env", ""),
                                  event.get("version", ""), event.get("ip", ""),
                                  event.get("referrer", "").replace("\t", " "),
                                  event.get("user_agent", ""), context])
            message = by_value.get(context)
            self.assertIsNotNone(message, f"no plain message ending with {context}: {messages}")
            self.assertEqual(message.value.decode("utf-8"), expected)
            self.assertEqual(message.key, b"p")
        self.stop(server)

    def test_pub_subscribers_receive_live_events_by_topic_prefix(self):
        self.configure(pub={})
        server = self.serve()
        sub = self.zctx.socket(zmq_green.SUB)
        self.addCleanup(sub.close, 0)
        sub.setsockopt(zmq_green.SUBSCRIBE, b"web")
        sub.connect(self.data["pub"]["bind"])

        def receive(timeout_ms=5000):
            if not sub.poll(timeout_ms):
                self.fail("no message on the SUB socket within 5 s")
            return sub.recv_multipart()

        # PUB drops what it sends before the subscription reached it: probe until one arrives.
        def probe():
            self.post({"type": "probe", "topic": "web.probe", "context": {}})
            return sub.poll(200)

        wait_until(probe, timeout=15, message="the first message on the SUB socket")
        while sub.poll(300):
            sub.recv_multipart()  # any further probes

        plan = [("web.click", "click"), ("other", "x"), ("web.view", "view"), (None, "webhook"),
                (None, "zzz"), ("web", "plainweb"), ("we", "almost")]
        events = [{"type": type_, "context": {"uid": f"u{i}", "i": i}, **({"topic": t} if t else {})}
                  for i, (t, type_) in enumerate(plan)]
        ids = self.post(events)
        (end_id,) = self.post({"type": "end", "topic": "web.end", "context": {"uid": "end"}})
        received = []
        while True:
            frames = receive()
            self.assertEqual(len(frames), 2, frames)
            topic, body = frames
            value = json.loads(body)
            received.append((topic.decode(), value))
            if value["_id"] == end_id:
                break
        expected = [(t or type_, ids[i]) for i, (t, type_) in enumerate(plan)
                    if (t or type_).startswith("web")]
        self.assertEqual([(t, v["_id"]) for t, v in received[:-1]], expected,
                         "exactly the events whose topic (else type) starts with the prefix, in order")
        for topic, value in received[:-1]:
            i = value["context"]["i"]
            self.assertEqual(value["type"], plan[i][1])
            self.assertEqual(value["context"], {"uid": f"u{i}", "i": i})
            self.assertTrue(value["timestamp"].endswith("Z"))
        self.assertEqual(received[-1][0], "web.end")
        self.stop(server)


class DeadLetter(ForwardingCase):
    def test_a_record_kafka_cannot_take_is_dead_lettered_and_the_stream_goes_on(self):
        self.configure(kafka={}, mongo={})
        server = self.serve()
        T = self.topic
        good = self.post([{"type": "g", "topic": T, "context": {"uid": "g0"}},
                          {"type": "g", "topic": "bad topic!", "context": {"uid": "bad"}},
                          {"type": "g", "topic": T, "context": {"uid": "g1"}}])
        self.wait_delivered(["kafka", "mongo"])
        later = self.post({"type": "g", "topic": T, "context": {"uid": "g2"}})
        status = self.wait_delivered(["kafka", "mongo"])

        (line,) = self.dead_letters("kafka")
        self.assertEqual(line["offset"], 1)
        self.assertEqual(line["sink"], "kafka")
        self.assertIn("not a legal Kafka topic name", line["reason"])
        self.assertIn("bad topic!", line["reason"])
        self.assertEqual(line["event"]["_id"], good[1])
        self.assertEqual(line["event"]["context"], {"uid": "bad"})
        self.assertEqual(self.dead_letters("mongo"), [])
        kafka = status["forwarders"]["kafka"]
        self.assertEqual((kafka["dead_lettered"], kafka["delivered"]), (1, 3))

        expected = [good[0], good[2], later[0]]
        messages = self.read_kafka([T], expected)
        self.assert_each_once(messages, expected, f"Kafka topic {T}")
        self.assertEqual(len(messages), 3)
        coll = self.collection()
        self.assertEqual(sorted(str(d["_id"]) for d in coll.find()), sorted(good + later),
                         "MongoDB takes the event Kafka refused")
        self.stop(server)


if __name__ == "__main__":
    unittest.main()
