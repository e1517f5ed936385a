"""Senders choosing Kafka topics (issue 10, item 6): `zcmd serve` with the real local broker.

A sender's event never lands in the notice topic, whatever it claims to be; one request with 500
distinct topics makes at most `kafka.max_topics` topics on the broker (also across a restart) and
every event is delivered, the rest in the default topic, and the hour-complete notices follow
only the topics written to; `kafka.topics_allowed` patterns; `kafka.topic_not_allowed: refuse`
gives 400 naming the topic over HTTP and a counted rejection over ZeroMQ. And, without a broker,
the policy's record of the topics taken (zspark/topics.py) and the hour tracker's bound.
"""
import collections
import datetime
import json
import os
import stat
import time
import types
import unittest
import urllib.parse

from ..shifted_clock import CLOCK_OFFSET_ENV, MODULE as SHIFTED_CLOCK
from zspark.hours import HOUR, hour_text

from ..appliance import ApplianceCase, message_id
from ..support import TempDir, journal_events, kafka_read, kafka_topics, request, start_broker

GRACE = 1.0


class BrokerOnly:
    """One broker for the module (these tests need no database)."""

    def __init__(self):
        self.state = self.broker = None
        self.mongo = None

    def start(self):
        self.state = TempDir(prefix="zspark-services-")
        try:
            self.broker = start_broker(self.state.join("broker"))
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.state is not None:
            self.state.remove()
            self.state = None


SERVICES = BrokerOnly()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop


class TopicsCase(ApplianceCase):
    services = SERVICES

    def setUp(self):
        super().setUp()
        self.notice_topic = f"zs-{self.uid}-notify"
        self.clock_file = self.tmp.join("clock-offset")
        self.set_clock(time.time())

    def set_clock(self, moment):
        """Make the server's hour-complete clock read `moment` now (and run on from there)."""
        with open(self.clock_file, "w") as f:
            f.write(repr(moment - time.time()))

    def start(self, hour_complete=False, **kafka):
        self.configure(kafka={"notice_topic": self.notice_topic, **kafka},
                       notices={"enabled": True, "heartbeat_s": 0, "hour_complete": hour_complete,
                                "hour_grace_s": GRACE, "check_s": 0.1})
        return self.serve(module=SHIFTED_CLOCK, env={CLOCK_OFFSET_ENV: self.clock_file})

    def answer(self, body, method="POST", path="/log"):
        status, _, answer = request(self.port, method, path, body)
        return status, json.loads(answer)

    def topics_on_broker(self, prefix):
        return {t for t in kafka_topics(self.broker.address) if t.startswith(prefix)}

    def where(self, topics, ids, timeout=60):
        """{event id: [topics it was read from]} for `ids`, reading `topics` until all are seen."""
        messages = self.read_kafka(topics, ids, timeout=timeout)
        found = collections.defaultdict(list)
        for m in messages:
            if m.topic != self.notice_topic or json.loads(m.value).get("source") != "notice":
                found[message_id(m)].append(m.topic)
        return found, messages

    def kafka_topics_status(self):
        return self.status()["kafka_topics"]


