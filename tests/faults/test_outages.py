"""The broker, then the database, down for a stretch under mixed load, then back: nothing is lost,
the other destination keeps being served, the backlog waits in the journal (not in memory: the
appliance's RSS stays under a ceiling while the backlog on disk grows past it) and drains without a
restart. Each test runs its own broker or database so that it can stop it.

Tansu keeps its data in memory, so a stopped broker loses its topics: what reached Kafka before
the outage is read before the broker stops, and the rest after it came back. It also loses the
producer ids it gave out, as a broker does when an idle producer's id expires: the broker is
stopped once more while idle, and events sent after that must arrive too."""
import collections
import unittest

from ..appliance import Services, message_id
from ..support import start_broker, start_mongo, wait_until, zcmd
from .faultcase import MiB, FaultCase, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

PAD = 16 * 1024  # bytes of padding per event: a backlog of many MiB in a few thousand events
RSS_ALLOWANCE = 32 * MiB  # over the RSS measured under the same load before the outage
BACKLOG = scaled(48 * MiB, 400 * MiB)  # journaled during the outage: more than the allowance


class Outages(FaultCase):
    services = SERVICES

    def outage(self, service, name):
        """Run the outage of `service` (the destination of forwarder `name`); return the figures."""
        other = "mongo" if name == "kafka" else "kafka"
        self.configure(kafka={}, mongo={})
        server = self.serve()

        # Before: under load, delivered everywhere; the RSS that load needs.
        rss = self.rss_watch(server)
        before = self.load("before", workers=2, pad=PAD, zmq_pause=0.05)
        wait_until(lambda: len(before.http.acked) >= 300, timeout=30, message="300 events acknowledged")
        before.finish()
        self.wait_delivered(["kafka", "mongo"])
        warm_rss = rss.stop()
        journal = self.journal_ids()
        topics = [self.topic, self.default_topic]  # GET /log events have no topic: the default one
        kafka_before = self.read_kafka(topics, journal.values()) if name == "kafka" else []
        if kafka_before:
            self.assert_each_once(kafka_before, journal.values(), "Kafka before the outage")

        # During: the journal holds the backlog while the other forwarder keeps delivering.
        at_outage = self.status()
        service.stop()
        rss = self.rss_watch(server)
        during = self.load("during", workers=2, pad=PAD, zmq_pause=0.05)
        outage = self.wait_backing_off(name)
        self.assertTrue(outage["forwarders"][name]["last_error"], outage["forwarders"][name])

        def backlog():
            return self.status()["journal"]["bytes"] - at_outage["journal"]["bytes"]

        wait_until(lambda: backlog() >= BACKLOG, timeout=scaled(60, 300), interval=0.2,
                   message=f"a backlog of {BACKLOG // MiB} MiB in the journal")
        status = self.status()
        self.assertEqual(status["forwarders"][name]["state"], "backing_off")
        self.assertGreater(status["forwarders"][other]["delivered"],
                           at_outage["forwarders"][other]["delivered"] + 100,
                           f"delivery to {other} must go on during the {name} outage")
        self.assertLess(status["forwarders"][other]["lag"], status["forwarders"][name]["lag"])
        backlog_bytes = backlog()
        service.start()
        wait_until(lambda: self.status()["forwarders"][name]["delivered"]
                   > status["forwarders"][name]["delivered"], timeout=60,
                   message=f"the {name} forwarder delivering again")
        during.finish()  # still under load as the destination came back
        self.assert_no_damage(self.wait_delivered(["kafka", "mongo"], timeout=scaled(120, 600)))
        peak_rss = rss.stop()
        self.assertIsNone(server.proc.poll(), "the backlog drains without a restart")
        self.assertLessEqual(
            peak_rss, warm_rss + RSS_ALLOWANCE,
            f"RSS rose to {peak_rss / MiB:.0f} MiB with a {backlog_bytes / MiB:.0f} MiB backlog in the "
            f"journal; under the same load before the outage it was {warm_rss / MiB:.0f} MiB "
            f"(allowed: +{RSS_ALLOWANCE // MiB} MiB)")
        for load in (before, during):
            self.assert_feeder_clean(load.http)

        # Every acknowledged event, once in MongoDB, at least once in Kafka.
        journal = self.journal_ids()
        acknowledged = before.acknowledged() | during.acknowledged()
        self.assertFalse(acknowledged - set(journal), "acknowledged events missing in the journal")
        self.assertFalse(set(journal) - before.sent_uids() - during.sent_uids(),
                         "the journal holds events nobody sent")
        ids = set(journal.values())
        kafka_after = self.read_kafka(topics, ids - {message_id(m) for m in kafka_before}, timeout=90)
        kafka = collections.Counter(message_id(m) for m in kafka_before + kafka_after)
        self.assertFalse(ids - set(kafka), f"{len(ids - set(kafka))} of {len(ids)} events never reached Kafka")
        mongo = self.mongo_ids()
        self.assertEqual(len(mongo), len(set(mongo)), "MongoDB holds an event twice")
        self.assertEqual(set(mongo), ids, "MongoDB holds exactly the journaled events")
        if name == "kafka":
            # Down again while idle and back empty: this producer's id is unknown to it now.
            service.stop()
            service.start()
            later = self.post([{"type": "later", "topic": self.topic, "context": {"uid": f"later-{i}"}}
                               for i in range(3)])
            self.assert_each_once(self.read_kafka(topics, later, timeout=60), later,
                                  "Kafka after a restart that lost the producer's state")
        self.stop(server)
        self.summary(sent=len(before.sent_uids() | during.sent_uids()), acknowledged=len(acknowledged),
                     delivered={"kafka": len(kafka), "mongo": len(set(mongo))},
                     duplicated={"kafka": sum(kafka.values()) - len(kafka), "mongo": len(mongo) - len(set(mongo))},
                     rejected=during.rejected,  # the server's count since it started
                     backlog_mib=round(backlog_bytes / MiB), rss_mib=f"{warm_rss / MiB:.0f}->{peak_rss / MiB:.0f}")

    def test_broker_down_under_load_then_back_nothing_lost_memory_bounded(self):
        broker = start_broker(self.tmp.join("broker"))
        self.addCleanup(broker.stop)
        self.broker = broker
        self.outage(broker, "kafka")

    def test_broker_outage_shows_at_once_and_delivery_resumes_when_it_is_back(self):
        """With a message timeout far longer than any wait here, the outage must be seen from
        librdkafka's word ("all brokers are down"), not from batches timing out, and delivery
        must resume once the broker is back, not once the batch in flight timed out."""
        broker = start_broker(self.tmp.join("broker"))
        self.addCleanup(broker.stop)
        self.broker = broker
        self.configure(kafka={"message_timeout_ms": 600000})
        server = self.serve()

        def events(tag, n):
            return [{"type": "outage", "topic": self.topic, "context": {"uid": f"{tag}-{i}"}}
                    for i in range(n)]

        self.post(events("before", 3))
        self.wait_delivered(["kafka"])
        broker.stop()
        during = self.post(events("during", 5))
        kafka = self.wait_backing_off("kafka")["forwarders"]["kafka"]
        self.assertEqual(kafka["last_error"], "Kafka: 1/1 brokers are down", kafka)
        result = zcmd("-y", self.config, "check")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertTrue(result.stdout.startswith(
            "ZSPARK WARNING - kafka backing_off (Kafka: 1/1 brokers are down); 0 of 1 forwarders running"),
            result.stdout)

        broker.start()
        self.wait_delivered(["kafka"], timeout=60)
        self.assertEqual(self.status()["forwarders"]["kafka"]["state"], "running")
        after = self.post(events("after", 2))
        self.wait_delivered(["kafka"], timeout=60)
        # What reached Kafka before it stopped is gone with it (memory storage); the rest is there.
        self.assertFalse(set(during + after) - {message_id(m) for m in self.read_kafka([self.topic], during + after)})
        self.stop(server)

        log = server.log()
        self.assertIn("Kafka: 1/1 brokers are down", log)
        failed_connects = [line for line in log.splitlines() if f"Connect to ipv4#127.0.0.1:{broker.port} failed" in line]
        self.assertTrue(failed_connects, "the failed connections are logged")
        self.assertEqual([line for line in failed_connects if "FAIL [rdkafka" in line], [],
                         "each failed connection is logged once, by the error callback, not again "
                         "from librdkafka's own log")

    def test_database_down_under_load_then_back_nothing_lost_memory_bounded(self):
        mongo = start_mongo(self.tmp.join("mongo"))
        self.addCleanup(mongo.stop)
        self.mongo = mongo
        self.outage(mongo, "mongo")


if __name__ == "__main__":
    unittest.main()
