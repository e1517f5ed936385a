"""`GET /metrics`: `zcmd serve` as a child process, fed known numbers of good and bad events over
HTTP and ZeroMQ; the Prometheus text it answers is parsed with prometheus_client's own parser and
checked against what was sent, against /status, and against forwarders in known states (a pub
sink delivering, a Kafka sink pointed at a port nobody listens on).

ZeroMQ PUSH has no acknowledgement: each socket sends its bad frames first and its good ones
after, and ZeroMQ keeps one sender's frames in order, so once a socket's good events are counted
as accepted its bad ones have been counted too.
"""
import json
import logging
import os
import signal
import time
import unittest

import bson
import zmq.green as zmq
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import zspark
from zspark.journal import Journal
from zspark import metrics
from zspark.metrics import Metrics
from zspark.prometheus import Exposition

from .support import ServeProcess, TempDir, config_data, free_port, request, wait_until, write_config


class Scrape:
    """One parsed /metrics answer: every sample by name and labels."""

    def __init__(self, text):
        self.samples = {}
        self.types = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name, **labels):
        """The sample's value, or None when the answer does not have it."""
        return self.samples.get((name, frozenset(labels.items())))

    def __call__(self, name, **labels):
        value = self.get(name, **labels)
        if value is None:
            raise AssertionError(f"/metrics has no sample {name}{labels or ''}")
        return value

    def labelled(self, name):
        """[labels dict] of every sample called `name`."""
        return [dict(labels) for n, labels in self.samples if n == name]


class MetricsCase(unittest.TestCase):
    def serve(self, **sections):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        self.data = config_data(tmp.path, **sections)
        self.port = self.data["http"]["port"]
        server = ServeProcess(write_config(tmp.path, self.data), self.port, tmp.join("serve.log"))
        self.addCleanup(_stop, server)
        return server.start(timeout=30)

    def scrape(self, headers=None):
        status, answer_headers, body = request(self.port, "GET", "/metrics", headers=headers)
        self.assertEqual(status, 200, body)
        self.assertEqual(answer_headers["content-type"], CONTENT_TYPE_LATEST)
        return Scrape(body.decode("utf-8"))

    def status(self):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def push(self, address):
        context = zmq.Context.instance()
        sock = context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        self.addCleanup(sock.close)
        sock.connect(address)
        return sock


def _stop(server):
    if server.proc is not None and server.proc.poll() is None:
        try:
            server.stop(signal.SIGTERM, timeout=30)
        finally:
            server.kill()


