"""A damaged journal: random bytes flipped, segments truncated at random points (the last one
among them), a segment deleted, while the server is stopped. It starts anyway, reports what it
skipped (log and /status), delivers every record that survived, loses exactly the damaged ones
(compared with what was acknowledged), and events sent after the restart arrive everywhere.

Before the damage MongoDB has received everything and Kafka nothing (its broker is started only
afterwards), so Kafka shows what survived, and MongoDB's saved cursor is past the journal's new
end: the server must not give those offsets out again."""
import os
import signal
import time
import unittest

from zspark.journal import decode_event, list_segments, record

from ..appliance import Services, message_id
from ..support import free_port, start_broker, wait_until
from .faultcase import FaultCase, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

SEGMENTS = scaled(12, 40)  # written before the damage
FLIPPED_SEGMENTS = scaled(3, 10)  # segments with bytes flipped, 1 to 3 places each


def segment_records(path):
    """[(offset, start, end, uid, id)] of the records in a segment file, by byte position."""
    with open(path, "rb") as f:
        data = f.read()
    records, pos = [], 0
    while pos < len(data):
        offset, start, end = record.parse(data, pos)  # the pristine journal: every record intact
        event = decode_event(data[start:end])
        records.append((offset, pos, end, event["context"]["uid"], str(event["_id"])))
        pos = end
    return records


