"""`GET /tail` clients that try to hold the server: a huge `last`, more clients than allowed, a
filter that matches nothing on a large journal (README: http.tail_max_last, http.tail_max_clients).

Asserted: what a client receives, the 503 and its Retry-After, and work counted (events decoded),
never time.
"""
import json
import socket
from unittest import mock

from tests.test_http import HttpCase
from zspark.journal import codec


class TailClient:
    """A raw /tail stream: the answer's head, then its chunks as they come."""

    def __init__(self, port, query):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(f"GET /tail?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}

    def _until(self, marker):
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the stream")
            self.buf += data
        found, _, self.buf = self.buf.partition(marker)
        return found

    def _exactly(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the stream")
            self.buf += data
        found, self.buf = self.buf[:n], self.buf[n:]
        return found

    def body(self):
        """The body of a non-streamed answer (with Content-Length)."""
        return json.loads(self._exactly(int(self.headers["content-length"])))

    def chunk(self):
        """The next chunk of the stream's body."""
        size = int(self._until(b"\r\n"), 16)
        data = self._exactly(size)
        self._exactly(2)
        return data

    def events(self):
        """The events of the next chunk that holds any (keep-alive chunks are empty lines)."""
        while True:
            lines = [line for line in self.chunk().split(b"\n") if line]
            if lines:
                return [json.loads(line) for line in lines]

    def close(self):
        self.sock.close()


class TailCase(HttpCase):
    def tail(self, query):
        client = TailClient(self.port, query)
        self.addCleanup(client.close)
        return client


class TailLastTest(TailCase):
    http_settings = {"tail_max_last": 5}

    def test_a_huge_last_gets_at_most_the_cap(self):
        ids = self.assert_accepted(self.post([{"type": f"t{i}"} for i in range(20)]), 20)
        for last in ("99999999999999999999999999999999999999999", "6", "000000000000000000000000000000000000006"):
            client = self.tail(f"last={last}")
            self.assertEqual(client.status, 200)
            self.assertEqual(client.chunk(), b"\n")  # the stream has started
            self.assertEqual([e["_id"] for e in client.events()], ids[-5:], last)
            client.close()
        client = self.tail("last=3")
        client.chunk()
        self.assertEqual([e["_id"] for e in client.events()], ids[-3:])

    def test_a_bad_last_is_a_400(self):
        for last in ("-1", "+5", "1_0", "x", "\uff11"):
            client = self.tail(f"last={last}")
            self.assertEqual(client.status, 400, last)
            client.close()


class TailClientsTest(TailCase):
    # (workers: 1: one test counts the records decoded in this process)
    http_settings = {"tail_max_clients": 2, "retry_after_s": 9, "tail_max_last": 10000, "workers": 1}

    def test_clients_beyond_the_cap_get_503_with_retry_after(self):
        first, second = self.tail("last=0"), self.tail("last=0")
        for client in (first, second):
            self.assertEqual(client.status, 200)
            self.assertEqual(client.chunk(), b"\n")
        third = self.tail("last=0")
        self.assertEqual(third.status, 503)
        self.assertEqual(third.headers.get("retry-after"), "9")
        self.assertIn("http.tail_max_clients", third.body()["error"])
        # The two streams still follow; once one goes, a new client gets in.
        (event_id,) = self.assert_accepted(self.post({"type": "live"}), 1)
        self.assertEqual([e["_id"] for e in first.events()], [event_id])
        first.close()
        self.post({"type": "notice-the-close"})  # the server sees the close when it writes
        second.events()
        for _ in range(50):
            again = TailClient(self.port, "last=0")
            self.addCleanup(again.close)
            if again.status == 200:
                break
            again.close()
            self.post({"type": "notice-the-close"})
        self.assertEqual(again.status, 200)

    def test_a_filter_that_matches_nothing_decodes_nothing_on_a_large_journal(self):
        self.assert_accepted(self.post([{"type": "noise", "topic": "web", "context": {"i": i}}
                                        for i in range(3000)]), 3000)
        decoded = [0]
        one, many = codec.decode_event, codec.decode_events

        def counting_one(payload):
            decoded[0] += 1
            return one(payload)

        def counting_many(payloads):
            decoded[0] += len(payloads)
            return many(payloads)

        with mock.patch.object(codec, "decode_event", counting_one), \
                mock.patch.object(codec, "decode_events", counting_many):
            client = self.tail("last=10000&type=wanted&topic=web")
            client.chunk()
            (event_id,) = self.assert_accepted(self.post({"type": "wanted", "topic": "web"}), 1)
            # It arrives after the 3000 records before it were passed over.
            self.assertEqual([e["_id"] for e in client.events()], [event_id])
        self.assertEqual(decoded[0], 1)