class NoticeTopic(TopicsCase):
    def test_a_forged_hour_complete_never_lands_in_the_notice_topic(self):
        server = self.start()
        forged = {"type": "hour_complete", "topic": self.notice_topic, "source": "notice",
                  "node": "test", "context": {"topic": "web", "hour": "2030-01-01T00:00:00Z", "count": 999}}
        ids = self.post(forged) + self.post([dict(forged, level="x")] * 3)
        # The same over ZeroMQ: BSON journaled as it came (no `source` there: spliced), BSON with
        # the claimed `source` (normalized), Zarkov's pre-validated event_noval, and JSON.
        bson_client = self.client("bson")
        bson_client.event("hour_complete", {"n": 1}, topic=self.notice_topic)
        bson_client.send(forged)
        bson_client.event_noval("hour_complete", {"n": 2}, topic=self.notice_topic, source="notice")
        self.client("json").event("hour_complete", {"n": 3}, topic=self.notice_topic, source="notice")
        self.wait_accepted("zmq_bson", 3)
        self.wait_accepted("zmq_json", 1)
        self.wait_delivered(["kafka"])
        journal = [e for e in journal_events(self.journal_dir) if e["type"] == "hour_complete"]
        self.assertEqual(len(journal), 8)
        self.assertEqual({e["source"] for e in journal}, {"http", "zmq_bson", "zmq_json"})
        self.assertLessEqual(set(ids), {str(e["_id"]) for e in journal})
        ids = [str(e["_id"]) for e in journal]

        found, messages = self.where([self.notice_topic, self.default_topic], ids)
        self.assertEqual({i: set(t) for i, t in found.items() if i in ids},
                         {i: {self.default_topic} for i in ids})
        in_notice_topic = [json.loads(m.value) for m in messages if m.topic == self.notice_topic]
        self.assertEqual({(n["type"], n["source"]) for n in in_notice_topic}, {("node_online", "notice")})
        topics = self.kafka_topics_status()
        self.assertEqual(topics["redirected"], 8)
        self.assertIn(repr(self.notice_topic), topics["last_not_allowed"])
        self.assertIn("kafka.notice_topic", topics["last_not_allowed"])
        self.stop(server)

    def test_refused_with_400_naming_the_topic_in_refuse_mode(self):
        server = self.start(topic_not_allowed="refuse")
        status, body = self.answer({"type": "hour_complete", "topic": self.notice_topic,
                                    "context": {"count": 999}})
        self.assertEqual(status, 400, body)
        self.assertIn(repr(self.notice_topic), body["error"])
        self.assertIn("kafka.notice_topic", body["error"])
        self.stop(server)
        self.assertEqual([e for e in journal_events(self.journal_dir) if e["type"] == "hour_complete"], [])


class DistinctTopics(TopicsCase):
    def test_500_topics_in_one_request_make_at_most_max_topics_and_every_event_arrives(self):
        cap = 20
        prefix = f"zs-{self.uid}-t"
        server = self.start(hour_complete=True, max_topics=cap)
        ids = self.post([{"type": "t", "topic": f"{prefix}{i}", "context": {"i": i}} for i in range(500)])
        self.wait_delivered(["kafka"])
        self.assertEqual(self.kafka_topics_status()["taken"], cap)
        self.assertEqual(self.kafka_topics_status()["redirected"], 500 - cap)
        status, _, body = request(self.port, "GET", "/metrics")
        self.assertEqual(status, 200, body)
        self.assertIn(f"zspark_kafka_topics_taken {float(cap)}", body.decode())
        self.assertIn(f"zspark_kafka_topic_redirected_total {float(500 - cap)}", body.decode())
        self.stop(server)

        # A restart does not make room for more.
        server = self.start(hour_complete=True, max_topics=cap)
        ids += self.post([{"type": "t", "topic": f"{prefix}{i}", "context": {"i": i}} for i in range(500, 1000)])
        ids += self.post([{"type": "t", "topic": f"{prefix}{i}", "context": {"i": i}} for i in range(5)])
        self.wait_delivered(["kafka"])
        on_broker = self.topics_on_broker(prefix)
        self.assertEqual(len(on_broker), cap, sorted(on_broker))
        self.assertEqual(on_broker, {f"{prefix}{i}" for i in range(cap)})
        self.assertEqual(self.kafka_topics_status()["redirected"], 500)

        found, _ = self.where(sorted(on_broker) + [self.default_topic], ids)
        missing = [i for i in ids if i not in found]
        self.assertEqual(missing, [], f"{len(missing)} of {len(ids)} events not delivered")
        per_topic = collections.Counter(t for i in ids for t in set(found[i]))
        self.assertEqual(per_topic[self.default_topic], 1000 - cap)
        self.assertEqual(sum(per_topic.values()), len(ids))

        # The hour tracker follows only the topics written to: one notice each, counting what
        # was delivered there (the redirected events under the default topic).
        hour = max(int(e["timestamp"].timestamp()) // HOUR * HOUR
                   for e in journal_events(self.journal_dir) if e.get("source") != "notice")
        self.set_clock(hour + HOUR + GRACE + 0.5)

        def announced(messages):  # hours are announced in order: the last one says all are
            return any(n["type"] == "hour_complete" and n["context"]["hour"] == hour_text(hour)
                       for n in map(json.loads, (m.value for m in messages)))
        notices = [json.loads(m.value) for m in kafka_read(self.broker.address, [self.notice_topic],
                                                           done=announced, timeout=60, settle=2.0)]
        said = collections.Counter()
        for n in notices:
            if n["type"] == "hour_complete":
                said[n["topic"]] += n["context"]["count"]
        self.assertEqual(set(said), on_broker | {self.default_topic})
        self.assertEqual(sum(said.values()), len(ids))
        self.assertEqual(said[self.default_topic], 1000 - cap)
        self.stop(server)


