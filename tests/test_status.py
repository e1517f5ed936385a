"""`zcmd status` against a running `zcmd serve`, against nothing, and against a stand-in server
(to see the token it sends and what it makes of a bad answer); and the per-source rate behind
/status's `rate`."""
import json
import unittest

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from zspark.client import ZSparkClient
from zspark.metrics import RATE_WINDOW_S, SourceStats

from .support import ServeProcess, TempDir, closed_port, config_data, free_port, journal_events, request, wait_until, \
    write_config, zcmd


class StatusCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def configure(self, **sections):
        self.data = config_data(self.tmp.path, **sections)
        self.config = write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        return self.config

    def serve(self):
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        self.addCleanup(server.stop)
        return server.start(timeout=30)

    def stand_in(self, app):
        """A WSGI app on a free port in this process; returns its /status URL."""
        port = free_port()
        server = WSGIServer(("127.0.0.1", port), app, log=None, spawn=Pool())  # stop() kills handlers
        server.start()
        self.addCleanup(server.stop)
        return f"http://127.0.0.1:{port}/status"

    def source_accepted(self, source):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)["sources"].get(source, {}).get("accepted", 0)


class WithServer(StatusCase):
    def test_summary_of_a_running_server_listening_on_every_interface(self):
        self.configure(http={"host": "0.0.0.0"}, node={"id": "status-node"})
        self.serve()
        for n in range(7):
            self.assertEqual(request(self.port, "GET", f"/log?type=t{n}")[0], 200)
        self.assertEqual(request(self.port, "POST", "/log", {"context": {}})[0], 400)  # no type
        with ZSparkClient(self.data["zmq"]["bson_bind"], linger_ms=1000) as client:
            client.event("over_zmq", {"n": 1})
        wait_until(lambda: len(journal_events(self.data["journal"]["dir"])) == 8, message="8 events")
        # The journal's files hold the ZeroMQ event before its write is synced; only then does the
        # server move the journal's end and count the event as accepted: /status a moment later.
        wait_until(lambda: self.source_accepted("zmq_bson") >= 1,
                   message="/status counting the ZeroMQ event as accepted (journaled and synced)")

        result = zcmd("-y", self.config, "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertIn("node status-node", lines[0])
        self.assertIn(f"http://127.0.0.1:{self.port}/status", lines[0])  # 0.0.0.0 asked on 127.0.0.1
        rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ")}
        self.assertEqual(rows["http"][1:4], ["7", "1", "0"])  # accepted, rejected, refused
        self.assertEqual(rows["zmq_bson"][1:4], ["1", "0", "0"])
        self.assertGreater(float(rows["http"][4]), 0)  # events/s
        self.assertIn("last rejection (http): type: required", result.stdout)
        self.assertIn("forwarders  none enabled", result.stdout)
        self.assertEqual(rows["offsets"][1:4], ["0", "..", "8"])
        self.assertIn("of 10.0 GiB", result.stdout)

        raw = zcmd("-y", self.config, "status", "--json")
        self.assertEqual(raw.returncode, 0, raw.stderr)
        status = json.loads(raw.stdout)
        self.assertEqual(status["sources"]["http"]["accepted"], 7)
        self.assertEqual(status["journal"]["end_offset"], 8)
        self.assertGreater(status["sources"]["http"]["rate"], 0)

    def test_forwarder_rows(self):
        dead = closed_port()  # nothing listens here: the forwarder backs off
        self.configure(mongo={"enabled": True, "uri": f"mongodb://127.0.0.1:{dead}/?directConnection=true",
                              "timeout_ms": 200},
                       forward={"backoff_initial_ms": 50, "backoff_max_s": 0.5})
        self.serve()
        self.assertEqual(request(self.port, "GET", "/log?type=a")[0], 200)
        wait_until(lambda: '"backing_off"' in request(self.port, "GET", "/status")[2].decode(),
                   message="the mongo forwarder to back off")
        result = zcmd("-y", self.config, "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        row = next(line for line in result.stdout.splitlines() if line.startswith("  mongo"))
        self.assertEqual(row.split()[1:3], ["backing_off", "1"])  # state, lag
        self.assertIn("ServerSelectionTimeoutError", row)
        self.assertIn("ago)", row)


class WithoutServer(StatusCase):
    def test_nothing_listening(self):
        self.configure()
        result = zcmd("-y", self.config, "status")
        self.assertEqual(result.returncode, 3)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(f"http://127.0.0.1:{self.port}/status", result.stderr)
        self.assertIn("zcmd -y CONFIG serve", result.stderr)
        self.assertIn("exit status", zcmd("status", "--help").stdout.lower())

    def test_a_server_that_does_not_answer_in_time(self):
        def app(environ, start_response):
            gevent.sleep(30)
        url = self.stand_in(app)
        result = zcmd("status", "--url", url, "--timeout", "0.3")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn(f"no answer from {url} within 0.3s", result.stderr)

    def test_bad_answers(self):
        answers = iter([("401 Unauthorized", b'{"ok": false}'), ("200 OK", b"<html>hello</html>"),
                        ("200 OK", b'{"ok": true}')])

        def app(environ, start_response):
            status, body = next(answers)
            start_response(status, [("Content-Type", "application/json")])
            return [body]
        url = self.stand_in(app)
        for expected in ("answered HTTP 401 Unauthorized (check http.status_tokens", "not with JSON",
                         "not zspark's /status"):
            result = zcmd("status", "--url", url)
            self.assertEqual(result.returncode, 4, result.stderr)
            self.assertIn(expected, result.stderr)

    def test_sends_the_first_token(self):
        seen = []
        status = {"ok": True, "node": "n", "version": "0", "uptime_s": 1, "sources": {}, "forwarders": {},
                  "journal": {"dir": "/j", "bytes": 0, "max_bytes": 100, "first_offset": 0,
                              "end_offset": 0, "segments": 1}}

        def app(environ, start_response):
            seen.append((environ["PATH_INFO"], environ.get("HTTP_AUTHORIZATION")))
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(status).encode()]
        url = self.stand_in(app)
        self.configure(http={"tokens": ["first-token", "second-token"]})
        result = zcmd("-y", self.config, "status", "--url", url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(seen, [("/status", "Bearer first-token")])
        self.assertIn("node n", result.stdout)

    def test_bad_config(self):
        path = write_config(self.tmp.path, {"http": {"port": "eighty"}})
        result = zcmd("-y", path, "status")
        self.assertEqual(result.returncode, 2)
        self.assertIn("http.port", result.stderr)


class Rate(unittest.TestCase):
    """SourceStats.rate from once-a-second samples of the accepted count."""

    def test_rate_over_the_window(self):
        stats = SourceStats("x", started=0.0)
        self.assertEqual(stats.rate(now=0.0), 0.0)  # nothing yet
        for second in range(200):
            stats.sample(float(second))
            stats.accepted += 10 if second < 100 else 40
        # 10/s for the first 100 s, then 40/s: the last minute or so sees only the 40/s
        self.assertAlmostEqual(stats.rate(now=200.0), 40.0)
        self.assertEqual(len(stats._samples), RATE_WINDOW_S)

    def test_rate_just_after_start(self):
        stats = SourceStats("x", started=0.0)
        stats.sample(0.0)
        stats.accepted += 5
        self.assertAlmostEqual(stats.rate(now=2.0), 2.5)

    def test_events_accepted_before_the_first_sample_count(self):
        # With http.workers a worker serves while the server still starts, before the sampler
        # first looks: those events are in the rate too.
        stats = SourceStats("x", started=0.0)
        stats.accepted += 8
        stats.sample(0.5)
        self.assertAlmostEqual(stats.rate(now=2.0), 4.0)
