"""HTTP worker processes (`http.workers: 2`) with an in-process owner: the records are the bytes
one process writes, with the ids answered; /status, /metrics, `zcmd status` and `zcmd check`
show every process; refusals come back as in one process (journal full, a topic not allowed);
the helpers of the link (documents laid end to end, the receive time in microseconds)."""
import datetime
import json
import os
import unittest

import bson

from zspark.children import LinkError
from zspark.config import from_dict
from zspark.httpworkers import from_micros, micros, split_documents
from zspark.journal import Reader, encode_event, decode_event
from zspark.server import Server

from .support import TempDir, config_data, request, wait_until, write_config, zcmd


class LinkHelpers(unittest.TestCase):
    def test_documents_laid_end_to_end_are_split_exactly(self):
        docs = [bson.encode({"type": "a", "n": n}) for n in range(3)]
        self.assertEqual(split_documents(b"".join(docs), 3), docs)
        self.assertEqual(split_documents(docs[0], 1), [docs[0]])
        for blob, count in ((b"".join(docs), 2), (b"".join(docs), 4), (docs[0][:-1], 1), (b"\x04\0\0\0", 1),
                            (b"".join(docs) + b"\0", 3), (b"\xff\xff\xff\x7f" + docs[0][4:], 1)):
            with self.subTest(blob=blob[:8], count=count), self.assertRaises(LinkError):
                split_documents(blob, count)

    def test_the_receive_time_crosses_the_link_exactly(self):
        now = datetime.datetime(2026, 12, 6, 23, 1, 2, 345678, tzinfo=datetime.timezone.utc)
        self.assertEqual(from_micros(micros(now)), now)
        self.assertEqual(from_micros(micros(now)).tzinfo, datetime.timezone.utc)


class WorkersCase(unittest.TestCase):
    sections = {}

    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        sections = {"http": {"workers": 2}, "zmq": {"bson_bind": "", "json_bind": ""}}
        for name, values in self.sections.items():
            sections[name] = {**sections.get(name, {}), **values}
        self.data = config_data(self.tmp.path, **sections)
        self.config_path = write_config(self.tmp.path, self.data)
        self.server = Server(from_dict(self.data))
        self.server.start()
        self.addCleanup(self.server.shutdown)
        self.port = self.server.http.address[1]

    def status(self):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)


