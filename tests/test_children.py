"""zspark/children.py: a supervised child process and its link, seen from the owner's side."""
import os
import signal
import subprocess
import sys
import unittest

import gevent
from gevent.queue import Queue

from zspark import children

from .support import wait_until


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not alive.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


class ChildTest(unittest.TestCase):
    def setUp(self):
        self.messages = Queue()

        def on_link(link):
            while True:
                self.messages.put(link.recv())

        self.child = children.Child("echo child", "tests.child_echo", {"setting": 7}, on_link,
                                    backoff=None)
        self.child.start()
        self.addCleanup(self.child.stop, 5)

    def hello(self):
        header, _ = self.messages.get(timeout=20)
        self.assertEqual("hello", header["kind"])
        return header

    def test_the_child_gets_the_config_and_messages_go_both_ways(self):
        hello = self.hello()
        self.assertEqual({"setting": 7}, hello["config"])
        self.assertEqual(self.child.pid, hello["pid"])
        self.assertTrue(self.child.send({"kind": "echo", "n": 1}, b"\x00\xffbytes"))
        self.assertEqual(({"kind": "echo", "n": 1}, b"\x00\xffbytes"), self.messages.get(timeout=10))

    def test_a_killed_child_is_restarted_and_says_how_it_ended(self):
        first = self.hello()["pid"]
        os.kill(first, signal.SIGKILL)
        second = self.hello()["pid"]
        self.assertNotEqual(first, second)
        status = self.child.status()
        self.assertEqual(1, status["restarts"])
        self.assertEqual("killed by SIGKILL", status["last_exit"])
        self.assertEqual("running", status["state"])
        self.child.send({"kind": "exit", "code": 3})
        self.hello()
        self.assertEqual("exit code 3", self.child.status()["last_exit"])
        self.assertEqual(2, self.child.status()["restarts"])

    def test_stop_ends_the_child_for_good(self):
        pid = self.hello()["pid"]
        self.child.stop(5)
        self.assertFalse(alive(pid))
        self.assertEqual("stopped", self.child.status()["state"])
        gevent.sleep(0.5)
        self.assertTrue(self.messages.empty())  # not started again

    def test_sigterm_to_the_child_is_ignored_the_owner_decides(self):
        pid = self.hello()["pid"]
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        self.child.send({"kind": "echo"})
        self.assertEqual({"kind": "echo"}, self.messages.get(timeout=10)[0])
        self.assertEqual(pid, self.child.pid)


class LinkTest(unittest.TestCase):
    def test_an_oversized_or_malformed_frame_is_refused(self):
        import socket
        import struct
        for frame in (struct.pack(">II", children.MAX_FRAME_BYTES + 1, 2),
                      struct.pack(">II", 4, 9) + b"abcd",
                      struct.pack(">II", 3, 3) + b"[1]",
                      struct.pack(">II", 2, 2) + b"{x"):
            a, b = socket.socketpair()
            link = children.Link(gevent.socket.socket(fileno=b.detach()))
            a.sendall(frame)
            with self.assertRaises(children.LinkError):
                link.recv()
            a.close()
            link.close()


class OwnerDeathTest(unittest.TestCase):
    def test_children_die_with_their_owner(self):
        owner = subprocess.Popen([sys.executable, "-m", "tests.child_owner"], stdout=subprocess.PIPE)
        try:
            child_pid = int(owner.stdout.readline())
            self.assertTrue(alive(child_pid))
            owner.kill()
            owner.wait()
            wait_until(lambda: not alive(child_pid), timeout=10, message="the child to die with its owner")
        finally:
            owner.kill()
            owner.wait()
            owner.stdout.close()


if __name__ == "__main__":
    unittest.main()
