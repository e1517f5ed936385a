"""Senders cannot forge the server's log lines or reach the operator's terminal.

A sender's keys and values reach the log (rejection reasons quote them), /status
(`last_rejection`) and `zcmd` output. Sent with newlines, CRs, the other Unicode line breaks, ESC
sequences, C1 controls, DEL and bidi overrides over each channel (HTTP POST body, a GET parameter
name, the ZeroMQ JSON and BSON sockets), they must come out escaped: every line of the server's
log is a record it wrote (date, level, logger) or a continuation line of one ("  | "), and nothing
printed by `zcmd status`, `check`, `tail` (both modes) or `replay --to stdout` holds a character a
terminal acts on. Unit tests pin the helper (zspark/safetext.py) and the log formatter
(zspark/logsetup.py), gevent's hub included.
"""
import io
import json
import logging
import re
import subprocess
import sys
import unittest
import urllib.parse

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support import ROOT, ServeProcess, TempDir, config_data, free_port, request, wait_until, \
    write_config, zcmd
from zspark.client import ZSparkClient
from zspark.logsetup import CONTINUATION, OneLineFormatter
from zspark.safetext import json_line, one_line, shorten

FORGED = "2026-01-01 00:00:00,000 CRITICAL zspark.server: forged"
# Every character that ends a line somewhere (str.splitlines, terminals), then what a terminal
# acts on: ESC sequences (colour, window title), the 8-bit CSI, bell, DEL, right-to-left override.
NASTY = ("\n" + FORGED + "\x1b[31m\r" + FORGED + "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028" + FORGED
         + "\u2029\x1b]0;owned\x07\x9b2J\x7f\u202e\t")
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")


def key(channel):
    """A context key that names its channel, so that its rejection can be found in the log."""
    return f"mark-{channel}{NASTY}"


def unsafe_characters(text):
    """The characters of `text`, other than the newlines between its lines, a terminal may act on."""
    return sorted({c for c in text.replace("\n", "") if not c.isprintable()})