class Workers(WorkersCase):
    def test_records_are_the_bytes_one_process_writes_with_the_ids_answered(self):
        answered = []
        for body in ({"type": "one", "context": {"n": 1}},
                     [{"type": "two", "level": "info"}, {"type": "three", "stimestamp": 1700000000000}]):
            status, _, raw = request(self.port, "POST", "/log", body)
            self.assertEqual(status, 200, raw)
            answered += json.loads(raw)["ids"]
        status, _, raw = request(self.port, "GET", "/log?type=four&topic=web&x=1")
        self.assertEqual(status, 200, raw)
        answered += json.loads(raw)["ids"]
        # NDJSON of the common kind: BSON written straight from the lines, the request's fields after.
        status, _, raw = request(self.port, "POST", "/log",
                                 b'{"type":"five","context":{"n":[1,2.5,true,null,-3e-2]}}\n'
                                 b' {"type":"six","referrer":"http://r/","extra":{"k":"v\\n"}}\r\n',
                                 {"Content-Type": "application/x-ndjson", "User-Agent": "ua/1"})
        self.assertEqual(status, 200, raw)
        answered += json.loads(raw)["ids"]
        reader = Reader(self.server.journal.directory, 0)
        self.addCleanup(reader.close)
        records = list(reader)
        self.assertEqual([offset for offset, _ in records], [0, 1, 2, 3, 4, 5])
        for offset, payload in records:
            event = decode_event(payload)
            self.assertEqual(str(event["_id"]), answered[offset])
            # What the single process's encoder makes of the same event, byte for byte.
            self.assertEqual(encode_event(dict(event), offset), payload)
            self.assertEqual((event["source"], event["node"]), ("http", "test"))
        self.assertEqual([decode_event(p)["type"] for _, p in records], ["one", "two", "three", "four", "five", "six"])
        five, six = (decode_event(p) for _, p in records[4:])
        # In the order one process writes them: the sender's fields, then the request's.
        self.assertEqual(list(five), ["_id", "timestamp", "type", "context", "ip", "user_agent", "source", "node"])
        self.assertEqual(list(six), ["_id", "timestamp", "type", "referrer", "extra", "ip", "user_agent", "source",
                                     "node"])
        self.assertEqual((five["context"], five["user_agent"], five["ip"]),
                         ({"n": [1, 2.5, True, None, -3e-2]}, "ua/1", "127.0.0.1"))
        self.assertEqual((six["referrer"], six["extra"], six["user_agent"]), ("http://r/", {"k": "v\n"}, "ua/1"))

    def test_status_metrics_and_the_commands_show_every_process(self):
        self.assertEqual(request(self.port, "GET", "/log?type=a")[0], 200)
        self.assertEqual(request(self.port, "POST", "/log", {"context": {}})[0], 400)  # no type
        status = self.status()
        processes = status["processes"]
        self.assertEqual(sorted(processes), ["http-worker 1", "http-worker 2", "owner"])
        self.assertEqual(processes["owner"]["pid"], os.getpid())
        pids = {processes[f"http-worker {i}"]["pid"] for i in (1, 2)}
        self.assertEqual(len(pids | {os.getpid()}), 3)
        for i in (1, 2):
            self.assertEqual(processes[f"http-worker {i}"]["state"], "running")
            with open(f"/proc/{processes[f'http-worker {i}']['pid']}/cmdline", "rb") as f:
                self.assertIn(b"zspark.httpworker", f.read())
        http = status["sources"]["http"]
        self.assertEqual((http["accepted"], http["rejected"]), (1, 1))
        self.assertEqual(http["last_rejection"], "type: required, a non-empty string")
        self.assertEqual(sorted(http["workers"]), ["http-worker 1", "http-worker 2"])
        self.assertEqual(sum(w["accepted"] for w in http["workers"].values()), 1)
        self.assertEqual(http["connections"]["open"], 1)  # this /status request's own
        self.assertGreaterEqual(http["connections"]["accepted"], 3)

        _, _, body = request(self.port, "GET", "/metrics")
        metrics = body.decode()
        for name, p in processes.items():
            self.assertIn(f'zspark_process_up{{pid="{p["pid"]}",process="{name}"}} 1.0', metrics)
        self.assertIn('zspark_events_rejected_total{source="http"} 1.0', metrics)

        shown = zcmd("-y", self.config_path, "status")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        for i in (1, 2):
            self.assertRegex(shown.stdout, rf"http-worker {i}\s+{processes[f'http-worker {i}']['pid']}\s+running\s+0")
        checked = zcmd("-y", self.config_path, "check")
        self.assertEqual(checked.returncode, 0, checked.stdout)
        self.assertIn("restarts_http-worker_1=0c", checked.stdout)

    def test_a_worker_that_exits_is_started_again_and_check_warns_meanwhile(self):
        pid = self.status()["processes"]["http-worker 1"]["pid"]
        os.kill(pid, 9)
        wait_until(lambda: self.server.processes()["http-worker 1"]["state"] == "restarting",
                   message="worker 1 restarting")
        wait_until(lambda: self.server.processes()["http-worker 1"]["pid"] != pid
                   and self.server.processes()["http-worker 1"]["state"] == "running", message="worker 1 again")
        process = self.status()["processes"]["http-worker 1"]
        self.assertEqual((process["restarts"], process["last_exit"]), (1, "killed by SIGKILL"))


class Refusals(WorkersCase):
    sections = {"journal": {"max_bytes": 2000}}

    def test_a_full_journal_and_a_batch_too_large_are_refused_as_in_one_process(self):
        statuses = []
        for n in range(30):
            status, headers, raw = request(self.port, "POST", "/log", {"type": "pad", "context": {"p": "x" * 100}})
            statuses.append(status)
            if status == 503:
                self.assertEqual(headers.get("retry-after"), "5")
                self.assertIn("the journal is full", json.loads(raw)["error"])
                break
        self.assertEqual(statuses[-1], 503, statuses)
        status, _, raw = request(self.port, "POST", "/log", {"type": "big", "context": {"p": "x" * 3000}})
        self.assertEqual(status, 413, raw)
        self.assertIn("journal.max_bytes", json.loads(raw)["error"])
        http = self.status()["sources"]["http"]
        self.assertEqual(http["accepted"], len(statuses) - 1)
        self.assertGreaterEqual(http["refused"], 1)


class TopicRefusals(WorkersCase):
    sections = {"kafka": {"enabled": True, "brokers": "127.0.0.1:1", "topics_allowed": ["web.*"],
                          "topic_not_allowed": "refuse", "max_topics": 1},
                "notices": {"enabled": False}, "forward": {"drain_on_stop_s": 0}}

    def test_the_owner_checks_and_takes_topics(self):
        status, _, raw = request(self.port, "POST", "/log", [{"type": "a", "topic": "web.a"},
                                                             {"type": "b", "topic": "app"}])
        self.assertEqual(status, 400, raw)
        self.assertEqual(json.loads(raw)["index"], 1)
        self.assertIn("kafka.topics_allowed", json.loads(raw)["error"])
        self.assertEqual(request(self.port, "POST", "/log", {"type": "a", "topic": "web.a"})[0], 200)
        status, _, raw = request(self.port, "POST", "/log", {"type": "a", "topic": "web.b"})
        self.assertEqual(status, 400, raw)
        self.assertIn("kafka.max_topics", json.loads(raw)["error"])
        status = self.status()
        self.assertEqual((status["kafka_topics"]["taken"], status["kafka_topics"]["refused"]), (1, 3))
        self.assertEqual(status["sources"]["http"]["rejected"], 3)
