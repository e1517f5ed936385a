"""zspark/fwdproxy.py: a forwarder in a process of its own, seen from the journal's owner (this
test process), with the ZeroMQ PUB sink (no service needed): it delivers what becomes durable,
its counters go on across a SIGKILL and restart, it stops with its cursor saved; a child's
malformed message closes its link."""
import json
import os
import signal
import socket
import struct
import unittest

import gevent

from zspark import children
from zspark.config import from_dict
from zspark.fwdproxy import ForwarderProcess
from zspark.journal import Journal, encode_event, read_cursor
from zspark.ingest import Ingest
from zspark.metrics import Metrics

from .support import TempDir, config_data, free_port, wait_until


class ForwarderProcessTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        data = config_data(self.tmp.path, pub={"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}"},
                           forward={"own_process": True, "backoff_initial_ms": 50, "backoff_max_s": 0.5})
        self.config = from_dict(data)
        self.journal = Journal(self.config.journal.dir).open()
        self.addCleanup(self.journal.close)
        self.ingest = Ingest(self.journal, "n1", Metrics())
        self.forwarder = ForwarderProcess(self.journal, "pub", self.config)
        self.addCleanup(self.forwarder.stop, 5)

    def send(self, count):
        events = [self.ingest.normalize_one({"type": "t", "context": {"i": i}}, "http") for i in range(count)]
        self.ingest.append_nowait(events, "http").wait()

    def delivered_all(self):
        wait_until(lambda: self.forwarder.cursor.offset == self.journal.end_offset and self.forwarder.lag == 0,
                   message="the forwarder process to deliver everything")

    def test_it_delivers_what_becomes_durable_and_goes_on_across_a_restart(self):
        self.assertEqual(self.forwarder.state, "stopped")  # not started yet
        self.forwarder.start()
        self.assertIn("ZeroMQ PUB", self.forwarder.sink.describe())
        self.send(30)
        self.delivered_all()
        first = self.forwarder.as_dict()
        self.assertEqual((first["state"], first["delivered"], first["restarts"]), ("running", 30, 0))
        self.assertNotEqual(first["pid"], os.getpid())

        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: self.forwarder.child.last_exit == "killed by SIGKILL", message="the exit seen")
        wait_until(lambda: self.forwarder.state == "running" and self.forwarder.child.restarts == 1,
                   message="the process started again")
        self.send(20)
        self.delivered_all()
        again = self.forwarder.as_dict()
        self.assertEqual((again["delivered"], again["restarts"]), (50, 1))  # counted on, not from 0
        self.assertNotEqual(again["pid"], first["pid"])

        pid = again["pid"]
        self.forwarder.stop(5)
        self.assertEqual(self.forwarder.state, "stopped")
        self.assertEqual(read_cursor(self.journal.directory, "pub"), 50)
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)

    def test_while_its_process_is_down_it_shows_backing_off_with_the_exit(self):
        data = config_data(self.tmp.path, pub={"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}"},
                           forward={"own_process": True, "backoff_initial_ms": 4000, "backoff_max_s": 4})
        forwarder = ForwarderProcess(self.journal, "pub", from_dict(data))  # restarted after 2-4 s
        self.addCleanup(forwarder.stop, 5)
        forwarder.start()
        os.kill(forwarder.child.pid, signal.SIGKILL)
        wait_until(lambda: forwarder.child.last_exit == "killed by SIGKILL", message="the exit seen")
        self.assertEqual(forwarder.state, "backing_off")
        self.assertEqual(forwarder.last_error, "its process exited (killed by SIGKILL); starting it again")
        self.assertEqual(forwarder.child.status()["state"], "restarting")
        wait_until(lambda: forwarder.state == "running", message="the process started again")
        self.assertIsNone(forwarder.last_error)

    def test_a_malformed_message_from_the_child_closes_its_link(self):
        for header in ({"kind": "delivered", "first": "0", "next": 1, "forwarder": {}},
                       {"kind": "status", "forwarder": {"state": "running", "cursor": "x"}},
                       {"kind": "status", "forwarder": []},
                       {"kind": "delivered", "first": 0, "next": 1, "counts": [[1, 2]],
                        "forwarder": {"state": "running", "cursor": 1, "delivered": 1, "failed": 0,
                                      "dead_lettered": 0}},
                       {"kind": "no such kind"}):
            ours, theirs = socket.socketpair()
            link = children.Link(gevent.socket.socket(fileno=ours.detach()))
            head = json.dumps(header).encode()
            theirs.sendall(struct.pack(">II", len(head), len(head)) + head)
            with self.assertRaises(children.LinkError, msg=header):
                self.forwarder._serve(link)
            link.close()
            theirs.close()
        self.assertEqual(self.forwarder.cursor.offset, 0)


if __name__ == "__main__":
    unittest.main()
