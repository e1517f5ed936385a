"""What a sender can hold on the HTTP port: a request head trickled a byte at a time, an idle
keep-alive, a connection that never sends, a TLS handshake that never finishes, plain text on the
HTTPS port, and more connections than `http.max_connections`. Each is cut off by its configured
deadline (short here), counted in /status under sources.http, never journaled, and never keeps
`/imok` or a real `POST /log` from being answered for long.
"""
import json
import signal
import socket
import ssl
import time

import gevent

from tests.support import ServeProcess, config_data, request, wait_until, write_config
from tests import test_access
from tests.test_http import HttpCase

LIMIT_S = 10  # how long a test waits for what a 1-2 s deadline should bring about


def read_until_closed(sock, limit=LIMIT_S, trickle=None):
    """Bytes the server sent until it closed the connection; fails the test after `limit` seconds.
    `trickle`: bytes to send one at a time, one every 0.5 s, while waiting."""
    data = b""
    deadline = time.monotonic() + limit
    sock.settimeout(0.5)
    trickle = list(trickle or b"")
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if trickle:
                try:
                    sock.send(bytes([trickle.pop(0)]))
                except OSError:
                    return data
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for {limit}s (got {data[:200]!r})")


class TimeoutsTest(HttpCase):
    http_settings = {"header_timeout_s": 1.5, "idle_timeout_s": 1.0}

    def connections(self):
        return self.status()["sources"]["http"]["connections"]

    def test_slowloris_head_is_cut_off_at_the_header_deadline(self):
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"GET /log?type=slow HTTP/1.1\r\n")
            data = read_until_closed(sock, trickle=b"X-Slow: " + b"a" * 100)
        if data:  # a 408, or nothing: both are RFC 9110's
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.assertEqual(self.connections()["timeouts"], 1)
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 0))

    def test_a_connection_that_never_sends_is_closed(self):
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            self.assertEqual(read_until_closed(sock), b"")
        self.assertEqual(self.connections()["timeouts"], 1)

    def test_an_idle_keep_alive_is_closed_after_the_idle_timeout(self):
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"GET /log?type=ka HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_until_closed(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertEqual(data.count(b"HTTP/1.1 "), 1)
        stats = self.connections()
        self.assertEqual(stats["idle_closed"], 1)
        self.assertEqual(stats["timeouts"], 0)
        self.assertEqual([e["type"] for e in self.events()], ["ka"])

    def test_a_body_no_route_reads_is_not_read_behind_the_answer(self):
        # Any route, not only /log: an answer given without reading the body closes the
        # connection, instead of reading the rest however slowly it trickles in.
        for method, path in (("POST", "/nothing"), ("POST", "/imok"), ("POST", "/status"),
                             ("PUT", "/log"), ("GET", "/metrics")):
            with self.subTest(path=path, method=method), socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode())
                data = read_until_closed(sock, trickle=b"b" * 100)
                self.assertTrue(data.startswith(b"HTTP/1.1 "), data)
                self.assertIn(b"\r\nConnection: close\r\n", data.split(b"\r\n\r\n", 1)[0] + b"\r\n")
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"POST /nothing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            data = read_until_closed(sock, trickle=b"c" * 100)
            self.assertTrue(data.startswith(b"HTTP/1.1 404 "), data)
        self.assertEqual(self.events(), [])

    def test_an_upgrade_header_does_not_unframe_the_body(self):
        # zspark upgrades nothing: the body of a request asking to is framed like any other, and
        # what follows it is the next request, not more body.
        smuggled = b"GET /log?type=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        body = b'{"type":"up"}'
        for upgrade in (b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b"Connection: upgrade\r\n"):
            with self.subTest(upgrade=upgrade), socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(b"POST /log HTTP/1.1\r\nHost: x\r\n" + upgrade + b"Content-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
                             b"X" * len(body) + smuggled)
                data = read_until_closed(sock)
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertNotIn("smuggled", [e["type"] for e in self.events()])
        self.assertEqual([e["type"] for e in self.events()], ["up", "up"])

    def test_status_shows_the_connection_counters(self):
        http = self.status()["sources"]["http"]
        for key in ("accepted", "rejected", "refused", "rate", "connections", "inflight_bytes"):
            self.assertIn(key, http)
        stats = http["connections"]
        for key in ("open", "accepted", "refused", "evicted", "idle_closed", "timeouts", "tls_errors",
                    "accept_errors"):
            self.assertIn(key, stats)
        self.assertEqual(stats["open"], 1)  # this /status request's own
        self.assertGreaterEqual(stats["accepted"], 1)