class Counters(MetricsCase):
    def test_events_journal_pub_forwarder_and_process(self):
        self.serve(pub={"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}"},
                   forward={"batch_wait_ms": 1})
        good = {"type": "page", "context": {"n": 1}}
        # HTTP: 3 + 4 accepted; a batch with one bad item is refused whole (2 rejected), and a body
        # that is not JSON is one rejection.
        for _ in range(3):
            self.assertEqual(request(self.port, "POST", "/log", good)[0], 200)
        self.assertEqual(request(self.port, "POST", "/log", [good] * 4)[0], 200)
        self.assertEqual(request(self.port, "POST", "/log", [good, {"level": "no type"}])[0], 400)
        self.assertEqual(request(self.port, "POST", "/log", b"{not json",
                                 {"Content-Type": "application/json"})[0], 400)
        # ZeroMQ JSON: 2 bad frames, then 5 good; BSON: 1 bad frame, then 4 good.
        json_sock = self.push(self.data["zmq"]["json_bind"])
        for frame in (b"{not json", json.dumps({"level": "no type"}).encode()):
            json_sock.send(frame)
        for i in range(5):
            json_sock.send(json.dumps({"type": "zj", "context": {"i": i}}).encode())
        bson_sock = self.push(self.data["zmq"]["bson_bind"])
        bson_sock.send(b"\x05\x00\x00\x00junk")
        for i in range(4):
            bson_sock.send(bson.encode({"type": "zb", "context": {"i": i}}))

        def settled():
            scrape = self.scrape()
            done = (scrape.get("zspark_events_accepted_total", source="zmq_json") == 5
                    and scrape.get("zspark_events_accepted_total", source="zmq_bson") == 4
                    and scrape.get("zspark_forwarder_delivered_total", forwarder="pub") == 16)
            return scrape if done else None
        m = wait_until(settled, timeout=30, interval=0.1,
                       message="ZeroMQ events journaled and all 16 events published")
        status = self.status()

        for source, accepted, rejected in (("http", 7, 3), ("zmq_json", 5, 2), ("zmq_bson", 4, 1)):
            with self.subTest(source=source):
                self.assertEqual(m("zspark_events_accepted_total", source=source), accepted)
                self.assertEqual(m("zspark_events_rejected_total", source=source), rejected)
                self.assertEqual(m("zspark_events_refused_total", source=source), 0)
                self.assertEqual(status["sources"][source]["accepted"], accepted)
        self.assertEqual(m.types["zspark_events_accepted"], "counter")

        # The sources' connections: what /status shows under each source.
        http = status["sources"]["http"]
        for metric, key in (("zspark_connections_refused_total", "refused"),
                            ("zspark_connections_evicted_total", "evicted"),
                            ("zspark_connections_idle_closed_total", "idle_closed"),
                            ("zspark_request_timeouts_total", "timeouts"),
                            ("zspark_tls_handshake_errors_total", "tls_errors"),
                            ("zspark_accept_errors_total", "accept_errors")):
            with self.subTest(metric=metric):
                self.assertEqual(m(metric, source="http"), http["connections"][key])
        self.assertEqual(m("zspark_http_inflight_body_bytes", source="http"), http["inflight_bytes"])
        self.assertGreaterEqual(m("zspark_connections_accepted_total", source="http"), 6)  # the requests above
        self.assertGreaterEqual(m("zspark_connections_open", source="http"), 1)  # this scrape's
        self.assertEqual(m.types["zspark_connections_open"], "gauge")
        for source in ("zmq_json", "zmq_bson"):
            with self.subTest(source=source):
                self.assertEqual(m("zspark_connections_accepted_total", source=source), 1)
                self.assertEqual(m("zspark_connections_open", source=source), 1)
                self.assertEqual(m("zspark_handshakes_failed_total", source=source), 0)

        # The journal: the same numbers /status shows.
        journal = status["journal"]
        self.assertEqual(m("zspark_journal_end_offset"), 16)
        for metric, key in (("zspark_journal_end_offset", "end_offset"),
                            ("zspark_journal_first_offset", "first_offset"),
                            ("zspark_journal_bytes", "bytes"), ("zspark_journal_max_bytes", "max_bytes"),
                            ("zspark_journal_segments", "segments"),
                            ("zspark_journal_fsyncs_total", "syncs"),
                            ("zspark_journal_write_errors_total", "write_errors")):
            with self.subTest(metric=metric):
                self.assertEqual(m(metric), journal[key])
        for metric, key in (("zspark_journal_damaged_regions_total", "regions"),
                            ("zspark_journal_damaged_bytes_total", "bytes"),
                            ("zspark_journal_cut_bytes_total", "cut_bytes"),
                            ("zspark_journal_missing_records_total", "missing_offsets")):
            with self.subTest(metric=metric):
                self.assertEqual(m(metric), journal["damage"][key])
        self.assertGreater(m("zspark_journal_bytes"), 0)
        # One latency observation per group commit, in cumulative buckets.
        fsyncs = m("zspark_journal_fsyncs_total")
        self.assertGreaterEqual(fsyncs, 1)
        self.assertEqual(m.types["zspark_journal_sync_duration_seconds"], "histogram")
        self.assertEqual(m("zspark_journal_sync_duration_seconds_count"), fsyncs)
        self.assertEqual(m("zspark_journal_sync_duration_seconds_bucket", le="+Inf"), fsyncs)
        buckets = sorted(((float(labels["le"]), m("zspark_journal_sync_duration_seconds_bucket", **labels))
                          for labels in m.labelled("zspark_journal_sync_duration_seconds_bucket")))
        counts = [count for _, count in buckets]
        self.assertEqual(counts, sorted(counts), "buckets are cumulative")
        self.assertGreater(m("zspark_journal_sync_duration_seconds_sum"), 0)

        # The pub forwarder: running, caught up.
        self.assertEqual(m("zspark_forwarder_state", forwarder="pub", state="running"), 1)
        self.assertEqual(m("zspark_forwarder_state", forwarder="pub", state="backing_off"), 0)
        self.assertEqual(m("zspark_forwarder_state", forwarder="pub", state="stopped"), 0)
        self.assertEqual(m("zspark_forwarder_lag_records", forwarder="pub"), 0)
        self.assertEqual(m("zspark_forwarder_cursor_offset", forwarder="pub"), 16)
        self.assertEqual(m("zspark_forwarder_failed_total", forwarder="pub"), 0)
        self.assertEqual(m("zspark_forwarder_dead_lettered_total", forwarder="pub"), 0)
        self.assertEqual(m("zspark_forwarder_last_delivery_time_seconds", forwarder="pub"),
                         status["forwarders"]["pub"]["last_delivery_time"])
        self.assertIsNone(m.get("zspark_forwarder_last_failure_time_seconds", forwarder="pub"))

        # Who is talking, since when, and the process collector's standard metrics.
        self.assertEqual(m("zspark_build_info", version=zspark.__version__, node="test"), 1)
        self.assertGreater(m("zspark_uptime_seconds"), 0)
        self.assertLessEqual(m("zspark_start_time_seconds"), status["time"])
        self.assertGreater(m("process_resident_memory_bytes"), 0)
        self.assertGreater(m("process_open_fds"), 0)
        self.assertGreater(m("process_cpu_seconds_total"), 0)

    def test_refused_when_the_journal_is_full(self):
        self.serve(journal={"max_bytes": 4096})
        for _ in range(6):
            self.assertEqual(request(self.port, "POST", "/log", {"type": "small"})[0], 200)
        # Would fit the empty journal (else it is a 413), not beside the six.
        status, _, body = request(self.port, "POST", "/log", {"type": "big", "context": {"s": "x" * 3500}})
        self.assertEqual(status, 503, body)
        m = self.scrape()
        self.assertEqual(m("zspark_events_accepted_total", source="http"), 6)
        self.assertEqual(m("zspark_events_refused_total", source="http"), 1)
        self.assertEqual(m("zspark_events_rejected_total", source="http"), 0)
        self.assertEqual(m("zspark_journal_max_bytes"), 4096)


    def test_damage_found_at_start(self):
        # A journal whose last record was torn by a crash: the cut shows in /metrics as in /status.
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        directory = config_data(tmp.path)["journal"]["dir"]
        with Journal(directory) as journal:
            journal.append([b"a" * 100, b"b" * 100])
        segment = os.path.join(directory, sorted(n for n in os.listdir(directory) if n.endswith(".log"))[-1])
        with open(segment, "r+b") as f:
            f.truncate(os.path.getsize(segment) - 30)
        self.serve(journal={"dir": directory})
        m = self.scrape()
        cut = self.status()["journal"]["damage"]["cut_bytes"]
        self.assertGreater(cut, 0)
        self.assertEqual(m("zspark_journal_cut_bytes_total"), cut)
        self.assertEqual(m("zspark_journal_end_offset"), 1)