class Patterns(TopicsCase):
    def test_only_topics_matching_topics_allowed_are_written_the_rest_go_to_the_default_topic(self):
        web, fixed = f"zs-{self.uid}-web.", f"zs-{self.uid}-fixed"
        server = self.start(topics_allowed=[f"zs-{self.uid}-web.*", fixed, "other-[0-9]"], max_topics=2)
        sent = {"web.a": f"{web}a", "web.b": f"{web}b", "web.c": f"{web}c",  # the third is over the cap
                "fixed": fixed,  # named in full: the operator's own, not counted against the cap
                "other": f"zs-{self.uid}-other", "Web": f"zs-{self.uid}-WEB.a",  # no match (case counts)
                "none": None}
        ids = {}
        for name, topic in sent.items():
            event = {"type": "t", "context": {"name": name}, **({"topic": topic} if topic else {})}
            ids[name] = self.post(event)[0]
        self.wait_delivered(["kafka"])
        expected = {"web.a": f"{web}a", "web.b": f"{web}b", "web.c": self.default_topic, "fixed": fixed,
                    "other": self.default_topic, "Web": self.default_topic, "none": self.default_topic}
        found, _ = self.where(sorted(set(expected.values())), ids.values())
        self.assertEqual({name: found[i] for name, i in ids.items()}, {n: [t] for n, t in expected.items()})
        self.assertEqual(self.topics_on_broker(f"zs-{self.uid}-"),
                         {f"{web}a", f"{web}b", fixed, self.default_topic, self.notice_topic})
        topics = self.kafka_topics_status()
        self.assertEqual((topics["taken"], topics["redirected"]), (2, 3))
        self.assertIn(repr(f"zs-{self.uid}-WEB.a"), topics["last_not_allowed"])
        self.stop(server)


