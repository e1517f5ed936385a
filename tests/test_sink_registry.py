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


class TestSinkRegistry(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.out = self.tmp.join("out.jsonl")

    def configure(self, **jsonfile):
        self.data = config_data(self.tmp.path, jsonfile={"path": self.out, **jsonfile})
        self.config = write_config(self.tmp.path, self.data)
        return self.config

    def test_a_registered_sink_is_served_and_shown_in_status(self):
        self.configure(enabled=True)
        port = self.data["http"]["port"]
        server = ServeProcess(self.config, port, self.tmp.join("serve.log"), module="tests.sink_plugin")
        self.addCleanup(server.kill)
        server.start(timeout=30)
        for n in range(5):
            self.assertEqual(request(port, "GET", f"/log?type=plugged.{n}")[0], 200)
        delivered = wait_until(lambda: len(lines(self.out)) == 5 and lines(self.out), timeout=20,
                               message="5 events in the test sink's file")
        self.assertEqual([e["type"] for e in delivered], [f"plugged.{n}" for n in range(5)])
        status, _, body = request(port, "GET", "/status")
        self.assertEqual(status, 200)
        forwarder = json.loads(body)["forwarders"]["jsonfile"]
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
