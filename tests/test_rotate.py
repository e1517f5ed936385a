"""`zcmd rotate` against the real local MongoDB-compatible server (SecantusDB): several rotations
with a keep limit, the dumps read back with bson.decode_file_iter holding exactly the dropped
documents, the forwarder's indexes on the new collection, --dry-run, --keep 0, and rotating
while `zcmd serve` forwards a stream of HTTP events into the collection: none may be lost."""
import gzip
import os
import unittest
import uuid

import bson

from zspark.journal.codec import DECODE_OPTIONS

from .support import (HttpFeeder, ServeProcess, TempDir, config_data, free_port, mongo_client, request,
                      start_mongo, wait_until, write_config, zcmd)

SERVICES = {}


def setUpModule():
    SERVICES["state"] = TempDir(prefix="zspark-rotate-svc-")
    SERVICES["mongo"] = start_mongo(SERVICES["state"].join("mongo"))


def tearDownModule():
    SERVICES.pop("mongo").stop()
    SERVICES.pop("state").remove()


class RotateCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.mongo = SERVICES["mongo"]
        self.database = f"rotate_{uuid.uuid4().hex[:8]}"
        self.client = mongo_client(self.mongo.uri, tz_aware=True)
        self.addCleanup(self.client.close)
        self.db = self.client[self.database]
        self.dumps = self.tmp.join("dumps")
        self.configure()

    def configure(self, **mongo):
        self.data = config_data(self.tmp.path, mongo={"uri": self.mongo.uri, "database": self.database,
                                                      **mongo})
        self.config = write_config(self.tmp.path, self.data)

    def rotate(self, *args, expect=0):
        result = zcmd("-y", self.config, "rotate", "--dump-dir", self.dumps, *args)
        self.assertEqual(result.returncode, expect, f"stdout {result.stdout}\nstderr {result.stderr}")
        return result

    def insert(self, generation, n):
        docs = [{"_id": bson.ObjectId(), "type": f"gen{generation}", "context": {"i": i}} for i in range(n)]
        self.db.event.insert_many(docs)
        return docs

    def counts(self):
        return {name: self.db[name].count_documents({}) for name in self.db.list_collection_names()}

    def dump_files(self):
        return sorted(os.listdir(self.dumps)) if os.path.isdir(self.dumps) else []

    def read_dump(self, name):
        with gzip.open(os.path.join(self.dumps, name)) as f:
            return list(bson.decode_file_iter(f, DECODE_OPTIONS))


