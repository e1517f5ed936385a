"""The journal at its size cap under mixed load: HTTP answers 503 with Retry-After, ZeroMQ holds
its events and retries, nothing already journaled is harmed; once the forwarders pass the old
segments and retention (on a short timer) deletes them, ingest resumes by itself, and every
acknowledged event arrives.

The Kafka forwarder is what holds the journal full: its broker is started only once the journal
is full, on the port the appliance was told."""
import collections
import unittest

from ..appliance import Services, message_id
from ..support import free_port, journal_events, start_broker, wait_until
from .faultcase import FaultCase, report, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

MAX_BYTES = scaled(128 * 1024, 4 * 1024 * 1024)
RETRY_AFTER = 2


class JournalFull(FaultCase):
    services = SERVICES

    def test_at_the_size_cap_503_with_retry_after_then_ingest_resumes_by_itself(self):
        port = free_port()
        self.configure(kafka={"brokers": f"127.0.0.1:{port}"}, mongo={},
                       journal={"max_bytes": MAX_BYTES, "segment_bytes": MAX_BYTES // 8,
                                "retain_hours": 0, "retention_check_s": 0.2},
                       http={"retry_after_s": RETRY_AFTER})
        server = self.serve()
        load = self.load("full", workers=2, zmq_pause=0.02)
        wait_until(lambda: load.http.refused >= 5, timeout=60, message="the journal full (503 answers)")

        # Full: a clear refusal, and the journal keeps what it took.
        headers, error, probes, probes_sent = self.refused_probe()
        self.assertEqual(headers.get("retry-after"), str(RETRY_AFTER))
        self.assertIn("the journal is full", error)
        acked_while_full = {**load.http.acked, **probes}
        journal = {e["context"]["uid"]: str(e["_id"]) for e in journal_events(self.journal_dir)}
        harmed = {u: i for u, i in acked_while_full.items() if journal.get(u) != i}
        self.assertEqual(harmed, {}, "events acknowledged before the journal filled are missing or changed")
        full = self.status()
        self.assertLessEqual(full["journal"]["bytes"], MAX_BYTES)
        self.assertGreater(full["sources"]["http"]["refused"], 0)
        self.assertGreater(full["forwarders"]["kafka"]["lag"], 0)
        wait_until(lambda: self.status()["forwarders"]["mongo"]["lag"] == 0,
                   message="MongoDB delivered meanwhile")
        wait_until(lambda: any(self.status()["sources"].get(n, {}).get("refused") for n in load.ZMQ),
                   message="the ZeroMQ sources holding refused events")

        # The broker comes: the Kafka forwarder delivers, retention frees space, ingest resumes.
        broker = start_broker(self.tmp.join("broker"), port)
        self.addCleanup(broker.stop)
        self.broker = broker
        refused_at_resume = load.http.refused
        acked_at_resume = len(load.http.acked)
        wait_until(lambda: len(load.http.acked) >= acked_at_resume + scaled(300, 3000), timeout=60,
                   message="HTTP ingest resuming without a restart")
        load.finish()
        self.assertIsNone(server.proc.poll(), "ingest resumes without a restart")
        status = self.wait_delivered(["kafka", "mongo"], timeout=60)
        self.assert_no_damage(status)
        self.assertEqual(load.http.bad, [], "answers other than 200 and 503")
        self.assertIn("journal retention: deleted", server.log())

        # Every acknowledged event, once in MongoDB, in Kafka; none refused is there.
        docs = list(self.collection().find({}, {"context.uid": 1}))
        delivered = {d["context"]["uid"]: str(d["_id"]) for d in docs}
        acknowledged = load.acknowledged() | set(probes)
        self.assertFalse(acknowledged - set(delivered), "acknowledged events missing in MongoDB")
        self.assertEqual({u: delivered[u] for u in load.http.acked}, load.http.acked,
                         "events stored under another id than the one answered")
        self.assertFalse(set(delivered) - acknowledged, "MongoDB holds events that were refused")
        self.assertEqual(len(docs), len(delivered), "MongoDB holds an event twice")
        messages = self.read_kafka([self.topic, self.default_topic], delivered.values())
        kafka = collections.Counter(message_id(m) for m in messages)
        self.assertEqual(set(kafka), set(delivered.values()), "Kafka holds what MongoDB holds")
        self.stop(server)
        refused_http = load.http.refused
        refused_zmq = sum(s.get("refused", 0) for n, s in status["sources"].items() if n in load.ZMQ)
        report(f"{self.name}: 503 answers {refused_at_resume} while full, {refused_http} in all; "
               f"ZeroMQ events held for room {refused_zmq} times")
        self.summary(sent=len(load.sent_uids()) + probes_sent, acknowledged=len(acknowledged),
                     delivered={"kafka": len(kafka), "mongo": len(delivered)},
                     duplicated={"kafka": len(messages) - len(kafka), "mongo": len(docs) - len(delivered)},
                     rejected=load.rejected, refused={"http_503": refused_http, "zmq_held": refused_zmq})


if __name__ == "__main__":
    unittest.main()
