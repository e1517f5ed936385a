"""`zcmd` as a user runs it: options where a user puts them, Ctrl-C, and a script beside the
checkout importing the package. Every test runs the real command in a subprocess."""
import datetime
import json
import os
import signal
import subprocess
import sys
import unittest

import gevent

from .support import ROOT, ServeProcess, TempDir, config_data, request, write_config, write_journal, zcmd

UTC = datetime.timezone.utc


class CliCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.data = config_data(self.tmp.path)
        self.config_path = write_config(self.tmp.path, self.data)

    def write_events(self, *types):
        now = datetime.datetime.now(UTC)
        write_journal(self.data["journal"]["dir"],
                      [{"type": t, "timestamp": now, "node": "test", "source": "http"} for t in types])

    def spawn(self, *args):
        proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.addCleanup(proc.kill)
        return proc

    def interrupt(self, proc):
        """Ctrl-C: SIGINT, as the terminal sends it; (exit code, rest of stdout, stderr)."""
        proc.send_signal(signal.SIGINT)
        with gevent.Timeout(20):
            out, err = proc.communicate()
        return proc.returncode, out, err


class CtrlCTest(CliCase):
    def test_tail_follow_exits_130_quietly(self):
        self.write_events("first")
        proc = self.spawn("-y", self.config_path, "tail", "-f")
        with gevent.Timeout(20):
            self.assertEqual(json.loads(proc.stdout.readline())["type"], "first")
        code, out, err = self.interrupt(proc)
        self.assertEqual((code, out, err), (130, "", ""))

    def test_tail_server_exits_130_quietly(self):
        server = ServeProcess(self.config_path, self.data["http"]["port"], self.tmp.join("serve.log")).start()
        self.addCleanup(server.stop, signal.SIGKILL)
        proc = self.spawn("-y", self.config_path, "tail", "--server", "-n", "0")
        with gevent.Timeout(20):
            self.assertIn("following", proc.stderr.readline())
        status, _, body = request(self.data["http"]["port"], "POST", "/log", {"type": "live"})
        self.assertEqual(status, 200, body)
        with gevent.Timeout(20):
            self.assertEqual(json.loads(proc.stdout.readline())["type"], "live")
        code, out, err = self.interrupt(proc)
        self.assertEqual((code, out, err), (130, "", ""))


class GlobalOptionsTest(CliCase):
    def test_the_config_after_the_command(self):
        self.write_events("a", "b")
        for option in ("-y", "--config"):
            with self.subTest(option):
                result = zcmd("tail", "-n", "1", option, self.config_path)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual([json.loads(line)["type"] for line in result.stdout.splitlines()], ["b"])

    def test_after_the_command_wins_over_before_it(self):
        result = zcmd("-y", self.tmp.join("missing.yaml"), "validate", "-q", "-y", self.config_path)
        self.assertEqual(result.returncode, 0, result.stderr)
        result = zcmd("-y", self.config_path, "validate", "-q", "-y", self.tmp.join("missing.yaml"))
        self.assertEqual(result.returncode, 2)
        self.assertIn("missing.yaml", result.stderr)

    def test_given_before_the_command_only(self):
        result = zcmd("-y", self.config_path, "validate", "-q")
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_version_after_the_command(self):
        result = zcmd("status", "--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("zspark "), result.stdout)


class BesideTheCheckoutTest(unittest.TestCase):
    """A script in the folder that holds a checkout named `zspark` (as `git clone` names it): the
    checkout is on the script's path as a namespace package candidate, and none of its top-level
    directories may stand in for one of the installed package's subpackages."""

    def test_a_script_beside_the_checkout_imports_the_journal_codec(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        os.symlink(ROOT, tmp.join("zspark"))
        with open(tmp.join("script.py"), "w") as f:
            f.write("import zspark.journal.codec\nprint(zspark.journal.codec.__name__)\n")
        result = subprocess.run([sys.executable, tmp.join("script.py")], capture_output=True, text=True,
                                cwd=tmp.path, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "zspark.journal.codec\n")


if __name__ == "__main__":
    unittest.main()
