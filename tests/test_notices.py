"""The node's notices end to end: `zcmd serve` as a child process with the real local broker and
database. node_online, heartbeats and node_offline arrive in Kafka's notice topic and MongoDB's
notice collection; hour_complete notices, with the clock moved (tests/shifted_clock.py),
arrive once per hour and topic with the count of events delivered, across a SIGKILL and restart,
and only after the broker, down at the hour boundary, is back."""
import calendar
import collections
import json
import signal
import time
import unittest
import uuid

from zspark.hours import HOUR, hour_text

from .shifted_clock import CLOCK_OFFSET_ENV, MODULE as SHIFTED_CLOCK
from .support import (ServeProcess, TempDir, config_data, journal_events, kafka_read, mongo_client,
                      request, start_broker, start_mongo, wait_until, write_config)

GRACE = 1.0
BOUNDARY_MARGIN_S = 60  # more than a test of HourComplete takes from its first event to its last look


def hour_epoch(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:00:00Z"))
SERVICES = {}


def setUpModule():
    state = TempDir(prefix="zspark-services-")
    SERVICES["state"] = state
    try:
        SERVICES["mongo"] = start_mongo(state.join("mongo"))
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    service = SERVICES.pop("mongo", None)
    if service is not None:
        service.stop()
    state = SERVICES.pop("state", None)
    if state is not None:
        state.remove()


class NoticeCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.uid = uuid.uuid4().hex[:10]
        self.notice_topic = f"zs-{self.uid}-notify"
        self.database = f"zs_{self.uid}"
        self.broker = start_broker(self.tmp.join("broker"))
        self.addCleanup(lambda: self.broker.stop())
        self.mongo = mongo_client(SERVICES["mongo"].uri, tz_aware=True)
        self.addCleanup(self.mongo.close)
        self.clock_file = self.tmp.join("clock-offset")
        self.set_clock(time.time())

    def set_clock(self, moment):
        """Make the server's hour-complete clock read `moment` now (and run on from there)."""
        with open(self.clock_file, "w") as f:
            f.write(repr(moment - time.time()))

    def serve(self, **notices):
        data = config_data(self.tmp.path,
                           kafka={"enabled": True, "brokers": self.broker.address,
                                  "default_topic": f"zs-{self.uid}-default",
                                  "notice_topic": self.notice_topic, "message_timeout_ms": 3000},
                           mongo={"enabled": True, "uri": SERVICES["mongo"].uri, "database": self.database},
                           forward={"batch_wait_ms": 2, "backoff_max_s": 0.5},
                           notices={"enabled": True, "heartbeat_s": 0, "hour_grace_s": GRACE,
                                    "check_s": 0.1, **notices})
        self.port = data["http"]["port"]
        path = write_config(self.tmp.path, data)
        server = ServeProcess(path, self.port, self.tmp.join("serve.log"), module=SHIFTED_CLOCK,
                              env={CLOCK_OFFSET_ENV: self.clock_file}).start()
        self.addCleanup(server.stop, signal.SIGKILL)
        self.server = server
        # /imok can come from an HTTP worker (http.workers) while the owner is still starting;
        # /status waits for the whole start, so the hour tracker has read its clock before a test
        # moves it.
        self.status()
        return server

    def send(self, topic, count):
        events = [{"type": "click", "context": {"n": i}, **({"topic": topic} if topic else {})}
                  for i in range(count)]
        status, _, body = request(self.port, "POST", "/log", events)
        self.assertEqual(status, 200, body)

    def status(self):
        return json.loads(request(self.port, "GET", "/status")[2])

    def kafka_notices(self, done):
        return [m.json() for m in kafka_read(self.broker.address, [self.notice_topic],
                                             done=lambda ms: done([m.json() for m in ms]), timeout=60)]

    def mongo_notices(self, **query):
        from pymongo.errors import OperationFailure

        for attempt in range(5):  # SecantusDB (a beta) now and then answers a query "internal error"
            try:
                return list(self.mongo[self.database].notice.find(query))
            except OperationFailure as e:
                if e.code != 1 or attempt == 4:
                    raise
                time.sleep(0.2)


class NodeNotices(NoticeCase):
    def test_online_heartbeats_and_offline_arrive_in_kafka_and_mongodb(self):
        server = self.serve(heartbeat_s=0.3, hour_complete=False)
        self.send("web", 5)
        wait_until(lambda: any(n["context"]["sources"].get("http", {}).get("accepted") == 5
                               for n in self.mongo_notices(type="heartbeat")),
                   timeout=30, message="a heartbeat counting the 5 events in MongoDB")
        self.assertEqual(server.stop(signal.SIGTERM), 0)

        from_kafka = self.kafka_notices(lambda ns: any(n["type"] == "node_offline" for n in ns))
        types = [n["type"] for n in from_kafka]
        self.assertEqual(types[0], "node_online", types)
        self.assertEqual(types[-1], "node_offline", types)
        self.assertGreaterEqual(types.count("heartbeat"), 1, types)
        self.assertEqual(set(types), {"node_online", "heartbeat", "node_offline"})
        for notice in from_kafka:
            self.assertEqual((notice["node"], notice["source"]), ("test", "notice"))
            self.assertEqual(notice["context"]["pid"], server.proc.pid)
        offline = from_kafka[-1]["context"]
        self.assertEqual(offline["sources"]["http"]["accepted"], 5)
        self.assertEqual(set(offline["forwarders"]), {"kafka", "mongo"})

        # MongoDB holds the same notices, once each, and its event collection only the events.
        in_mongo = self.mongo_notices()
        self.assertEqual(sorted(str(n["_id"]) for n in in_mongo), sorted(n["_id"] for n in from_kafka))
        self.assertEqual(self.mongo[self.database].event.count_documents({}), 5)
        self.assertEqual(self.mongo[self.database].event.count_documents({"source": "notice"}), 0)

    def test_notices_can_be_turned_off(self):
        server = self.serve(enabled=False)
        self.send("web", 2)
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertEqual([e["type"] for e in journal_events(self.tmp.join("journal"))], ["click", "click"])


class HourComplete(NoticeCase):
    def setUp(self):
        # Events are stamped with the real time. Events sent on both sides of a real hour's end
        # would make that hour complete (and announced) by the real clock, before the test moves
        # the tracker's: start well inside an hour.
        to_next_hour = HOUR - time.time() % HOUR
        if to_next_hour < BOUNDARY_MARGIN_S:
            time.sleep(to_next_hour + GRACE + 0.5)
        super().setUp()

    def journaled_hours(self):
        """{(hour, Kafka topic): count} of the events in the journal, by their timestamps."""
        counts = collections.Counter()
        for event in journal_events(self.tmp.join("journal")):
            if event.get("source") != "notice":
                hour = int(event["timestamp"].timestamp()) // HOUR * HOUR
                counts[(hour_text(hour), event.get("topic") or f"zs-{self.uid}-default")] += 1
        return counts

    @staticmethod
    def hour_notices(notices):
        return [(n["context"]["hour"], n["topic"], n["context"]["count"])
                for n in notices if n["type"] == "hour_complete"]

    def announced(self, hour):
        return lambda ns: any(h == hour_text(hour) for h, _, _ in self.hour_notices(ns))

    def test_each_hour_is_announced_once_per_topic_with_its_count_across_a_crash(self):
        web, app = f"zs-{self.uid}-web", f"zs-{self.uid}-app"
        server = self.serve()
        self.send(web, 7)
        self.send(app, 4)
        self.send(None, 3)
        expected = self.journaled_hours()
        self.assertEqual(sum(expected.values()), 14)
        last_hour = max(hour_epoch(h) for h, _ in expected)
        self.set_clock(last_hour + HOUR + GRACE + 0.5)
        notices = self.kafka_notices(self.announced(last_hour))
        self.assertEqual(sorted(self.hour_notices(notices)),
                         sorted((h, t, n) for (h, t), n in expected.items()))
        for notice in notices:
            self.assertEqual((notice["node"], notice["source"]), ("test", "notice"))

        # Killed, then restarted two hours later: the two quiet hours are announced with 0 for
        # every topic seen, and nothing is announced twice.
        wait_until(lambda: self.status()["hour_complete"]["next_hour"] == hour_text(last_hour + HOUR),
                   message="the hour marked done")
        server.stop(signal.SIGKILL)
        self.set_clock(last_hour + 3 * HOUR + GRACE + 0.5)
        server = self.serve()
        notices = self.kafka_notices(self.announced(last_hour + 2 * HOUR))
        said = self.hour_notices(notices)
        self.assertEqual(len(said), len(set((h, t) for h, t, _ in said)), f"an hour said twice: {said}")
        topics = {t for _, t in expected}
        for hour in (last_hour + HOUR, last_hour + 2 * HOUR):
            self.assertEqual(sorted((t, n) for h, t, n in said if h == hour_text(hour)),
                             sorted((t, 0) for t in topics))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        in_mongo = sorted((n["context"]["hour"], n["topic"], n["context"]["count"])
                          for n in self.mongo_notices(type="hour_complete"))
        self.assertEqual(in_mongo, sorted(said))

    def test_an_hour_is_announced_only_once_the_broker_is_back(self):
        web = f"zs-{self.uid}-web"
        self.serve()
        self.send(web, 2)
        port = self.broker.port
        self.broker.stop()
        self.send(web, 3)  # acknowledged, held in the journal
        last_hour = max(hour_epoch(h) for h, _ in self.journaled_hours())
        self.set_clock(last_hour + HOUR + GRACE + 0.5)
        wait_until(lambda: hour_text(last_hour) in self.status()["hour_complete"]["hours_waiting"],
                   message="the hour's boundary recorded")
        time.sleep(1.0)  # ten looks at the hour while the broker is down
        self.assertEqual(self.mongo_notices(type="hour_complete"), [])  # MongoDB is up: nothing to deliver

        self.broker = start_broker(self.tmp.join("broker"), port=port)  # an empty broker, same address
        notices = self.kafka_notices(self.announced(last_hour))
        expected = self.journaled_hours()
        self.assertEqual(sorted(self.hour_notices(notices)),
                         sorted((h, t, n) for (h, t), n in expected.items()),
                         f"status: {self.status()}\nlog:\n{self.server.log()[-6000:]}")
        self.assertEqual(sum(expected.values()), 5)
        wait_until(lambda: len(self.mongo_notices(type="hour_complete")) == len(expected),
                   message="the notice in MongoDB")


if __name__ == "__main__":
    unittest.main()
