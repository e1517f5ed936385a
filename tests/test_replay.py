"""`zcmd replay`: selecting journal records by offset, time, type and topic; printing them, counting
them (--dry-run) and re-sending them to a real MongoDB-compatible server (SecantusDB), a real
Kafka-compatible broker (Tansu) and a ZeroMQ SUB socket; refusals, unreachable destinations and
bad arguments; and that the forwarders' cursors never move.

Journals are written directly with `zspark.journal.Journal` (fast), except in the test that runs
`zcmd serve` beside the replay."""
import datetime
import json
import os
import re
import time
import unittest
import uuid

import gevent
import zmq.green as zmq_green

from zspark.journal import read_cursor
from zspark.localservices import Broker, Mongo

from .support import (ROOT, ServeProcess, TempDir, config_data, free_port, request, wait_until, write_config,
                      write_journal, zcmd)

UTC = datetime.timezone.utc
BASE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TYPES = ("page.view", "click", "checkout.done")
TOPICS = ("web", "billing")
VENVS = os.path.join(ROOT, ".state", "venvs")


def sample_events(n, base=BASE, step=datetime.timedelta(minutes=1)):
    """n events a minute apart from `base`; type and topic cycle so that filters pick known ones."""
    return [{"timestamp": base + i * step, "type": TYPES[i % 3], "topic": TOPICS[i % 2],
             "level": "info", "node": "test", "source": "http", "context": {"i": i}}
            for i in range(n)]


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary(stderr):
    """The numbers of the final summary line: {'scanned': 10, 'matched': 4, ...}."""
    lines = [line for line in stderr.splitlines() if line.startswith("zcmd replay: scanned ")]
    assert lines, f"no summary in stderr:\n{stderr}"
    line = lines[-1]
    counts = {name.replace(" ", "_"): int(n) for n, name in re.findall(
        r"(\d+) (damaged bytes)", line)}
    counts.update({name.replace(" ", "_"): int(n) for name, n in re.findall(
        r"\b(scanned|matched|would send|sent|refused|not sent) (\d+)", line)})
    return counts


class ReplayCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.journal_dir = self.tmp.join("journal")

    def config(self, **sections):
        data = config_data(self.tmp.path, **sections)
        return write_config(self.tmp.path, data)

    def replay(self, *args, config=None, timeout=60):
        return zcmd("-y", config or self.config_path, "replay", *args, timeout=timeout)