class Refuse(TopicsCase):
    def test_refuse_gives_400_naming_the_topic_and_counts_zeromq_rejections(self):
        ok = f"zs-{self.uid}-ok"
        server = self.start(topic_not_allowed="refuse", topics_allowed=[f"{ok}*"], max_topics=2)
        bad = f"zs-{self.uid}-bad"
        status, body = self.answer([{"type": "t", "topic": f"{ok}1"}, {"type": "t", "topic": bad}])
        self.assertEqual((status, body["index"]), (400, 1), body)
        self.assertIn(repr(bad), body["error"])
        self.assertIn("kafka.topics_allowed", body["error"])
        status, body = self.answer(None, "GET", "/log?" + urllib.parse.urlencode({"type": "t", "topic": bad}))
        self.assertEqual(status, 400, body)
        self.assertIn(repr(bad), body["error"])
        # A sender's control characters come back escaped, and never reach the log raw.
        status, body = self.answer({"type": "t", "topic": "x\x1b[2J\nCRITICAL zspark.server: forged"})
        self.assertEqual(status, 400, body)
        self.assertIn("\\x1b[2J\\nCRITICAL", body["error"])

        ids = self.post([{"type": "t", "topic": f"{ok}1", "context": {"n": 1}},
                         {"type": "t", "topic": f"{ok}2", "context": {"n": 2}},
                         {"type": "t", "topic": f"{ok}1", "context": {"n": 3}}])
        ids += self.post({"type": "t", "context": {"n": 4}})  # no topic: the default topic, always allowed
        status, body = self.answer({"type": "t", "topic": f"{ok}3"})  # allowed, but over the cap
        self.assertEqual(status, 400, body)
        self.assertIn(repr(f"{ok}3"), body["error"])
        self.assertIn("kafka.max_topics (2)", body["error"])

        # ZeroMQ: a counted rejection, on both sockets and on both BSON paths.
        bson_client, json_client = self.client("bson"), self.client("json")
        bson_client.event("t", {"n": 5}, topic=bad)  # journaled as it came, were it allowed
        bson_client.event("t", {"n": 6}, topic=f"{ok}3", stimestamp=1700000000)  # normalized
        bson_client.event_noval("t", {"n": 7}, topic=self.notice_topic)
        json_client.event("t", {"n": 8}, topic=self.notice_topic)
        bson_client.event("t", {"n": 9}, topic=f"{ok}2")
        json_client.event("t", {"n": 10}, topic=f"{ok}1")
        self.wait_accepted("zmq_bson", 1)
        self.wait_accepted("zmq_json", 1)
        sources = self.status()["sources"]
        self.assertEqual(sources["zmq_bson"]["rejected"], 3)
        self.assertEqual(sources["zmq_json"]["rejected"], 1)
        self.assertIn(repr(self.notice_topic), sources["zmq_bson"]["last_rejection"])
        self.assertIn(repr(self.notice_topic), sources["zmq_json"]["last_rejection"])
        self.assertEqual(sources["http"]["rejected"], 2 + 1 + 1 + 1)
        self.assertEqual(self.kafka_topics_status()["refused"], 2 + 1 + 1 + 1 + 4)

        self.wait_delivered(["kafka"])
        self.assertEqual(sorted(e["context"]["n"] for e in journal_events(self.journal_dir)
                                if e.get("source") != "notice"), [1, 2, 3, 4, 9, 10])
        self.assertEqual(self.topics_on_broker(f"zs-{self.uid}-"),
                         {f"{ok}1", f"{ok}2", self.default_topic, self.notice_topic})
        self.stop(server)
        self.assertNotIn("\x1b", server.log())
        self.assertNotIn("\nCRITICAL zspark.server: forged", server.log())


class TakenTopics(unittest.TestCase):
    """The record of the topics taken, without a broker."""

    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def policy(self, **kafka):
        from zspark.config import KafkaConfig
        from zspark.topics import TopicPolicy, state_path

        return TopicPolicy(KafkaConfig(**kafka), state_path(self.tmp.join("journal")))

    def route(self, policy, *topics):
        return [policy.route({"type": "t", "topic": t}) for t in topics]

    def test_the_topics_taken_survive_a_restart_and_the_cap_with_them(self):
        import gevent  # noqa: F401  (save() waits in gevent's thread pool)

        policy = self.policy(max_topics=2)
        self.assertEqual(self.route(policy, "a", "b", "c"), ["a", "b", "zspark"])
        self.assertTrue(policy.unsaved)
        policy.save()
        self.assertFalse(policy.unsaved)
        path = policy.path
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

        again = self.policy(max_topics=2)
        self.assertEqual(self.route(again, "c", "d", "b", "a"), ["zspark", "zspark", "b", "a"])
        self.assertFalse(again.unsaved)
        more = self.policy(max_topics=3)  # a higher cap makes room for one more
        self.assertEqual(self.route(more, "c", "d"), ["c", "zspark"])
        more.save()
        narrower = self.policy(max_topics=3, topics_allowed=["a", "[bd]"])  # 'c' no longer allowed
        self.assertEqual(self.route(narrower, "a", "b", "c", "d"), ["a", "b", "zspark", "d"])

    def test_a_symlink_in_place_of_the_state_file_is_not_followed(self):
        from zspark.topics import state_path

        secret = self.tmp.join("elsewhere.json")
        with open(secret, "w") as f:
            json.dump({"topics": ["x", "y"]}, f)
        os.makedirs(os.path.dirname(state_path(self.tmp.join("journal"))))
        os.symlink(secret, state_path(self.tmp.join("journal")))
        policy = self.policy(max_topics=1)
        self.assertEqual(self.route(policy, "x", "y"), ["x", "zspark"])