class Helper(unittest.TestCase):
    def test_escapes(self):
        self.assertEqual(one_line("a\nb\r\tc\x1b[31m\x00\x7f\x85\x9b\u2028\u2029\u202e\ufeff\ud800\U000e0001"),
                         "a\\nb\\r\\tc\\x1b[31m\\x00\\x7f\\x85\\x9b\\u2028\\u2029\\u202e\\ufeff\\ud800\\U000e0001")
        self.assertEqual(one_line("plain text, é, 中文, עברית, emoji \U0001f600, a\\nb"),
                         "plain text, é, 中文, עברית, emoji \U0001f600, a\\nb")
        self.assertEqual(one_line(ValueError("x\ny")), "x\\ny")
        self.assertEqual(shorten("abcdef", 6), "abcdef")
        self.assertEqual(shorten("abcdefg", 6), "abc...")
        self.assertEqual(shorten("ab\ncde", 6), "ab...")  # the escape is not cut in two

    @given(st.text(st.characters(blacklist_categories=())))  # surrogates too
    @example(NASTY)
    def test_output_is_printable_and_printable_input_unchanged(self, text):
        out = one_line(text)
        self.assertTrue(out.isprintable(), repr(out))
        self.assertEqual(out == text, text.isprintable())
        out.encode("utf-8")  # no lone surrogate left: it can be written anywhere

    @given(st.text(st.characters(blacklist_categories=())), st.integers(0, 80))
    def test_shorten_is_a_bounded_prefix(self, text, limit):
        out = shorten(text, limit)
        self.assertTrue(out.isprintable())
        full = one_line(text)
        if len(full) <= limit:
            self.assertEqual(out, full)
        else:
            self.assertLessEqual(len(out), max(limit, 3))
            self.assertTrue(full.startswith(out[:-3]) and out.endswith("..."))

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(st.characters(blacklist_categories=())),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(st.characters(blacklist_categories=())), inner, max_size=3),
                        max_leaves=10))
    @example({NASTY: NASTY})
    def test_json_line_is_the_same_json_and_printable(self, value):
        out = json_line(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        self.assertTrue(out.isprintable(), repr(out))
        self.assertEqual(json.loads(out), value)


class Formatter(unittest.TestCase):
    def log_lines(self, emit):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(OneLineFormatter())
        logger = logging.getLogger("zspark.test.formatter")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            emit(logger)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    def assert_only_records_and_continuations(self, text, records):
        lines = text.splitlines()  # every Unicode line break, not only \n
        self.assertEqual(lines, text.rstrip("\n").split("\n"))
        self.assertEqual(unsafe_characters(text), [])
        heads = [line for line in lines if not line.startswith(CONTINUATION)]
        self.assertEqual(len(heads), records, text)
        for line in heads:
            self.assertRegex(line, RECORD)
            self.assertIn(" zspark.test.formatter: ", line)

    def test_a_message_and_its_arguments_are_one_line(self):
        def emit(logger):
            logger.warning("rejected: %s", NASTY)
            logger.warning(NASTY)
            logger.warning("bad format %d", NASTY)  # a caller's bug: still one record
        text = self.log_lines(emit)
        self.assert_only_records_and_continuations(text, 3)
        self.assertIn("rejected: \\n2026-01-01 00:00:00,000 CRITICAL zspark.server: forged\\x1b[31m\\r", text)

    def test_a_traceback_is_continuation_lines(self):
        def emit(logger):
            try:
                raise ValueError(f"sender said {NASTY}")
            except ValueError:
                logger.exception("handler failed on %s", NASTY)
            logger.warning("with a stack", stack_info=True)
        text = self.log_lines(emit)
        self.assert_only_records_and_continuations(text, 2)
        self.assertIn(f"{CONTINUATION}Traceback (most recent call last):", text)
        self.assertIn(f"{CONTINUATION}ValueError: sender said ", text)
        self.assertIn(f"{CONTINUATION}2026-01-01 00:00:00,000 CRITICAL", text)  # a line of the message
        self.assertIn(f"{CONTINUATION}Stack (most recent call last):", text)

    def test_gevent_and_warnings_go_through_it(self):
        code = ("import warnings, gevent\n"
                "from zspark import logsetup\n"
                "logsetup.setup('info')\n"
                "def fail(): raise ValueError(%r)\n"
                "gevent.spawn(fail).join()\n"
                "try: gevent.get_hub().threadpool.spawn(fail).get()\n"
                "except ValueError: gevent.sleep(0.5)\n"
                "warnings.warn(%r)\n" % (NASTY, NASTY))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        text = result.stderr
        self.assertEqual(unsafe_characters(text), [], text)
        heads = [line for line in text.splitlines() if not line.startswith(CONTINUATION)]
        self.assertEqual(len(heads), 3, text)
        for line in heads:
            self.assertRegex(line, RECORD)
        self.assertEqual(sum("gevent.hub: " in line and "failed with ValueError" in line for line in heads), 2)
        self.assertIn(" py.warnings: ", heads[2])


class ServerLog(unittest.TestCase):
    """One `zcmd serve` for the class; each test sends over one channel and reads its whole log."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = TempDir()
        cls.data = config_data(cls.tmp.path)
        cls.config = write_config(cls.tmp.path, cls.data)
        cls.port = cls.data["http"]["port"]
        cls.server = ServeProcess(cls.config, cls.port, cls.tmp.join("serve.log")).start(timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()
        cls.tmp.remove()

    def rejected(self, source):
        return json.loads(request(self.port, "GET", "/status")[2])["sources"][source]["rejected"]

    def assert_log_clean(self, channel, rejections):
        log = self.server.log()
        with open(self.server.log_path, "rb") as f:
            raw = f.read()
        self.assertEqual([b for b in set(raw) if b < 0x20 and b != 0x0a or b == 0x7f], [],
                         "control bytes in the log")
        self.assertEqual(unsafe_characters(log), [])
        lines = log.splitlines()
        self.assertEqual(lines, log.rstrip("\n").split("\n"), "a Unicode line break in the log")
        for line in lines:
            if not line.startswith(CONTINUATION):
                self.assertRegex(line, RECORD)
                self.assertFalse(line.startswith(FORGED[:23]), line)
                self.assertNotIn(" CRITICAL ", line[:35], line)
        mine = [line for line in lines if f"mark-{channel}" in line]
        self.assertEqual(len(mine), rejections, "\n".join(mine) or log[-3000:])
        for line in mine:
            self.assertIn(f"mark-{channel}\\n2026-01-01 00:00:00,000 CRITIC",
                          line)

    def post(self, event):
        status, _, body = request(self.port, "POST", "/log", event)
        self.assertEqual(status, 400, body)
        reason = json.loads(body)["error"]
        self.assertEqual(unsafe_characters(reason), [])  # the answer says it the same way
        return reason

    def test_http_post_body_keys(self):
        reasons = [self.post({"type": "t", "context": {key("post"): {"$where": 1}}}),
                   self.post({"type": "t", "context": {key("post"): "a\x00b"}}),
                   self.post({"type": "t", "cookies": {key("post"): 5}})]
        self.assertIn("mark-post\\n2026-01-01", reasons[0])
        self.assert_log_clean("post", 3)

    def test_http_get_parameter_name(self):
        query = urllib.parse.urlencode({"type": "t", key("get"): "\x00"})
        status, _, body = request(self.port, "GET", f"/log?{query}")
        self.assertEqual(status, 400, body)
        self.assert_log_clean("get", 1)

    def zmq_send(self, fmt, source):
        before = self.rejected(source)
        with ZSparkClient(self.data["zmq"][f"{fmt}_bind"], format=fmt, linger_ms=2000) as client:
            client.event("t", {key(fmt): {"$where": 1}})
            client.event("t", {key(fmt): "a\x00b"})
            client.send({"type": "t", "cookies": {key(fmt): 5}})
        wait_until(lambda: self.rejected(source) == before + 3, message=f"3 rejections on {source}")
        self.assert_log_clean(fmt, 3)

    def test_zmq_json_socket(self):
        self.zmq_send("json", "zmq_json")

    def test_zmq_bson_socket(self):
        self.zmq_send("bson", "zmq_bson")

    def test_zcmd_status_shows_the_last_rejection_escaped(self):
        self.post({"type": "t", "context": {key("status"): {"$where": 1}}})
        last = json.loads(request(self.port, "GET", "/status")[2])["sources"]["http"]["last_rejection"]
        self.assertEqual(unsafe_characters(last), [])
        result = zcmd("-y", self.config, "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(unsafe_characters(result.stdout), [])
        line, = [line for line in result.stdout.splitlines() if "last rejection (http)" in line]
        self.assertIn("mark-status\\n2026-01-01 00:00:00,000 CRITICAL", line)
        self.assertFalse(any(line.startswith("2026") for line in result.stdout.splitlines()))


class Terminal(unittest.TestCase):
    """What `zcmd` prints, from a hostile /status and from events holding control characters."""

    def stand_in(self, status):
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(status, ensure_ascii=False).encode("utf-8")]
        port = free_port()
        server = WSGIServer(("127.0.0.1", port), app, log=None, spawn=Pool())
        server.start()
        self.addCleanup(server.stop)
        return f"http://127.0.0.1:{port}/status"

    def test_status_and_check_from_a_hostile_status(self):
        status = {"ok": True, "node": NASTY, "version": NASTY, "host": NASTY, "pid": NASTY, "uptime_s": 5,
                  "sources": {NASTY: {"accepted": 1, "rejected": 1, "refused": 0, "rate": 0.0,
                                      "last_rejection": NASTY}},
                  "forwarders": {NASTY: {"state": NASTY, "lag": 0, "delivered": 0, "failed": 1,
                                         "last_error": NASTY, "last_error_time": 1}},
                  "journal": {"dir": NASTY, "bytes": 0, "max_bytes": 100, "first_offset": 0, "end_offset": 0,
                              "segments": 1, "sync": NASTY}}
        url = self.stand_in(status)
        for args in (("status",), ("status", "--json"), ("check",)):
            with self.subTest(args=args):
                result = zcmd(*args, "--url", url)
                self.assertIn(result.returncode, (0, 1), result.stderr)
                self.assertTrue(result.stdout.strip())
                self.assertEqual(unsafe_characters(result.stdout), [], result.stdout)
                self.assertEqual(unsafe_characters(result.stderr), [], result.stderr)
                if args == ("check",):
                    self.assertEqual(len(result.stdout.splitlines()), 1, result.stdout)

    def test_tail_and_replay_print_events_escaped(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        data = config_data(tmp.path)
        config = write_config(tmp.path, data)
        port = data["http"]["port"]
        server = ServeProcess(config, port, tmp.join("serve.log")).start(timeout=30)
        self.addCleanup(server.kill)
        context = {NASTY: NASTY, "plain": "é 中 \U0001f600"}  # control characters are valid event data
        proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", "-y", config, "tail", "--server", "-n", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.addCleanup(proc.kill)
        with gevent.Timeout(20):
            self.assertIn(b"following", proc.stderr.readline())
        status, _, body = request(port, "POST", "/log", {"type": "t", "topic": NASTY, "context": context})
        self.assertEqual(status, 200, body)
        with gevent.Timeout(20):
            live = proc.stdout.readline().decode("utf-8")
        outputs = {"tail --server": live}
        for name, args in (("tail", ("tail",)), ("replay", ("replay", "--to", "stdout", "--no-progress"))):
            result = zcmd("-y", config, *args)
            self.assertEqual(result.returncode, 0, result.stderr)
            outputs[name] = result.stdout
        for name, out in outputs.items():
            with self.subTest(command=name):
                self.assertEqual(unsafe_characters(out), [], out)
                (line,) = out.splitlines()
                event = json.loads(line)
                self.assertEqual((event["topic"], event["context"]), (NASTY, context))  # the same JSON


if __name__ == "__main__":
    unittest.main()
