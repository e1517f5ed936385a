"""Retention on a timer in `zcmd serve`: segments every forwarder has passed and older than
`journal.retain_hours` are deleted while the server runs, and the log says which; a segment a
forwarder has not passed stays."""
import json
import os
import signal
import time
import unittest

from zspark.journal import list_segments

from .support import ServeProcess, TempDir, config_data, free_port, request, wait_until, write_config


class RetentionTimer(unittest.TestCase):
    def serve(self, **sections):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        data = config_data(self.tmp.path,
                           journal={"segment_bytes": 2048, "retain_hours": 0, "retention_check_s": 0.2},
                           pub={"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}"}, **sections)
        self.port = data["http"]["port"]
        server = ServeProcess(write_config(self.tmp.path, data), self.port, self.tmp.join("serve.log")).start()
        self.addCleanup(server.stop, signal.SIGKILL)
        return server

    def fill(self, segments):
        journal = self.tmp.join("journal")
        while len(list_segments(journal)) < segments:
            events = [{"type": "filler", "context": {"pad": "x" * 200}} for _ in range(5)]
            self.assertEqual(request(self.port, "POST", "/log", events)[0], 200)
        return journal

    def test_passed_segments_are_deleted_while_serving_and_logged(self):
        server = self.serve()
        journal = self.fill(6)
        wait_until(lambda: len(list_segments(journal)) == 1, message="retention down to the active segment")
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertIn("journal retention: deleted", server.log())
        self.assertEqual(len(os.listdir(journal + "/cursors")), 1)

    def test_a_segment_one_forwarder_has_not_passed_stays(self):
        # The pub forwarder delivers everything; Kafka (nobody listening) delivers nothing.
        server = self.serve(kafka={"enabled": True, "brokers": f"127.0.0.1:{free_port()}",
                                   "message_timeout_ms": 1000})
        journal = self.fill(4)
        before = list_segments(journal)
        wait_until(lambda: self.status()["forwarders"]["pub"]["lag"] == 0, message="pub caught up")
        time.sleep(1.0)  # five retention runs
        self.assertEqual(list_segments(journal)[:len(before)], before)
        self.assertGreater(self.status()["forwarders"]["kafka"]["lag"], 0)
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertNotIn("journal retention: deleted", server.log())

    def status(self):
        return json.loads(request(self.port, "GET", "/status")[2])

if __name__ == "__main__":
    unittest.main()