class Rotations(RotateCase):
    def test_several_rotations_keep_and_dumps(self):
        generations = {0: self.insert(0, 5)}
        result = self.rotate("--keep", "2")
        self.assertEqual(result.stdout.splitlines(), [
            f"renamed {self.database}.event -> {self.database}.event.0",
            f"indexed the new {self.database}.event: _id_, timestamp_1, type_1",
            f"rotated {self.database}.event: 1 renamed, 0 dumped and dropped (0 documents), keeping 2",
        ])
        self.assertEqual(self.counts(), {"event": 0, "event.0": 5})

        generations[1] = self.insert(1, 6)
        self.rotate("--keep", "2")
        self.assertEqual(self.counts(), {"event": 0, "event.0": 6, "event.1": 5})
        self.assertEqual(self.dump_files(), [])

        generations[2] = self.insert(2, 7)
        result = self.rotate("--keep", "2")  # generation 0, in event.1, goes to a dump
        self.assertEqual(self.counts(), {"event": 0, "event.0": 7, "event.1": 6})
        (dump,) = self.dump_files()
        self.assertRegex(dump, rf"^{self.database}\.event\.1\.\d{{8}}T\d{{6}}Z\.bson\.gz$")
        self.assertEqual(self.read_dump(dump), generations[0])  # exactly the dropped documents
        self.assertIn(f"dumped 5 documents of {self.database}.event.1 to {self.dumps}/{dump}; dropped it",
                      result.stdout)

        generations[3] = self.insert(3, 8)
        self.rotate("--keep", "2")
        self.assertEqual(self.counts(), {"event": 0, "event.0": 8, "event.1": 7})
        dumps = self.dump_files()
        self.assertEqual(len(dumps), 2)
        self.assertEqual(sorted((d["_id"] for name in dumps for d in self.read_dump(name))),
                         sorted(d["_id"] for d in generations[0] + generations[1]))
        self.assertEqual(sorted(self.db["event.1"].distinct("type")), ["gen2"])

        # a smaller --keep dumps every rotated collection beyond it
        generations[4] = self.insert(4, 2)
        result = self.rotate("--keep", "1")
        self.assertEqual(self.counts(), {"event": 0, "event.0": 2})
        dumped = [d for name in self.dump_files() for d in self.read_dump(name)]
        self.assertEqual(len(dumped), 5 + 6 + 7 + 8)
        self.assertEqual({d["_id"] for d in dumped},
                         {d["_id"] for g in range(4) for d in generations[g]})
        for mode in (os.stat(os.path.join(self.dumps, name)).st_mode & 0o777 for name in self.dump_files()):
            self.assertEqual(mode, 0o600)

    def test_indexes_of_the_new_collection(self):
        self.insert(0, 3)
        self.rotate()
        self.assertEqual(sorted(self.db.event.index_information()), ["_id_", "timestamp_1", "type_1"])
        self.assertEqual(self.db.event.count_documents({}), 0)

        self.configure(ttl_days=2)  # the sink makes `timestamp` a TTL index: so must rotate
        self.insert(1, 3)
        self.rotate()
        info = self.db.event.index_information()
        self.assertEqual(info["timestamp_1"].get("expireAfterSeconds"), 2 * 86400)
        self.assertIn("type_1", info)

    def test_dry_run_changes_nothing(self):
        for g in range(3):
            self.insert(g, 2)
            self.rotate("--keep", "2")
        self.insert(3, 4)
        before = self.counts()
        result = self.rotate("--keep", "2", "--dry-run")
        d = self.database
        self.assertEqual(result.stdout.splitlines(), [
            f"would dump {d}.event.1 (2 documents now) to {self.dumps} and drop it",
            f"would rename {d}.event.0 -> {d}.event.1",
            f"would rename {d}.event -> {d}.event.0",
            f"would create the forwarder's indexes on the new {d}.event",
        ])
        self.assertEqual(self.counts(), before)
        self.assertEqual(len(self.dump_files()), 1)  # only the one dump from the third rotation

    def test_keep_zero_dumps_the_collection_itself(self):
        docs = self.insert(0, 4)
        result = self.rotate("--keep", "0")
        self.assertEqual(self.counts(), {"event": 0})
        (dump,) = self.dump_files()
        self.assertTrue(dump.startswith(f"{self.database}.event.0."), dump)
        self.assertEqual(self.read_dump(dump), docs)
        self.assertIn("1 renamed, 1 dumped and dropped (4 documents), keeping 0", result.stdout)

    def test_nothing_to_rotate(self):
        result = self.rotate()
        self.assertEqual(result.stdout, f"nothing to rotate: {self.database}.event does not exist\n")
        self.assertEqual(self.counts(), {})


class Errors(RotateCase):
    def test_mongodb_down(self):
        dead = free_port()
        self.configure(uri=f"mongodb://127.0.0.1:{dead}/?directConnection=true", timeout_ms=300)
        result = self.rotate(expect=1)
        self.assertIn(f"cannot reach MongoDB at mongodb://127.0.0.1:{dead}/", result.stderr)
        self.assertIn("mongo.uri", result.stderr)

    def test_bad_keep(self):
        result = self.rotate("--keep", "-1", expect=2)
        self.assertIn("--keep: must be a whole number, 0 or more", result.stderr)

    def test_collections_beyond_keep_are_dumped(self):
        self.insert(0, 1)
        self.db["event.5"].insert_one({"stray": True})  # left by an earlier, larger --keep
        result = self.rotate("--keep", "3")
        self.assertEqual(self.counts(), {"event": 0, "event.0": 1})
        (dump,) = self.dump_files()
        self.assertTrue(dump.startswith(f"{self.database}.event.5."), dump)
        self.assertEqual([d["stray"] for d in self.read_dump(dump)], [True])
        self.assertIn("1 renamed, 1 dumped and dropped (1 documents)", result.stdout)

    def test_a_failing_step_names_itself(self):
        from zspark.commands.rotate import RotateFailed, execute

        self.db["event.1"].insert_one({"a": 1})
        self.db["event.2"].insert_one({"b": 1})  # in the way, as if another rotate ran meanwhile
        with self.assertRaises(RotateFailed) as caught:
            execute(("rename", "event.1", "event.2"), self.db, self.dumps, 0)
        self.assertIn(f"renaming {self.database}.event.1 to event.2 failed: target namespace exists",
                      str(caught.exception))
        self.assertEqual(self.counts(), {"event.1": 1, "event.2": 1})


