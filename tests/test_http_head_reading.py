"""httpserver.RequestHandler reads a request head two ways: whole from what one recv brought
(`_buffered_head`, no timer), or line by line (`_read_head`). Whenever the first answers, it
gives the bytes the second would have read, and leaves the stream where the second would."""
import io
import unittest

from hypothesis import given, settings
from hypothesis import strategies as st

import tests.hostile  # noqa: F401  (loads the hypothesis profile: derandomized in CI)
from zspark.sources.httpframing import FramingError
from zspark.sources.httpserver import RequestHandler


def handler_on(data, buffer_size=8192):
    handler = RequestHandler.__new__(RequestHandler)
    handler.rfile = io.BufferedReader(io.BytesIO(data), buffer_size=buffer_size)
    handler.rfile.peek(1)  # as wait_for_request leaves it
    return handler


def line_by_line(data, buffer_size=8192):
    """(what _read_head returns or raises, the rest of the stream)."""
    handler = handler_on(data, buffer_size)
    try:
        head = handler._read_head()
    except FramingError as e:
        head = (e.status, e.reason)
    return head, handler.rfile.read()


PIECES = st.sampled_from([b"GET / HTTP/1.1", b"POST /log HTTP/1.0", b"Host: h", b"X: a b", b"\r\n", b"\n", b"\r",
                          b"\r\n\r\n", b"\n\r\n", b"\n\n", b" ", b"x" * 8190, b"body", b"Content-Length: 4"])


class BufferedHeadTest(unittest.TestCase):
    def assert_same(self, data, buffer_size=8192):
        handler = handler_on(data, buffer_size)
        head = handler._buffered_head()
        if head is not None:
            self.assertEqual((head, handler.rfile.read()), line_by_line(data, buffer_size), data[:200])
        return head

    def test_the_common_request(self):
        data = b"POST /log HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\n\r\n"
        self.assertEqual(self.assert_same(data), data[:data.index(b"body")])

    def test_left_to_the_line_reader(self):
        long_line = b"GET /" + b"x" * 8176 + b" HTTP/1.1\r\n\r\n"  # a request line of 8192 bytes: 414
        self.assertIsNone(self.assert_same(long_line, buffer_size=16384))
        self.assertIsNotNone(self.assert_same(long_line[:5] + long_line[6:], buffer_size=16384))  # 8191: served
        for data in (b"GET / HTTP/1.1\r\nX: a\n\r\n", b"GET / HTTP/1.1\n\nX: a\r\n\r\n", b"\r\nGET / HTTP/1.1\r\n\r\n",
                     b"\nGET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\r\n", b"GET / HTTP/1.1",
                     b"GET /" + b"x" * 8186 + b" HTTP/1.1\r\n\r\n",  # more than one recv brings
                     b"GET / HTTP/1.1\r\n\n\r\n\r\n"):
            with self.subTest(data=data[:40]):
                self.assertIsNone(self.assert_same(data))

    @settings(max_examples=1000)
    @given(st.lists(PIECES, max_size=12))
    def test_generated_streams(self, pieces):
        self.assert_same(b"".join(pieces))
        self.assert_same(b"".join(pieces), buffer_size=16384)


if __name__ == "__main__":
    unittest.main()
