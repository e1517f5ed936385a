"""SIGTERM while the forwarders are busy under mixed load: a clean exit 0, the cursors saved where
delivery had got to (never behind what /status showed), and a restart sends exactly the events
past them: every acknowledged event once in MongoDB, in Kafka at most one batch again."""
import collections
import signal
import unittest

from zspark.journal import read_cursor

from ..appliance import BATCH, Services, message_id
from ..support import wait_until
from .faultcase import FaultCase, scaled

# Events posted in one request just before SIGTERM: many batches, more than the forwarders
# deliver in the moments a stop takes before it stops them (MongoDB takes seconds for these).
BURST = 6000

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop


class Sigterm(FaultCase):
    services = SERVICES

    def test_sigterm_while_forwarders_are_busy_exits_0_and_saves_the_cursors(self):
        # No drain at stop: the forwarders are stopped in the middle of their work.
        self.configure(kafka={}, mongo={}, forward={"drain_on_stop_s": 0})
        server = self.serve()
        load = self.load("term", workers=3, zmq_pause=0.05)
        target = self.rng.randint(*scaled((400, 1000), (5000, 20000)))
        wait_until(lambda: len(load.http.acked) >= target, timeout=60, message=f"{target} events acknowledged")
        busy = self.status()["forwarders"]
        self.assertGreater(busy["kafka"]["cursor"], 0)
        self.assertGreater(busy["mongo"]["cursor"], 0)
        # The ZeroMQ producers pause (a stop gives senders that keep on DRAIN_SECONDS, time the
        # forwarders would use to catch up); HTTP load goes on. A burst just before the signal:
        # both forwarders have batches to go when it comes.
        for feeder in load.zmq.values():
            feeder.stop()
        wait_until(lambda: load.poll() and all(load.accepted[n] == len(f.sent) for n, f in load.zmq.items()),
                   message="the ZeroMQ events sent so far accepted")
        burst = [{"type": "burst", "topic": self.topic, "context": {"uid": f"burst-{self.uid}-{i}"}}
                 for i in range(BURST)]
        burst_ids = self.post(burst)
        self.stop(server, signal.SIGTERM)
        load.stop()
        self.assertEqual(load.http.bad, [], "answers other than 200 and 503 (stopping)")
        self.assertNotIn("Traceback", server.log())

        saved = {}
        for name in ("kafka", "mongo"):
            saved[name] = read_cursor(self.journal_dir, name)
        journal = self.journal_ids()
        acknowledged = load.acknowledged() | {e["context"]["uid"] for e in burst}
        self.assertFalse(acknowledged - set(journal), "acknowledged events missing in the journal")
        self.assertTrue({journal[e["context"]["uid"]] for e in burst} == set(burst_ids))
        total = len(journal)
        self.assertTrue(any(saved[name] < total for name in saved),
                        "the forwarders were done before the stop: the test stopped nothing busy")
        for name in ("kafka", "mongo"):
            self.assertGreaterEqual(saved[name], busy[name]["cursor"], f"{name} cursor went back")
            self.assertLessEqual(saved[name], total)

        server = self.serve()
        started = self.status()["forwarders"]
        for name in ("kafka", "mongo"):
            self.assertGreaterEqual(started[name]["cursor"], saved[name],
                                    f"{name}: a restart must resume at the saved cursor")
        status = self.wait_delivered(["kafka", "mongo"])
        self.assert_no_damage(status)
        for name in ("kafka", "mongo"):
            self.assertEqual(status["forwarders"][name]["delivered"], total - saved[name],
                             f"{name}: after the restart exactly the events past the saved cursor are sent")
        ids = set(journal.values())
        messages = self.read_kafka([self.topic, self.default_topic], ids)
        kafka = collections.Counter(message_id(m) for m in messages)
        self.assertEqual(set(kafka), ids, "Kafka holds exactly the journaled events")
        self.assertLessEqual(len(messages) - len(kafka), BATCH, "more than one batch sent again to Kafka")
        mongo = self.mongo_ids()
        self.assertEqual(set(mongo), ids, "MongoDB holds exactly the journaled events")
        self.assertEqual(len(mongo), len(set(mongo)), "MongoDB holds an event twice")
        self.stop(server)
        self.summary(sent=len(load.sent_uids()) + BURST, acknowledged=len(acknowledged), journaled=total,
                     delivered={"kafka": len(kafka), "mongo": len(set(mongo))},
                     duplicated={"kafka": len(messages) - len(kafka), "mongo": len(mongo) - len(set(mongo))},
                     rejected=load.rejected, left_at_stop={n: total - saved[n] for n in saved})


if __name__ == "__main__":
    unittest.main()
