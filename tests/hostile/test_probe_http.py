"""What an independent probe of the hardened HTTP edge found (after issue 10's fixes were merged),
over raw sockets against a real listener: each test is one finding, written from what a sender
sees and what the README promises.

- A `Content-Length` of thousands of digits is digits only, so it passed the framing rules, and
  then `int()` refused it (Python's 4300-digit limit): the connection was dropped unanswered and
  each such request wrote a 23-line traceback to the log, uncounted.
- A request to any route but /log (`/imok`, `/status`, a 404...) that announced a body was
  answered, and then pywsgi drained that body at the sender's pace, with no deadline and no size
  limit: a byte every few seconds held the connection for ever, past every timeout, and 50 such
  connections held `http.max_connections` so that every `POST /log` got 503.
- `ip` took an IPv6 address with any zone id (`fe80::1%<anything>`): newlines, escapes, markup,
  60 KB of text, in a field the README says is an IP address.
- A gzip body's inflated bytes were never charged to `http.max_inflight_bytes` when the
  compressed body arrived in one read: forty 4 KiB gzip bodies inflating to 3.9 MB each were all
  taken at once, RSS 88 -> 517 MiB with a budget of 8 MiB.
"""
import gzip
import json
import socket
import sys
import time

import gevent

from tests.hostile.test_http_budgets import InflightBudgetCase, MiB, closed_by_server, read_answer, send_quietly
from tests.hostile.test_http_connections import read_until_closed
from tests.hostile.test_http_framing import FramingCase, SMUGGLED, event, post
from tests.support import request
from tests.test_http import HttpCase


class HugeContentLengthTest(FramingCase):
    def test_a_content_length_of_thousands_of_digits_is_a_413_and_closed(self):
        for digits in (5000, 20000):
            self.assert_refused_and_closed(post(b"", b"Content-Length: " + b"9" * digits),
                                           "larger than", status=413)
        self.assertEqual(self.types(), [])

    def test_leading_zeros_however_many_are_the_same_length(self):
        # RFC 9112: Content-Length = 1*DIGIT; 000...012 is 12, as a strict parser reads it.
        body = event("zeros")
        wire = post(body + SMUGGLED, b"Content-Length: " + b"0" * 5000 + b"%d" % len(body))
        answers, _ = self.exchange(wire)
        self.assertEqual([a[0] for a in answers], [200, 200], answers)
        self.assertEqual(self.types(), ["zeros", "smuggled"])

    def test_differing_huge_lengths_are_still_differing(self):
        wire = post(b"", b"Content-Length: " + b"9" * 5000, b"Content-Length: " + b"8" * 5000)
        self.assert_refused_and_closed(wire, "differing Content-Length")


class UnreadBodiesTest(HttpCase):
    """Short deadlines: a connection that outlives all of them by far is held for ever."""

    http_settings = {"header_timeout_s": 1, "idle_timeout_s": 1, "body_timeout_s": 1}

    def test_a_body_no_route_reads_is_not_drained_at_the_senders_pace(self):
        for target in (b"GET /imok", b"GET /status", b"GET /nothere", b"DELETE /log", b"GET /metrics"):
            for framing in (b"Content-Length: 99999999999\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\nfffffff\r\n"):
                with socket.create_connection(("127.0.0.1", self.port)) as sock:
                    sock.sendall(target + b" HTTP/1.1\r\nHost: x\r\n" + framing)
                    # One byte every 0.5 s for 10 s: the connection must be closed before that.
                    data = read_until_closed(sock, limit=10, trickle=b"x" * 40)
                self.assertEqual(data.count(b"HTTP/1.1 "), 1, (target, framing, data[:300]))

    def test_held_unread_bodies_cannot_keep_post_log_out(self):
        self.server.shutdown()
        self.server = self.start_server(http={"max_connections": 10})
        holders = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.sendall(b"GET /imok HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
            holders.append(sock)
        self.addCleanup(lambda: [s.close() for s in holders])
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the holders keep trickling, a byte each 0.5 s
            for sock in holders:
                try:
                    sock.send(b"x")
                except OSError:
                    pass
            gevent.sleep(0.5)
        status, _, body = self.call("POST", "/log", json.dumps({"type": "real"}).encode(),
                                    {"Content-Type": "application/json"})
        self.assertEqual(status, 200, body)


class IpZoneIdTest(HttpCase):
    def test_an_ipv6_zone_id_cannot_carry_text(self):
        for ip in ("fe80::1%\n2026-12-02 00:00:00,000 CRITICAL forged", "::1%\x1b[2J", "fe80::1%" + "A" * 60000,
                   "fe80::1%<img src=x onerror=alert(1)>", "::ffff:1.2.3.4%\t\u2028", "fe80::1%\u009b31m"):
            self.assert_refused(self.post({"type": "ip", "ip": ip}), 400, "ip: not an IP address", index=0)
        status, _, _ = self.call("GET", "/log?type=ipq&ip=::1%25%0a%1b")
        self.assertEqual(status, 400)
        self.assertEqual(self.events(), [])

    def test_ordinary_addresses_and_interface_zones_are_taken(self):
        for ip in ("127.0.0.1", "::1", "2001:db8::1", "fe80::1%eth0", "fe80::1%25", "fe80::1%en0.5"):
            self.assert_accepted(self.post({"type": "ip", "ip": ip}), 1)


class GzipInflightBudgetTest(InflightBudgetCase):
    """Sixty connections each send a gzip body of a few KiB that inflates to almost 1 MiB."""

    BODY_TIMEOUT_S = 20

    def test_inflated_bytes_are_charged_to_the_budget(self):
        line = json.dumps({"type": "gz", "context": {"pad": "x" * 30000}}).encode()
        body = gzip.compress(b"\n".join([line] * (int(self.BODY * 0.95) // (len(line) + 1))))
        self.assertLess(len(body), 8192)
        for _ in range(20):  # warm up
            self.assertEqual(request(self.port, "POST", "/log", [{"type": "warm"}])[0], 200)
        before = self.server.rss_bytes()
        holders = []
        for _ in range(self.CONNECTIONS):  # all of the body but its last byte, then wait
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.sendall(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                         b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:-1])
            holders.append(sock)
        self.addCleanup(lambda: [s.close() for s in holders])
        time.sleep(1.0)
        for sock in holders:
            send_quietly(sock, body[-1:])
        answers = [read_answer(sock, timeout=30) for sock in holders]
        rss = self.server.rss_bytes()
        statuses = [a[0] if a else None for a in answers]
        taken = statuses.count(200)
        print(f"\ngzip inflight budget: {taken} taken, {statuses.count(503)} answered 503, RSS "
              f"{before / MiB:.1f} -> {rss / MiB:.1f} MiB", file=sys.stderr)
        self.assertEqual(set(statuses) - {200, 503}, set(), statuses)
        # Those refused were refused because the budget was full: at most the budget's worth
        # (and one more, the one that found it full) were ever held at once.
        self.assertGreaterEqual(statuses.count(503), self.CONNECTIONS - self.BUDGET // self.BODY - 1, statuses)
        self.assertLess(rss - before, 3 * self.BUDGET + 24 * MiB, (before, rss))
        for sock, status in zip(holders, statuses):
            if status == 503:
                self.assertTrue(closed_by_server(sock))