class MaxConnectionsTest(HttpCase):
    http_settings = {"max_connections": 20, "header_timeout_s": 30, "idle_timeout_s": 60}

    def hold(self, count, send=b""):
        socks = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port))
            self.addCleanup(sock.close)
            if send:
                sock.sendall(send)
            socks.append(sock)
        gevent.sleep(0.2)  # let the server take them all
        return socks

    def test_held_idle_connections_make_room_for_imok_and_a_post(self):
        self.hold(40)
        self.hold(10, b"GET /imok HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then idle keep-alives
        self.assertEqual(request(self.port, "GET", "/imok", timeout=LIMIT_S)[0], 200)
        status, _, body = request(self.port, "POST", "/log", {"type": "through"}, timeout=LIMIT_S)
        self.assertEqual(status, 200, body)
        stats = self.status()["sources"]["http"]["connections"]
        self.assertLessEqual(stats["open"], 20)
        self.assertGreaterEqual(stats["evicted"], 30)
        self.assertEqual([e["type"] for e in self.events()], ["through"])

    def test_connections_stalled_in_their_heads_make_room_too(self):
        held = self.hold(40, b"POST /log HTTP/1.1\r\nContent-Length: 2\r\n")  # heads never finished
        self.assertEqual(request(self.port, "GET", "/imok", timeout=LIMIT_S)[0], 200)
        status, _, body = request(self.port, "POST", "/log", {"type": "through"}, timeout=LIMIT_S)
        self.assertEqual(status, 200, body)
        stats = self.status()["sources"]["http"]["connections"]
        self.assertLessEqual(stats["open"], 20)
        self.assertGreaterEqual(stats["evicted"], 20)
        self.assertEqual(sum(closed(sock) for sock in held), stats["evicted"])
        self.assertEqual([e["type"] for e in self.events()], ["through"])

    def test_connections_busy_with_requests_get_imok_a_503_then_room(self):
        self.start_server(http={"body_timeout_s": 2})  # a second server, whose bodies time out
        # Heads complete, bodies never sent: each connection is busy in a request, not evictable.
        self.hold(40, b"POST /log HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(request(self.port, "GET", "/imok", timeout=LIMIT_S)[0], 200)
        status, headers, body = request(self.port, "POST", "/log", {"type": "later"}, timeout=LIMIT_S)
        self.assertEqual(status, 503, body)
        self.assertEqual(headers.get("retry-after"), "5")
        self.assertIn("http.max_connections", json.loads(body)["error"])
        # Once the held bodies pass their deadline, a POST gets through.
        wait_until(lambda: request(self.port, "POST", "/log", {"type": "later"}, timeout=LIMIT_S)[0] == 200,
                   timeout=LIMIT_S, message="a POST answered 200")
        stats = self.status()["sources"]["http"]["connections"]
        self.assertGreaterEqual(stats["refused"], 20)
        self.assertEqual([e["type"] for e in self.events()], ["later"])

    def test_more_held_connections_than_the_overflow_cannot_keep_imok_out(self):
        self.hold(20 + 100, b"GET /imok HTTP/1.1\r\n")  # the cap, and more than the overflow, all busy
        for _ in range(3):
            self.assertEqual(request(self.port, "GET", "/imok", timeout=LIMIT_S)[0], 200)


def closed(sock, timeout=2):
    """True if the server closed `sock` (without an answer) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class TlsTest(test_access.AccessCase):
    make_certificate = test_access.Https.make_certificate

    def serve_https(self, **http):
        cert, key = self.make_certificate()
        data = config_data(self.tmp.path, http={"certfile": cert, "keyfile": key, **http})
        self.port = data["http"]["port"]
        self.context = ssl.create_default_context(cafile=cert)
        self.context.check_hostname = False
        path = write_config(self.tmp.path, data)
        server = ServeProcess(path, self.port, self.tmp.join("serve.log"))
        server.spawn()
        self.addCleanup(server.stop, signal.SIGKILL)
        wait_until(lambda: self._https_status(), timeout=20, message="the HTTPS server answering")
        return server

    def _https_status(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
                with self.context.wrap_socket(raw) as sock:
                    sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = read_until_closed(sock)
        except OSError:
            return None
        return json.loads(data.partition(b"\r\n\r\n")[2])["sources"]["http"]

    def test_plain_text_on_the_https_port_is_counted_in_one_line_without_a_traceback(self):
        server = self.serve_https()
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"GET /imok HTTP/1.1\r\nHost: x\r\n\r\n")
                read_until_closed(sock)
        http = self._https_status()
        stats = http["connections"]
        self.assertEqual(stats["tls_errors"], 30)
        log = server.log()
        self.assertNotIn("Traceback", log)
        lines = [line for line in log.splitlines() if "TLS handshake failed" in line]
        self.assertTrue(lines, log[-2000:])
        self.assertLessEqual(len(lines), 10, "not rate-limited")
        self.assertIn("127.0.0.1", lines[0])
        self.assertIn("plain HTTP on the HTTPS port", lines[0])
        self.assertEqual(http["accepted"], 0)  # events

    def test_a_stalled_tls_handshake_is_closed(self):
        self.serve_https(tls_handshake_timeout_s=1)
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
            self.assertEqual(read_until_closed(sock), b"")
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            self.assertEqual(read_until_closed(sock), b"")  # nothing at all
        stats = self._https_status()["connections"]
        self.assertEqual(stats["timeouts"], 2)
        self.assertEqual(stats["tls_errors"], 0)