class ToStdout(ReplayCase):
    N = 60

    def setUp(self):
        super().setUp()
        self.events = sample_events(self.N)
        write_journal(self.journal_dir, self.events)
        self.config_path = self.config()

    def offsets_printed(self, result):
        self.assertEqual(result.returncode, 0, result.stderr)
        return [e["context"]["i"] for e in json_lines(result.stdout)]

    def test_everything_in_order_with_a_summary(self):
        result = self.replay("--to", "stdout")
        self.assertEqual(self.offsets_printed(result), list(range(self.N)))
        self.assertGreater(len(os.listdir(self.journal_dir)), 3, "the journal should span segments")
        printed = json_lines(result.stdout)[7]
        self.assertEqual(printed["type"], TYPES[7 % 3])
        self.assertEqual(printed["timestamp"], "2024-05-01T12:07:00Z")
        self.assertEqual(len(printed["_id"]), 24)
        self.assertEqual(summary(result.stderr), {"scanned": self.N, "matched": self.N, "sent": self.N,
                                                  "refused": 0, "damaged_bytes": 0})

    def test_offset_range_is_inclusive_of_both_ends(self):
        result = self.replay("--to", "stdout", "--from-offset", "10", "--to-offset", "14", "--offsets")
        self.assertEqual(self.offsets_printed(result), [10, 11, 12, 13, 14])
        self.assertEqual([e["_offset"] for e in json_lines(result.stdout)], [10, 11, 12, 13, 14])
        self.assertEqual(summary(result.stderr)["scanned"], 5)
        self.assertIn("offsets 10..14", result.stderr)
        one = self.replay("--to", "stdout", "--from-offset", "59", "--to-offset", "59")
        self.assertEqual(self.offsets_printed(one), [59])
        past = self.replay("--to", "stdout", "--from-offset", "60")
        self.assertEqual(self.offsets_printed(past), [])
        self.assertEqual(summary(past.stderr)["scanned"], 0)
        capped = self.replay("--to", "stdout", "--from-offset", "55", "--to-offset", "1000")
        self.assertEqual(self.offsets_printed(capped), [55, 56, 57, 58, 59])

    def test_time_range_since_inclusive_until_exclusive(self):
        result = self.replay("--to", "stdout", "--since", "2024-05-01T12:05:00Z", "--until", "2024-05-01 12:09")
        self.assertEqual(self.offsets_printed(result), [5, 6, 7, 8])
        self.assertEqual(summary(result.stderr), {"scanned": self.N, "matched": 4, "sent": 4,
                                                  "refused": 0, "damaged_bytes": 0})
        zoned = self.replay("--to", "stdout", "--since", "2024-05-01T14:58:00+02:00", "--until", "2024-05-01T13:01Z")
        self.assertEqual(self.offsets_printed(zoned), [58, 59])

    def test_relative_times(self):
        now = datetime.datetime.now(UTC)
        recent = sample_events(4, base=now - datetime.timedelta(hours=3), step=datetime.timedelta(hours=1))
        other = self.tmp.join("recent")
        write_journal(other, recent)  # 3h, 2h, 1h and 0h ago
        result = self.replay("--to", "stdout", "--journal", other, "--since", "150m")
        self.assertEqual(self.offsets_printed(result), [1, 2, 3])
        result = self.replay("--to", "stdout", "--journal", other, "--since", "1d", "--until", "1h30m ago")
        self.assertEqual(self.offsets_printed(result), [0, 1])

    def test_type_and_topic_filters(self):
        clicks = self.replay("--to", "stdout", "--type", "click")
        self.assertEqual(self.offsets_printed(clicks), list(range(1, self.N, 3)))
        two = self.replay("--to", "stdout", "--type", "click", "checkout.*", "--to-offset", "9")
        self.assertEqual(self.offsets_printed(two), [1, 2, 4, 5, 7, 8])
        repeated = self.replay("--to", "stdout", "--type", "click", "--type", "page.view", "--to-offset", "9")
        self.assertEqual(self.offsets_printed(repeated), [0, 1, 3, 4, 6, 7, 9])
        billing = self.replay("--to", "stdout", "--topic", "billing", "--to-offset", "9")
        self.assertEqual(self.offsets_printed(billing), [1, 3, 5, 7, 9])
        both = self.replay("--to", "stdout", "--topic", "billing", "--type", "page.view",
                           "--since", "2024-05-01T12:10:00Z")
        self.assertEqual(self.offsets_printed(both), [15, 21, 27, 33, 39, 45, 51, 57])
        self.assertEqual(summary(both.stderr)["matched"], 8)
        none = self.replay("--to", "stdout", "--type", "nosuchtype")
        self.assertEqual(self.offsets_printed(none), [])
        self.assertEqual(summary(none.stderr)["matched"], 0)

    def test_damaged_bytes_are_skipped_and_counted(self):
        first = os.path.join(self.journal_dir, sorted(n for n in os.listdir(self.journal_dir) if n.endswith(".log"))[0])
        with open(first, "r+b") as f:
            f.seek(100)  # inside the first record's payload: its checksum fails
            f.write(b"\xff\xff\xff\xff")
        result = self.replay("--to", "stdout")
        printed = self.offsets_printed(result)
        self.assertEqual(printed, list(range(1, self.N)))
        counts = summary(result.stderr)
        self.assertGreater(counts["damaged_bytes"], 0)
        self.assertEqual(counts["scanned"], self.N - 1)

    def test_dry_run_counts_and_connects_to_nothing(self):
        dead = f"127.0.0.1:{free_port()}"
        config_path = self.config(kafka={"brokers": dead}, mongo={"uri": f"mongodb://{dead}/?directConnection=true"})
        for target in ("kafka", "mongo", "pub", "stdout"):
            started = time.monotonic()
            result = self.replay("--to", target, "--dry-run", "--type", "click", "--timeout", "30",
                                 config=config_path)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertLess(time.monotonic() - started, 10, "a dry run must not wait for anything")
            self.assertEqual(result.stdout, "")
            counts = summary(result.stderr)
            self.assertEqual(counts["would_send"], 20)
            self.assertEqual(counts["matched"], 20)
            self.assertNotIn("sent", counts)
            self.assertIn("dry run", result.stderr)

    def test_progress_bar_on_request_and_off_by_default_without_a_terminal(self):
        shown = self.replay("--to", "stdout", "--progress")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertRegex(shown.stderr, rf"replay: 100%.*{self.N}/{self.N}")
        hidden = self.replay("--to", "stdout")
        self.assertNotIn("%|", hidden.stderr)
        off = self.replay("--to", "stdout", "--no-progress")
        self.assertNotIn("%|", off.stderr)
        self.assertEqual(summary(off.stderr)["sent"], self.N)

    def test_empty_journal(self):
        empty = self.tmp.join("empty")
        write_journal(empty, [])
        result = self.replay("--to", "stdout", "--journal", empty)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(summary(result.stderr)["scanned"], 0)

    def test_bad_arguments_exit_2_with_a_message(self):
        cases = [
            ((), "--to"),  # required
            (("--to", "elsewhere"), "invalid choice"),
            (("--to", "stdout", "--from-offset", "9", "--to-offset", "3"), "after --to-offset"),
            (("--to", "stdout", "--from-offset", "-1"), "not an offset"),
            (("--to", "stdout", "--since", "yesterday"), "not a time"),
            (("--to", "stdout", "--since", "1h", "--until", "2h"), "not before --until"),
            (("--to", "stdout", "--batch-size", "0"), "--batch-size"),
            (("--to", "kafka", "--timeout", "0"), "--timeout"),
            (("--to", "kafka", "--offsets"), "--offsets goes with --to stdout"),
            (("--to", "mongo", "--kafka-topic", "x"), "--kafka-topic goes with --to kafka"),
            (("--to", "stdout", "--journal", self.tmp.join("nowhere")), "no journal at"),
        ]
        for args, message in cases:
            result = self.replay(*args)
            self.assertEqual(result.returncode, 2, f"{args}: {result.stderr}")
            self.assertIn(message, result.stderr, args)
            self.assertEqual(result.stdout, "")

    def test_unreachable_kafka_gives_up_after_the_timeout(self):
        config_path = self.config(kafka={"brokers": f"127.0.0.1:{free_port()}"})
        started = time.monotonic()
        result = self.replay("--to", "kafka", "--timeout", "2", config=config_path)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("cannot reach Kafka at 127.0.0.1:", result.stderr)
        self.assertIn("within 2s", result.stderr)
        self.assertEqual(summary(result.stderr)["sent"], 0)

    def test_unreachable_mongo_gives_up_after_the_timeout(self):
        config_path = self.config(mongo={"uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"})
        started = time.monotonic()
        result = self.replay("--to", "mongo", "--timeout", "1", config=config_path)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("cannot reach MongoDB at mongodb://127.0.0.1:", result.stderr)

    def test_pub_to_a_subscriber(self):
        address = f"tcp://127.0.0.1:{free_port()}"
        sub = zmq_green.Context.instance().socket(zmq_green.SUB)
        self.addCleanup(sub.close, 0)
        sub.setsockopt(zmq_green.SUBSCRIBE, b"billing")
        sub.connect(address)
        received = []

        def receive():
            while True:
                received.append(sub.recv_multipart())
        receiver = gevent.spawn(receive)
        self.addCleanup(receiver.kill)
        result = self.replay("--to", "pub", "--pub-bind", address, "--pub-wait", "1", "--to-offset", "19")
        self.assertEqual(result.returncode, 0, result.stderr)
        wait_until(lambda: len(received) >= 10, timeout=5, message="10 billing events")
        self.assertEqual([json.loads(body)["context"]["i"] for _, body in received], list(range(1, 20, 2)))
        self.assertEqual({topic for topic, _ in received}, {b"billing"})
        self.assertEqual(summary(result.stderr)["sent"], 20)


