"""SIGKILL at random moments, again and again, under mixed HTTP and ZeroMQ load (and now and then
once more while it starts: recovering, forwarders resuming): after the last restart every acknowledged event is in MongoDB exactly once with the id it was answered with, and
in Kafka at least once (at most one batch again per kill). Segments are small and retention runs
on a short timer, so kills also land on segment rolls and deletions."""
import collections
import signal
import time
import unittest

from ..appliance import BATCH, Services, message_id
from ..support import ServeProcess
from .faultcase import FaultCase, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

KILLS = scaled(10, 40)  # under load; kills during start-up come on top
RUN_SECONDS = scaled((0.1, 1.5), (0.1, 5.0))  # how long a round serves before its kill


class RepeatedSigkill(FaultCase):
    services = SERVICES

    def kill_during_start(self):
        """Start the server and kill it before it answers: recovery, forwarders resuming."""
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log")).spawn()
        self.addCleanup(server.kill)
        time.sleep(self.rng.uniform(0.05, 1.0))
        server.proc.kill()
        return server.proc.wait()

    def test_killed_at_random_moments_under_mixed_load_every_acknowledged_event_arrives(self):
        # Small segments and retention on a short timer: kills also land on rolls and deletions.
        self.configure(kafka={}, mongo={}, journal={"segment_bytes": 64 * 1024, "retain_hours": 0,
                                                    "retention_check_s": 0.2})
        acknowledged, answered = set(), {}  # answered: uid -> id from HTTP 200 answers
        sent_uids = set()
        rejected = 0
        kills = {"serving": 0, "starting": 0}
        for round_ in range(KILLS):
            if round_ and self.rng.random() < 0.3:  # now and then an extra kill as it starts
                self.assertEqual(self.kill_during_start(), -signal.SIGKILL)
                kills["starting"] += 1
            server = self.serve()
            load = self.load(f"r{round_}", workers=2, http_pause=0.01, zmq_pause=0.1)
            time.sleep(self.rng.uniform(*RUN_SECONDS))
            load.poll()
            self.stop(server, signal.SIGKILL)
            kills["serving"] += 1
            load.stop()
            self.assertEqual(load.http.bad, [], "answers other than 200/503 under load")
            acknowledged |= load.acknowledged()
            answered.update(load.http.acked)
            sent_uids |= load.sent_uids()
            rejected += load.rejected + len(load.http.bad)

        server = self.serve()
        self.assert_no_damage(self.wait_delivered(["kafka", "mongo"], timeout=120))
        # Retention has deleted delivered segments: MongoDB, with one copy of each, is the record.
        docs = list(self.collection().find({}, {"context.uid": 1}))
        delivered = {d["context"]["uid"]: str(d["_id"]) for d in docs}
        ids = set(delivered.values())
        self.assertFalse(acknowledged - set(delivered),
                         f"{len(acknowledged - set(delivered))} of {len(acknowledged)} acknowledged events "
                         f"are not in MongoDB after {sum(kills.values())} kills, e.g. {sorted(acknowledged - set(delivered))[:5]}")
        wrong = {u: (i, delivered[u]) for u, i in answered.items() if delivered[u] != i}
        self.assertEqual(wrong, {}, "events stored under another id than the one answered")
        self.assertFalse(set(delivered) - sent_uids, "MongoDB holds events nobody sent")
        mongo_duplicated = len(docs) - len(ids)
        self.assertEqual(mongo_duplicated, 0, "MongoDB holds an event twice")

        messages = self.read_kafka([self.topic, self.default_topic], ids, timeout=90)
        kafka_copies = collections.Counter(message_id(m) for m in messages)
        self.assertFalse(ids - set(kafka_copies), "events in MongoDB missing in Kafka")
        self.assertFalse(set(kafka_copies) - ids, "events in Kafka missing in MongoDB")
        kafka_duplicated = len(messages) - len(kafka_copies)
        bound = (kills["serving"] + kills["starting"]) * BATCH
        self.assertLessEqual(kafka_duplicated, bound, f"more duplicates in Kafka than one batch "
                                                      f"({BATCH}) per kill")
        self.assertEqual(rejected, 0, "valid events were rejected")
        self.stop(server)
        self.summary(sent=len(sent_uids), acknowledged=len(acknowledged),
                     delivered={"kafka": len(kafka_copies), "mongo": len(ids)},
                     duplicated={"kafka": kafka_duplicated, "mongo": mongo_duplicated},
                     rejected=rejected, kills=kills)


if __name__ == "__main__":
    unittest.main()
