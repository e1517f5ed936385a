"""`zcmd` as a user runs it: options where a user puts them, Ctrl-C, and a script beside the
checkout importing the package. Every test runs the real command in a subprocess."""
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import unittest

import gevent

from .support import (ROOT, ServeProcess, TempDir, config_data, request, wait_until, write_config, write_journal,
                      zcmd)

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
    def setUp(self):
        super().setUp()
        # Ctrl-C at a terminal reaches a command whose SIGINT is at its default. A test runner
        # started in the background by a non-interactive shell (`cmd &`) ignores SIGINT, and an
        # ignored signal stays ignored across exec: the commands spawned here would ignore it
        # too. A handler of ours is reset to the default in them.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)

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

    def test_tail_refuses_a_negative_offset_or_count_naming_it(self):
        for option, message in (("--from-offset", "not an offset: '-1'"), ("-n", "not '-1'")):
            with self.subTest(option):
                result = zcmd("-y", self.config_path, "tail", option, "-1")
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(option, result.stderr)
                self.assertIn(message, result.stderr)

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


class ServeCase(CliCase):
    def serve(self, **sections):
        for name, values in sections.items():
            self.data.setdefault(name, {}).update(values)
        write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        self.server = ServeProcess(self.config_path, self.port, self.tmp.join("serve.out")).start()
        self.addCleanup(self.server.kill)
        return self.server

    def post(self, token=None, **headers):
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return request(self.port, "POST", "/log", {"type": "t"}, headers)[0]

    def read(self, name):
        try:
            with open(self.tmp.join(name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_reloaded(self, token=None):
        """Wait until every process serving HTTP has applied a SIGHUP. With HTTP worker processes
        (http.workers) the serving process logs "SIGHUP: applied" once it has sent the reload to
        them, and each worker applies it a moment later. /status is the barrier: the serving
        process answers it only after asking every worker for its counters over the link the
        reload went by, so each has applied it by then; with tokens, a 200 for the new `token`
        comes from a worker that applied it."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        wait_until(lambda: request(self.port, "GET", "/status", headers=headers)[0] == 200,
                   message="/status answered once every HTTP process applied the SIGHUP")


class SighupTest(ServeCase):
    def test_reopens_the_log_and_reloads_tokens_and_level_without_stopping(self):
        server = self.serve(http={"tokens": ["one"]}, log={"file": self.tmp.join("zspark.log")})
        self.assertEqual(self.post("one"), 200)
        os.rename(self.tmp.join("zspark.log"), self.tmp.join("zspark.log.1"))  # as logrotate does
        self.data["http"]["tokens"] = ["two"]
        self.data["log"]["level"] = "debug"
        self.data["forward"] = {"batch_size": 10}
        write_config(self.tmp.path, self.data)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: applied" in self.read("zspark.log"), message="the reload's log line")
        self.assertIn("SIGHUP: reopening the log files and reloading", self.read("zspark.log.1"))
        self.assertIn("SIGHUP: applied http.tokens, log.level; changed in the file but applied only at a "
                      "restart: forward.batch_size", self.read("zspark.log"))
        self.assertNotIn("two", self.read("zspark.log"))  # keys named, never their values
        self.wait_reloaded("two")
        self.assertEqual((self.post("one"), self.post("two")), (401, 200))
        self.assertIsNone(server.proc.poll())

        with open(self.config_path, "w") as f:
            f.write("http: {tokens: [three], bogus: 1}\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "no longer loads" in self.read("zspark.log"), message="the refused reload")
        self.assertIn("unknown key 'http.bogus'", self.read("zspark.log"))
        self.assertEqual((self.post("three"), self.post("two")), (401, 200))  # nothing changed
        self.assertEqual(server.stop(signal.SIGTERM), 0)


class SighupCorsTest(ServeCase):
    def test_reloads_the_allowed_origins(self):
        server = self.serve(http={"cors": {"allowed_origins": ["https://old.example"]}},
                            log={"file": self.tmp.join("zspark.log")})
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        ask = lambda origin: request(self.port, "OPTIONS", "/log", None, {**preflight, "Origin": origin})  # noqa: E731
        self.assertEqual((ask("https://old.example")[0], ask("https://new.example")[0]), (204, 403))
        self.data["http"]["cors"] = {"allowed_origins": ["https://new.example"], "max_age_s": 30}
        write_config(self.tmp.path, self.data)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: applied" in self.read("zspark.log"), message="the reload's log line")
        self.assertIn("SIGHUP: applied http.cors.allowed_origins, http.cors.max_age_s\n", self.read("zspark.log"))
        self.wait_reloaded()
        status, headers, _ = ask("https://new.example")
        self.assertEqual((status, headers["access-control-allow-origin"], headers["access-control-max-age"]),
                         (204, "https://new.example", "30"))
        self.assertEqual(ask("https://old.example")[0], 403)
        status = json.loads(request(self.port, "GET", "/status")[2])
        self.assertEqual(status["sources"]["http"]["cors_refused"], 2, "counted across the reload")
        self.assertEqual(server.stop(signal.SIGTERM), 0)


class LogFormatTest(ServeCase):
    def test_json_log_lines(self):
        server = self.serve(log={"format": "json"})
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        records = [json.loads(line) for line in server.log().splitlines()]
        self.assertTrue(records)
        for record in records:
            self.assertEqual(set(record) - {"traceback"}, {"time", "level", "logger", "message"}, record)
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIn(("INFO", "zspark.server"), [(r["level"], r["logger"]) for r in records
                                                  if "serving as node" in r["message"]])


class AccessLogTest(ServeCase):
    # A sender's attempt to end its line and forge the next one; control characters cannot be in
    # a header, so the UTF-8 of NEL (U+0085) and LINE SEPARATOR (U+2028) and quotes stand in.
    AGENT = 'evil" 200 0 "-" "-"\u0085\u2028 \\ 6.6.6.6 - - [forged]'

    def raw_request(self, target, agent):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: ".encode()
                         + agent.encode("utf-8") + b"\r\nReferer: https://example.com/\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    def access_lines(self):
        """The access log's lines but the /imok requests of ServeProcess.start."""
        return [line for line in self.read("access.log").splitlines() if "/imok" not in line]

    def test_combined_lines_escape_what_the_sender_chose(self):
        server = self.serve(http={"access_log": "combined", "access_log_file": self.tmp.join("access.log")})
        self.assertIn(b" 200 ", self.raw_request("/log?type=a", self.AGENT))
        self.assertIn(b" 404 ", self.raw_request("/nowhere", "curl/8"))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        lines = self.access_lines()
        self.assertEqual(len(lines), 2, lines)
        pattern = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                             r'"(GET [^"]*)" (\d{3}) (\d+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$')
        first, second = (pattern.match(line) for line in lines)
        self.assertIsNotNone(first, lines[0])
        self.assertEqual(first.group(1, 2, 4), ("GET /log?type=a HTTP/1.1", "200", "https://example.com/"))
        self.assertTrue(first.group(5).startswith('evil\\" 200 0 \\"-\\" \\"-\\"'), first.group(5))
        self.assertIn("\\\\ 6.6.6.6", first.group(5))
        self.assertTrue(lines[0].isprintable(), lines[0])
        self.assertEqual(second.group(1, 2, 5), ("GET /nowhere HTTP/1.1", "404", "curl/8"))

    def test_json_lines(self):
        server = self.serve(http={"access_log": "json", "access_log_file": self.tmp.join("access.log")})
        self.assertIn(b" 200 ", self.raw_request("/log?type=a", self.AGENT))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        (line,) = self.access_lines()
        self.assertTrue(line.isprintable(), line)
        entry = json.loads(line)
        self.assertEqual({k: entry[k] for k in ("remote", "method", "path", "protocol", "status", "referrer")},
                         {"remote": "127.0.0.1", "method": "GET", "path": "/log?type=a", "protocol": "HTTP/1.1",
                          "status": 200, "referrer": "https://example.com/"})
        # The header's bytes as pywsgi hands them on (latin-1), whole: escaped, nothing dropped.
        self.assertEqual(entry["user_agent"], self.AGENT.encode("utf-8").decode("latin-1"))
        self.assertGreater(entry["bytes"], 0)
        self.assertGreaterEqual(entry["duration_ms"], 0)
        self.assertRegex(entry["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_off_by_default(self):
        server = self.serve()
        self.assertIn(b" 200 ", self.raw_request("/log?type=a", "curl/8"))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertNotIn("/log?type=a", server.log())


if __name__ == "__main__":
    unittest.main()