class Retries(unittest.TestCase):
    """How replay's sending retries (in-process, a scripted sink): transient failures with the
    one retry policy until --timeout, a permanent refusal ends the replay at once, a bug in the
    sink goes up with its traceback instead of being retried."""

    class Sink:
        def __init__(self, *failures):
            self.failures = list(failures)
            self.calls = 0

        def send(self, items):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return []

    items = [(7, {"type": "t"}), (8, {"type": "t"})]

    def test_transient_failures_are_retried_until_sent(self):
        from zspark.commands.replay import deliver
        from zspark.errors import TransientDeliveryError
        sink = self.Sink(TransientDeliveryError("Kafka: down"), ConnectionRefusedError(111, "refused"))
        self.assertEqual(deliver(sink, self.items, timeout=30), [])
        self.assertEqual(sink.calls, 3)

    def test_a_permanent_refusal_ends_the_replay_at_once(self):
        from zspark.commands.replay import DeliveryFailed, deliver
        from zspark.errors import PermanentDeliveryError
        sink = self.Sink(PermanentDeliveryError("Kafka: refused for good, matched to no event"))
        with self.assertRaisesRegex(DeliveryFailed, "offsets 7..8 refused for good: Kafka: refused"):
            deliver(sink, self.items, timeout=30)
        self.assertEqual(sink.calls, 1)

    def test_a_bug_in_the_sink_is_not_retried(self):
        from zspark.commands.replay import deliver
        sink = self.Sink(TypeError("a bug"))
        with self.assertRaisesRegex(TypeError, "a bug"):
            deliver(sink, self.items, timeout=30)
        self.assertEqual(sink.calls, 1)

    def test_giving_up_after_the_timeout(self):
        from zspark.commands.replay import DeliveryFailed, deliver
        from zspark.errors import TransientDeliveryError
        sink = self.Sink(*[TransientDeliveryError("Kafka: down")] * 100)
        with self.assertRaisesRegex(DeliveryFailed, r"giving up on offsets 7..8 after \d+ attempt\(s\) "
                                                    r"in 0.5s \(--timeout\): Kafka: down"):
            deliver(sink, self.items, timeout=0.5)
        self.assertGreater(sink.calls, 1)


