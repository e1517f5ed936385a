"""A new sink is one module and one registry line: the sink of tests/sink_plugin.py, defined and
registered only there, is served by `zcmd serve` (its forwarder delivers to it, /status shows it
with its describe()), replayed to with `zcmd replay --to jsonfile`, and its healthcheck is replay's
reachability check. Its config section loads like a built-in one's."""
import json
import os
import subprocess
import sys
import unittest

from .support import (ROOT, ServeProcess, TempDir, config_data, request, wait_until, write_config,
                      write_journal)
from .test_replay import sample_events, summary


def plugin(*args, timeout=60):
    """`zcmd ARGS` with the test sink registered."""
    return subprocess.run([sys.executable, "-m", "tests.sink_plugin", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def forwarders(port):
    status, _, body = request(port, "GET", "/status")
    assert status == 200, (status, body)
    return json.loads(body)["forwarders"]


class TestSinkRegistry(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.out = self.tmp.join("out.jsonl")

    def configure(self, sections=None, **jsonfile):
        self.data = config_data(self.tmp.path, jsonfile={"path": self.out, **jsonfile}, **(sections or {}))
        self.config = write_config(self.tmp.path, self.data)
        return self.config

    def test_a_registered_sink_is_served_and_shown_in_status(self):
        self.configure(enabled=True)
        self.assert_served()

    def test_a_registered_sink_is_served_by_child_processes_too(self):
        """Its forwarder in a process of its own, HTTP in worker processes: each child gets the
        sink types registered in the serving process with its config, and builds its sink."""
        self.configure({"forward": {"own_process": True}, "http": {"workers": 2}}, enabled=True)
        self.assert_served()

    def assert_served(self):
        port = self.data["http"]["port"]
        server = ServeProcess(self.config, port, self.tmp.join("serve.log"), module="tests.sink_plugin")
        self.addCleanup(server.kill)
        server.start(timeout=30)
        for n in range(5):
            self.assertEqual(request(port, "GET", f"/log?type=plugged.{n}")[0], 200)
        delivered = wait_until(lambda: len(lines(self.out)) == 5 and lines(self.out), timeout=20,
                               message="5 events in the test sink's file")
        self.assertEqual([e["type"] for e in delivered], [f"plugged.{n}" for n in range(5)])
        # The sink writes its file before the forwarder saves its cursor and counts the batch:
        # /status catches up a moment after the file.
        forwarder = wait_until(lambda: (f := forwarders(port)["jsonfile"])["lag"] == 0 and f, timeout=20,
                               message="the jsonfile forwarder's cursor past the 5 events")
        self.assertEqual(forwarder["destination"], f"JSON lines in {self.out}")
        self.assertEqual(forwarder["delivered"], 5)
        self.assertEqual(forwarder["state"], "running")
        self.assertEqual(server.stop(), 0, server.log())

    def test_a_registered_sink_is_replayed_to_enabled_or_not(self):
        self.configure()  # not enabled: replay uses the section all the same
        events = sample_events(12)
        write_journal(self.data["journal"]["dir"], events)
        result = plugin("-y", self.config, "replay", "--to", "jsonfile", "--type", "click")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(summary(result.stderr)["sent"], 4)
        self.assertEqual([e["context"]["i"] for e in lines(self.out)], [1, 4, 7, 10])
        self.assertIn(f"to JSON lines in {self.out}", result.stderr)

    def test_replay_checks_the_registered_sink_with_its_healthcheck(self):
        missing = self.tmp.join("no-such-dir")
        self.data = config_data(self.tmp.path, jsonfile={"path": os.path.join(missing, "out.jsonl")})
        self.config = write_config(self.tmp.path, self.data)
        write_journal(self.data["journal"]["dir"], sample_events(3))
        result = plugin("-y", self.config, "replay", "--to", "jsonfile", "--timeout", "2")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"zcmd replay: cannot reach {missing} (config jsonfile.path)", result.stderr)
        self.assertEqual(summary(result.stderr)["sent"], 0)

    def test_its_config_section_is_checked_like_a_built_in_one(self):
        self.configure(enabled="yes please")
        result = plugin("-y", self.config, "validate")
        self.assertEqual(result.returncode, 2)
        self.assertIn("key 'jsonfile.enabled'", result.stderr)
        self.configure(enabled=True)
        result = plugin("-y", self.config, "validate")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(self.out, result.stdout)  # shown with the other sections


class Failures(unittest.TestCase):
    """A sink's errors as the server's users see them: a transient one is retried until the
    events are delivered; a bug stops that forwarder loudly (/status, /metrics, `zcmd check`
    CRITICAL, the traceback in the log) while the server goes on journaling, and once fixed, a
    restart delivers everything."""

    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.out = self.tmp.join("out.jsonl")
        self.data = config_data(self.tmp.path, jsonfile={"enabled": True, "path": self.out},
                                forward={"backoff_initial_ms": 20, "backoff_max_s": 0.2})
        self.port = self.data["http"]["port"]

    def serve(self, **jsonfile):
        self.data["jsonfile"].update(jsonfile)
        config = write_config(self.tmp.path, self.data)
        server = ServeProcess(config, self.port, self.tmp.join("serve.log"), module="tests.sink_plugin")
        self.addCleanup(server.kill)
        server.start(timeout=30)
        return server, config

    def forwarder(self):
        return forwarders(self.port)["jsonfile"]

    def send(self, names):
        for name in names:
            self.assertEqual(request(self.port, "GET", f"/log?type={name}")[0], 200)

    def test_a_transient_error_is_retried_then_delivered(self):
        server, _ = self.serve(transient_failures=3)
        self.send([f"retried.{n}" for n in range(4)])
        delivered = wait_until(lambda: len(lines(self.out)) >= 4 and lines(self.out), timeout=20,
                               message="4 events in the test sink's file")
        self.assertEqual(sorted(e["type"] for e in delivered), [f"retried.{n}" for n in range(4)])
        forwarder = wait_until(lambda: (f := self.forwarder())["lag"] == 0 and f, timeout=20,
                               message="the jsonfile forwarder's cursor past the 4 events")
        self.assertEqual((forwarder["state"], forwarder["failed"], forwarder["delivered"]), ("running", 3, 4))
        self.assertIn("JSON lines: the disk is away", forwarder["last_error"])
        self.assertEqual(server.stop(), 0, server.log())
        self.assertIn("delivered after 3 failed attempt(s)", server.log())

    def test_a_bug_in_a_sink_fails_its_forwarder_loudly_and_a_restart_after_the_fix_delivers_all(self):
        server, config = self.serve(bug=True)
        self.send(["early.0", "early.1", "early.2"])
        forwarder = wait_until(lambda: self.forwarder()["state"] == "failed" and self.forwarder(),
                               timeout=20, message="the forwarder failed")
        self.assertEqual(forwarder["failed"], 1, "a bug is not retried")
        self.assertTrue(forwarder["last_error"].startswith("TypeError: "), forwarder)
        self.assertEqual(forwarder["cursor"], 0)

        self.send(["late.0", "late.1"])  # the server goes on journaling
        wait_until(lambda: self.forwarder()["lag"] == 5, message="a lag of the 5 events")
        metrics = request(self.port, "GET", "/metrics")[2].decode()
        self.assertIn('zspark_forwarder_state{forwarder="jsonfile",state="failed"} 1.0', metrics)
        self.assertIn('zspark_forwarder_state{forwarder="jsonfile",state="running"} 0.0', metrics)
        result = plugin("-y", config, "check")
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertTrue(result.stdout.startswith("ZSPARK CRITICAL - jsonfile failed (TypeError: "),
                        result.stdout)
        result = plugin("-y", config, "check", "--not-running", "warning")
        self.assertEqual(result.returncode, 2, "failed is CRITICAL whatever --not-running says")
        self.assertEqual(lines(self.out), [], "nothing delivered")
        self.assertEqual(server.stop(), 0, server.log())
        log = server.log()
        self.assertIn("forwarder jsonfile: FAILED", log)
        self.assertIn("Traceback (most recent call last)", log)

        server, _ = self.serve(bug=False)
        delivered = wait_until(lambda: len(lines(self.out)) >= 5 and lines(self.out), timeout=20,
                               message="the 5 events delivered after the fix")
        self.assertEqual([e["type"] for e in delivered], ["early.0", "early.1", "early.2", "late.0", "late.1"])
        self.assertEqual(self.forwarder()["state"], "running")
        self.assertEqual(server.stop(), 0, server.log())


class TestRegister(unittest.TestCase):
    def test_a_name_or_section_already_taken_is_refused(self):
        from zspark import sinks
        from zspark.config import PubConfig
        for taken in (sinks.SinkType("kafka", PubConfig, "x:build", section="other"),
                      sinks.SinkType("stdout", PubConfig, "x:build"),
                      sinks.SinkType("other", PubConfig, "x:build", section="mongo")):
            with self.assertRaises(ValueError):
                sinks.register(taken)
        self.assertEqual(sinks.names(), ["kafka", "mongo", "pub"])


if __name__ == "__main__":
    unittest.main()