class Forwarders(MetricsCase):
    def test_kafka_unreachable_is_backing_off_with_failures_and_lag(self):
        started = time.time()
        self.serve(kafka={"enabled": True, "brokers": f"127.0.0.1:{free_port()}", "message_timeout_ms": 1000},
                   forward={"backoff_initial_ms": 50, "backoff_max_s": 0.5, "stop_timeout_s": 2})
        self.assertEqual(request(self.port, "POST", "/log", [{"type": "a"}, {"type": "b"}])[0], 200)

        def backing_off():
            m = self.scrape()
            return m if (m.get("zspark_forwarder_state", forwarder="kafka", state="backing_off") == 1
                         and m.get("zspark_forwarder_failed_total", forwarder="kafka") >= 1) else None
        m = wait_until(backing_off, timeout=30, interval=0.1, message="the kafka forwarder backing off")
        self.assertEqual(m("zspark_forwarder_state", forwarder="kafka", state="running"), 0)
        self.assertEqual(m("zspark_forwarder_state", forwarder="kafka", state="stopped"), 0)
        self.assertEqual(m("zspark_forwarder_lag_records", forwarder="kafka"), 2)
        self.assertEqual(m("zspark_forwarder_cursor_offset", forwarder="kafka"), 0)
        self.assertEqual(m("zspark_forwarder_delivered_total", forwarder="kafka"), 0)
        self.assertGreaterEqual(m("zspark_forwarder_last_failure_time_seconds", forwarder="kafka"), started)
        self.assertIsNone(m.get("zspark_forwarder_last_delivery_time_seconds", forwarder="kafka"))
        self.assertEqual(m.labelled("zspark_forwarder_state"),
                         [{"forwarder": "kafka", "state": s} for s in ("running", "backing_off", "stopped", "failed")])