class ServicesCase(ReplayCase):
    """One real service for the class, in a temporary state dir, stopped at the end."""
    service = None

    @classmethod
    def start_service(cls, service_class):
        cls.state = TempDir(prefix="zspark-replay-svc-")
        service = service_class(cls.state.path, free_port(), venv_root=VENVS)
        try:
            service.start(timeout=120)  # a first start of SecantusDB initialises its storage
        except Exception:
            service.stop()
            cls.state.remove()
            raise
        return service

    @classmethod
    def tearDownClass(cls):
        if cls.service is not None:
            cls.service.stop()
        cls.state.remove()


def cursor_state(journal_dir):
    """Everything about the cursor files a replay must not touch: names, contents, inodes, mtimes."""
    directory = os.path.join(journal_dir, "cursors")
    state = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.stat(path)
        with open(path, "rb") as f:
            state[name] = (f.read(), st.st_ino, st.st_mtime_ns, st.st_size)
    return state


class ToMongo(ServicesCase):
    @classmethod
    def setUpClass(cls):
        cls.service = cls.start_service(Mongo)
        import pymongo
        cls.client = pymongo.MongoClient(cls.service.uri, serverSelectionTimeoutMS=10000, tz_aware=True)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.collection = "replay_" + uuid.uuid4().hex[:8]
        # enabled: false is the point: replay uses the section whether or not a forwarder does.
        self.config_path = self.config(mongo={"enabled": False, "uri": self.service.uri, "database": "replaytest",
                                              "collection": self.collection})

    def docs(self, collection=None):
        return list(self.client["replaytest"][collection or self.collection].find())

    def test_replaying_twice_leaves_exactly_one_copy_of_each_event(self):
        events = sample_events(250)
        write_journal(self.journal_dir, events)
        os.makedirs(os.path.join(self.journal_dir, "cursors"))
        with open(os.path.join(self.journal_dir, "cursors", "mongo"), "w") as f:
            f.write("7\n")
        before = cursor_state(self.journal_dir)
        for attempt in range(2):
            result = self.replay("--to", "mongo", "--batch-size", "64")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(summary(result.stderr), {"scanned": 250, "matched": 250, "sent": 250,
                                                      "refused": 0, "damaged_bytes": 0}, attempt)
            docs = self.docs()
            self.assertEqual(len(docs), 250, attempt)
            self.assertEqual(sorted(d["_id"] for d in docs), sorted(e["_id"] for e in events))
        one = self.docs()[0]
        self.assertIsInstance(one["timestamp"], datetime.datetime)  # a BSON date, not a string
        self.assertEqual(cursor_state(self.journal_dir), before)

    def test_selection_and_collection_override(self):
        write_journal(self.journal_dir, sample_events(30))
        result = self.replay("--to", "mongo", "--type", "checkout.done", "--from-offset", "10",
                             "--mongo-collection", self.collection + "_x")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(d["context"]["i"] for d in self.docs(self.collection + "_x")),
                         [11, 14, 17, 20, 23, 26, 29])
        self.assertEqual(self.docs(), [])

    def test_while_the_server_runs_its_cursor_does_not_move(self):
        data = config_data(self.tmp.path, mongo={"enabled": True, "uri": self.service.uri,
                                                 "database": "replaytest", "collection": self.collection})
        config_path = write_config(self.tmp.path, data, "serve.yaml")
        server = ServeProcess(config_path, data["http"]["port"], self.tmp.join("serve.log")).start()
        self.addCleanup(server.stop)
        batch = [{"type": "signup", "topic": "web", "context": {"n": n}} for n in range(40)]
        status, _, body = request(data["http"]["port"], "POST", "/log", batch)
        self.assertEqual(status, 200, body)
        wait_until(lambda: read_cursor(self.journal_dir, "mongo") == 40, timeout=20,
                   message="the mongo forwarder to deliver 40 events")
        before = cursor_state(self.journal_dir)
        names_before = sorted(os.listdir(self.journal_dir))

        printed = self.replay("--to", "stdout", config=config_path)
        self.assertEqual(printed.returncode, 0, printed.stderr)
        self.assertEqual([e["context"]["n"] for e in json_lines(printed.stdout)], list(range(40)))
        result = self.replay("--to", "mongo", "--from-offset", "10", config=config_path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(summary(result.stderr)["sent"], 30)
        self.assertEqual(len(self.docs()), 40)
        self.assertEqual(cursor_state(self.journal_dir), before)
        self.assertEqual(sorted(os.listdir(self.journal_dir)), names_before)
        self.assertEqual(server.stop(), 0, server.log())
        self.assertEqual(read_cursor(self.journal_dir, "mongo"), 40)


class ToKafka(ServicesCase):
    @classmethod
    def setUpClass(cls):
        cls.service = cls.start_service(Broker)

    def setUp(self):
        super().setUp()
        self.topic = "replay-" + uuid.uuid4().hex[:8]
        self.config_path = self.config(kafka={"brokers": self.service.address, "topic": self.topic})

    def consume(self, topic, expected, timeout=30):
        """Read `topic` from the beginning with a fresh group until `expected` messages came."""
        from confluent_kafka import Consumer
        consumer = Consumer({"bootstrap.servers": self.service.address, "group.id": "g-" + uuid.uuid4().hex,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 6000})
        messages = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout
            while len(messages) < expected and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    messages.append(json.loads(msg.value()))
            # a little longer, to see that nothing more than expected arrives
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    messages.append(json.loads(msg.value()))
        finally:
            consumer.close()
        return messages

    def test_delivers_the_selected_events(self):
        events = sample_events(120)
        write_journal(self.journal_dir, events)
        os.makedirs(os.path.join(self.journal_dir, "cursors"))
        with open(os.path.join(self.journal_dir, "cursors", "kafka"), "w") as f:
            f.write("3\n")
        before = cursor_state(self.journal_dir)
        result = self.replay("--to", "kafka", "--topic", "web", "--batch-size", "16")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(summary(result.stderr), {"scanned": 120, "matched": 60, "sent": 60,
                                                  "refused": 0, "damaged_bytes": 0})
        messages = self.consume(self.topic, 60)
        self.assertEqual(len(messages), 60)
        self.assertEqual(sorted(m["context"]["i"] for m in messages), list(range(0, 120, 2)))
        self.assertEqual({m["_id"] for m in messages}, {str(e["_id"]) for e in events[::2]})
        self.assertEqual(cursor_state(self.journal_dir), before)

    def test_refused_records_are_listed_and_exit_1(self):
        write_journal(self.journal_dir, sample_events(6))
        result = self.replay("--to", "kafka", "--kafka-topic", "bad topic {type}")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(re.findall(r"offset \d+ \(_id \w+\) refused by Kafka .*legal Kafka topic",
                                        result.stderr)), 6)
        counts = summary(result.stderr)
        self.assertEqual((counts["refused"], counts["sent"]), (6, 0))


if __name__ == "__main__":
    unittest.main()