class WhileForwarding(RotateCase):
    def test_no_event_lost_while_the_forwarder_inserts(self):
        data = config_data(self.tmp.path, mongo={"enabled": True, "uri": self.mongo.uri, "database": self.database},
                           forward={"batch_size": 20, "batch_wait_ms": 2})
        config = write_config(self.tmp.path, data, "serve.yaml")
        port = data["http"]["port"]
        server = ServeProcess(config, port, self.tmp.join("serve.log")).start(timeout=30)
        self.addCleanup(server.stop)
        feeder = HttpFeeder(port, "rot", workers=3).start()
        self.addCleanup(feeder.stop)
        wait_until(lambda: "event" in self.db.list_collection_names(), message="the first delivery")
        for _ in range(5):
            before = len(feeder.acked)
            wait_until(lambda: len(feeder.acked) > before + 20, message="more events acknowledged")
            self.rotate("--keep", "2")
        feeder.stop()
        self.assertEqual(feeder.bad, [])
        self.assertGreater(len(self.dump_files()), 0)

        def delivered():
            body = request(port, "GET", "/status")[2].decode()
            return '"lag":0' in body and '"state":"running"' in body
        wait_until(delivered, timeout=30, message="the forwarder to deliver everything")
        ids = [str(d["_id"]) for name in self.db.list_collection_names() for d in self.db[name].find({}, {"_id": 1})]
        ids += [str(d["_id"]) for name in self.dump_files() for d in self.read_dump(name)]
        self.assertEqual(len(ids), len(set(ids)), "an event is in two places")
        self.assertEqual(set(feeder.acked.values()) - set(ids), set(), "acknowledged events lost")
        self.assertEqual(sorted(self.db.event.index_information()), ["_id_", "timestamp_1", "type_1"])


class IndexStepWhileInserting(unittest.TestCase):
    """The index step right after `event` is renamed, while inserts recreate `event`: many times
    over, on a server of its own (the local SecantusDB used to deadlock here for good, taking
    every later test with it, when createIndexes and an insert both created the collection)."""

    ROUNDS = 60

    def setUp(self):
        self.tmp = TempDir(prefix="zspark-rotate-race-")
        self.addCleanup(self.tmp.remove)
        self.mongo = start_mongo(self.tmp.join("mongo"))
        self.addCleanup(self.mongo.stop)

    def test_every_round_completes_and_keeps_every_document(self):
        import gevent

        from zspark.commands.rotate import execute

        client = mongo_client(self.mongo.uri, socketTimeoutMS=30000)
        self.addCleanup(client.close)
        db = client.race
        inserted = []

        def insert_forever():
            writer = mongo_client(self.mongo.uri, socketTimeoutMS=30000)
            try:
                while True:
                    docs = [{"_id": bson.ObjectId(), "type": "t"} for _ in range(20)]
                    writer.race.event.insert_many(docs)
                    inserted.extend(d["_id"] for d in docs)
            finally:
                writer.close()

        writers = [gevent.spawn(insert_forever) for _ in range(3)]
        self.addCleanup(gevent.killall, writers)
        wait_until(lambda: "event" in db.list_collection_names(), message="the first insert")
        for n in range(self.ROUNDS):
            execute(("rename", "event", f"event.{n}"), db, self.tmp.join("dumps"), 0)
            execute(("index", "event"), db, self.tmp.join("dumps"), 0)
            self.assertEqual(sorted(db.event.index_information()), ["_id_", "timestamp_1", "type_1"])
            self.assertEqual([w.exception for w in writers if w.dead], [])
        gevent.killall(writers)
        stored = [d["_id"] for name in db.list_collection_names() for d in db[name].find({}, {"_id": 1})]
        self.assertEqual(len(stored), len(set(stored)))
        self.assertEqual(set(inserted) - set(stored), set())