class Tokens(MetricsCase):
    def test_metrics_need_a_token_when_tokens_are_configured(self):
        self.serve(http={"tokens": ["s3cret"]})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            with self.subTest(headers=headers):
                status, answer_headers, body = request(self.port, "GET", "/metrics", headers=headers)
                self.assertEqual(status, 401, body)
                self.assertEqual(answer_headers["www-authenticate"], 'Bearer realm="zspark"')
                self.assertIn("Authorization: Bearer", json.loads(body)["error"])
        m = self.scrape({"Authorization": "Bearer s3cret"})
        self.assertEqual(m("zspark_events_rejected_total", source="http"), 0,
                         "a refused scrape is not a rejected event")
        self.assertEqual(m("zspark_build_info", version=zspark.__version__, node="test"), 1)


class SyncHistogram(unittest.TestCase):
    """The buckets each fsync duration lands in (upper bounds inclusive), through the exposition."""

    def test_bucket_boundaries(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        journal = Journal(tmp.join("journal")).open()
        self.addCleanup(journal.close)
        for seconds in (0.0005, 0.003, 0.003, 0.2, 20.0):
            journal.stats.record_sync(seconds)
        body, content_type = Exposition(Metrics(), journal, [], "n1").render()
        self.assertEqual(content_type, CONTENT_TYPE_LATEST)
        m = Scrape(body.decode())
        expected = {"0.0005": 1, "0.001": 1, "0.0025": 1, "0.005": 3, "0.01": 3, "0.1": 3, "0.25": 4,
                    "10.0": 4, "+Inf": 5}
        for le, count in expected.items():
            with self.subTest(le=le):
                self.assertEqual(m("zspark_journal_sync_duration_seconds_bucket", le=le), count)
        self.assertEqual(m("zspark_journal_sync_duration_seconds_count"), 5)
        self.assertAlmostEqual(m("zspark_journal_sync_duration_seconds_sum"), 20.2065)
        self.assertEqual(m("zspark_journal_fsyncs_total"), 5)


class SharedLogLimitsTest(unittest.TestCase):
    """HTTP workers log the same kinds of line: each logs its share of a burst, so that N of
    them together log about what one process would (the hostile suite counts the lines)."""

    def logged(self, processes):
        metrics.share_log_limits(processes)
        self.addCleanup(metrics.share_log_limits, 1)
        with self.assertLogs("zspark.test.limits", "WARNING") as logs:
            limited = metrics.RateLimitedLog(logging.getLogger("zspark.test.limits"), burst=10)
            for n in range(50):
                limited("a flood: %d", n)
            logging.getLogger("zspark.test.limits").warning("end")
        return len(logs.output) - 1

    def test_each_process_logs_its_share(self):
        self.assertEqual(self.logged(1), 10)
        self.assertEqual(self.logged(2), 5)
        self.assertEqual(self.logged(32), 1)  # never nothing


if __name__ == "__main__":
    unittest.main()