class HourTrackerBound(unittest.TestCase):
    """The hour tracker (zspark/hours.py) wired as the server wires it follows at most
    kafka.max_topics topics taken from events, beside the default topic."""

    def test_the_topics_followed_are_bounded(self):
        from zspark.config import KafkaConfig
        from zspark.event import NOTICE_SOURCE
        from zspark.hours import HourTracker
        from zspark.ingest import Ingest
        from zspark.journal import Journal
        from zspark.metrics import Metrics
        from zspark.notices import Notices
        from zspark.sinks.kafka import KafkaSink
        from zspark.topics import TopicPolicy

        tmp = TempDir()
        self.addCleanup(tmp.remove)
        t0 = 1_800_000_000 // HOUR * HOUR
        journal = Journal(tmp.join("journal")).open()
        self.addCleanup(journal.close)
        ingest = Ingest(journal, "n1", Metrics())
        notices = Notices(ingest, "n1", dict)
        # Topics saved by an earlier version that followed every topic it saw.
        os.makedirs(tmp.join("journal", "notices"))
        with open(tmp.join("journal", "notices", "hours.json"), "w") as f:
            json.dump({"counted_to": 0, "next_hour": t0, "counts": {}, "boundaries": {}, "late": 0,
                       "topics": {f"old{i}": t0 - HOUR for i in range(300)}}, f)

        kafka = KafkaConfig(enabled=True, brokers="127.0.0.1:9", max_topics=5)
        policy = TopicPolicy(kafka)
        sink = KafkaSink(kafka, policy)
        self.addCleanup(sink.producer.purge)
        forwarder = types.SimpleNamespace(cursor=types.SimpleNamespace(offset=0), on_delivered=None)
        now = [t0 + 600]
        tracker = HourTracker(journal, forwarder, sink.topic_for, notices.publish, grace_s=30,
                              clock=lambda: now[0], follows=policy.follows)
        at = datetime.datetime.fromtimestamp(t0 + 700, datetime.timezone.utc)
        events = [ingest.normalize_one({"type": "t", "topic": f"new{i}"}, "http", now=at) for i in range(500)]
        ingest.append_nowait(events, "http").wait()
        delivered = journal_events(journal.directory)
        for event in delivered:
            policy.route(event)  # what the sink does as it sends them
        forwarder.cursor.offset = journal.end_offset
        tracker.delivered(0, journal.end_offset, delivered)
        now[0] = t0 + HOUR + 30
        tracker.catch_up()
        tracker.close_hours()
        tracker.announce_ready()
        said = {e["context"]["topic"]: e["context"]["count"] for e in journal_events(journal.directory)
                if e.get("source") == NOTICE_SOURCE and e["type"] == "hour_complete"}
        self.assertEqual(set(said), {f"new{i}" for i in range(5)} | {"zspark"})
        self.assertEqual(said["zspark"], 495)
        self.assertLessEqual(len(tracker.topics), 6)


if __name__ == "__main__":
    unittest.main()