class Corruption(FaultCase):
    services = SERVICES

    def test_flipped_truncated_and_deleted_the_server_starts_and_loses_only_the_damaged_records(self):
        port = free_port()
        self.configure(kafka={"brokers": f"127.0.0.1:{port}"}, mongo={},
                       journal={"segment_bytes": 16 * 1024})
        server = self.serve()
        load = self.load("before", workers=2, pad=100, http_pause=0.005, zmq_pause=0.05)
        wait_until(lambda: len(list_segments(self.journal_dir)) > SEGMENTS, timeout=60,
                   message=f"{SEGMENTS} segments written")
        load.finish()
        self.wait_delivered(["mongo"])
        self.stop(server)
        acknowledged = load.acknowledged()

        # The journal as it was, then the damage.
        bases = list_segments(self.journal_dir)
        path = {b: os.path.join(self.journal_dir, record.segment_name(b)) for b in bases}
        records = {b: segment_records(path[b]) for b in bases}
        journaled = {uid: id_ for b in bases for _, _, _, uid, id_ in records[b]}
        self.assertEqual(set(journaled), acknowledged, "the journal holds what was acknowledged")
        end = max(r[0] for r in records[bases[-1]]) + 1
        lost, done = set(), []  # lost: (offset, uid)

        deleted = self.rng.choice(bases[1:-1])
        os.unlink(path[deleted])
        lost |= {(o, u) for o, _, _, u, _ in records[deleted]}
        done.append(f"deleted {record.segment_name(deleted)}")

        for base in (bases[-1], self.rng.choice([b for b in bases[1:-1] if b != deleted])):
            size = os.path.getsize(path[base])
            cut = self.rng.randrange(1, size // 2 if base == bases[-1] else size)
            os.truncate(path[base], cut)
            lost |= {(o, u) for o, _, e, u, _ in records[base] if e > cut}
            done.append(f"truncated {record.segment_name(base)} at byte {cut} of {size}")

        for base in self.rng.sample([b for b in bases if b != deleted], FLIPPED_SEGMENTS):
            size = os.path.getsize(path[base])
            with open(path[base], "r+b") as f:
                for at in self.rng.sample(range(size), self.rng.randint(1, 3)):
                    f.seek(at)
                    byte = f.read(1)[0]
                    f.seek(at)
                    f.write(bytes([byte ^ self.rng.randint(1, 255)]))
                    lost |= {(o, u) for o, s, e, u, _ in records[base] if s <= at < e}
                    done.append(f"flipped byte {at} of {record.segment_name(base)}")
        lost_uids = {u for _, u in lost}

        # It starts, delivers what survived to Kafka and reports what it skipped.
        broker = start_broker(self.tmp.join("broker"), port)
        self.addCleanup(broker.stop)
        self.broker = broker
        server = self.serve()
        status = self.status()
        self.assertEqual(status["journal"]["end_offset"], end,
                         "offsets MongoDB's cursor passed are not given out again")
        after = [{"type": "after", "topic": self.topic, "context": {"uid": f"after-{i}"}} for i in range(5)]
        after_ids = self.post(after)
        status = self.wait_delivered(["kafka", "mongo"])
        damage = status["journal"]["damage"]
        self.assertEqual(damage["missing_offsets"], len(lost),
                         f"/status reports as missing exactly the {len(lost)} records damaged by: {done}")
        self.assertGreater(damage["regions"], 0, damage)
        log = server.log()
        for said in ("are missing", "skipped"):
            self.assertIn(said, log, f"the log says what was skipped: {damage}")

        survived = {id_ for uid, id_ in journaled.items() if uid not in lost_uids}
        messages = self.read_kafka([self.topic, self.default_topic], survived | set(after_ids))
        kafka = {message_id(m) for m in messages}
        self.assertEqual(sorted(kafka - set(after_ids) - survived), [], "Kafka got records that were damaged")
        self.assertEqual(sorted(survived - kafka), [], f"intact records missing in Kafka after: {done}")
        self.assertEqual(len(messages), len(kafka), "Kafka got a record twice")
        self.assertTrue(set(after_ids) <= kafka, "events sent after the restart missing in Kafka")
        mongo = self.mongo_ids()
        self.assertEqual(set(mongo), set(journaled.values()) | set(after_ids),
                         "MongoDB: everything from before the damage and everything after")
        self.assertEqual(len(mongo), len(set(mongo)), "MongoDB holds an event twice")
        self.stop(server, signal.SIGTERM)
        self.summary(sent=len(load.sent_uids()) + len(after), acknowledged=len(acknowledged) + len(after),
                     damaged=len(lost), delivered={"kafka": len(kafka), "mongo": len(set(mongo))},
                     duplicated={"kafka": len(messages) - len(kafka), "mongo": len(mongo) - len(set(mongo))},
                     rejected=load.rejected, damage=f"{len(done)} places",
                     skipped_regions=damage["regions"], cut_bytes=damage["cut_bytes"])

    def test_a_forwarder_that_reaches_offsets_missing_at_the_journals_end_waits_and_the_server_serves_on(self):
        # MongoDB delivers 20 events; the journal then loses its last 5 (cut cleanly between two
        # records). At the restart new records start at 20, past MongoDB's cursor, and Kafka,
        # enabled only now, delivers 0..14, then stands before the missing 15..19 with nothing
        # to read. It must wait there (it once spun without yielding: no request was answered,
        # and the Kafka forwarder process never heard of new records).
        self.configure(mongo={})
        server = self.serve()
        before = self.post([{"type": "before", "topic": self.topic, "context": {"uid": f"before-{i}"}}
                            for i in range(20)])
        self.wait_delivered(["mongo"])
        self.stop(server)
        last = list_segments(self.journal_dir)[-1]
        path = os.path.join(self.journal_dir, record.segment_name(last))
        cut = {offset: start for offset, start, _, _, _ in segment_records(path)}[15]
        os.truncate(path, cut)

        self.configure(mongo={}, kafka={})
        server = self.serve()
        wait_until(lambda: self.status()["forwarders"]["kafka"]["delivered"] == 15,
                   message="Kafka to deliver the 15 records left")
        time.sleep(1.0)  # standing before the missing offsets
        status = self.status()
        self.assertEqual((status["journal"]["end_offset"], status["forwarders"]["kafka"]["cursor"]), (20, 15))
        after = self.post([{"type": "after", "topic": self.topic, "context": {"uid": f"after-{i}"}}
                           for i in range(3)])
        self.wait_delivered(["kafka", "mongo"])
        messages = self.read_kafka([self.topic], before[:15] + after)
        self.assertEqual(sorted(message_id(m) for m in messages), sorted(before[:15] + after))
        self.stop(server)


if __name__ == "__main__":
    unittest.main()
