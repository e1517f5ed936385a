"""The HTTP source's headers object (zspark/sources/httpheaders.py) answers exactly as the
email-package parser pywsgi used would, for every header block the strict head parser
(httpframing.parse_head) lets through; the blocks it refuses are tested in
tests/hostile/test_http_framing.py."""
import http.client
import io
import unittest

from gevent.pywsgi import OldMessage, WSGIHandler
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.hostile  # noqa: F401  (loads the hypothesis profile: derandomized in CI)
from zspark.sources.httpframing import FramingError, parse_head
from zspark.sources import httpheaders
from zspark.sources.httpheaders import Headers


def email_parsed(block):
    """What pywsgi's own headers_factory makes of `block`."""
    return http.client.parse_headers(io.BytesIO(block), _class=OldMessage)


def ours(block):
    """The Headers of `block` (header lines and the empty line), or None if parse_head refuses it."""
    try:
        return Headers(parse_head(b"GET / HTTP/1.1\r\n" + block).headers)
    except FramingError:
        return None

NAMES = ["Content-Length", "content-length", "Content-Type", "Transfer-Encoding", "Connection",
         "Host", "X-Forwarded-For", "Authorization", "Cookie", "Expect", "Upgrade", "X_Under",
         "Bad Name", "From", ":", "", "Content-Encoding"]
VALUE_CHARS = st.sampled_from([" ", "\t", "a", "Z", "0", "9", ",", ";", "=", ":", "\r", "\n", "\x00",
                               "\x0b", "\x0c", "\x1c", "\x85", "\xe9", "\xff", "\x7f", "chunked",
                               "close", "keep-alive", "100-continue", "gzip"])
LINE_ENDS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r", ""])


@st.composite
def header_blocks(draw):
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # a continuation line
            line = draw(st.sampled_from([" ", "\t"])) + "".join(draw(st.lists(VALUE_CHARS, max_size=6)))
        elif kind == 1:  # no colon at all
            line = "".join(draw(st.lists(VALUE_CHARS, max_size=8)))
        else:
            name = draw(st.sampled_from(NAMES))
            line = name + ":" + "".join(draw(st.lists(VALUE_CHARS, max_size=6)))
        lines.append(line + draw(LINE_ENDS))
    end = draw(st.sampled_from(["\r\n", "\n", ""]))
    return ("".join(lines) + end).encode("latin-1")


class HeaderParsingTest(unittest.TestCase):
    def assert_same(self, block):
        mine = ours(block)
        self.assertIsNotNone(mine, block)
        theirs = email_parsed(block + b"BODY")
        self.assertEqual(theirs.status, "")  # the email parser too found nothing wrong
        self.assertFalse(theirs.defects, block)
        self.assertEqual(_fields(mine.headers), _fields(theirs.headers), block)
        self.assertEqual(mine.typeheader, _rstrip(theirs.typeheader))
        for name in NAMES + ["Nope"]:
            if name.lower() == "content-length":
                continue  # normalized to the number: see test_content_length_is_normalized
            self.assertEqual(mine.get(name), _rstrip(theirs.get(name)), (block, name))
            self.assertEqual(mine.get(name, "dflt"), _rstrip(theirs.get(name, "dflt")), (block, name))
            self.assertEqual(mine.getheader(name), _rstrip(theirs.getheader(name)), (block, name))
        return mine

    def test_a_typical_request(self):
        block = (b"Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
                 b"Authorization: Bearer abc\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
                 b"Cookie: a=1\r\nCookie: b=2\r\nTrailing:  spaced  \t\r\nEmpty:\r\nTight:x\r\n\r\n")
        mine = self.assert_same(block)
        self.assertEqual(mine.get("x-forwarded-for"), "10.0.0.1")  # the first, as before
        self.assertEqual(mine.get("trailing"), "spaced")

    def test_latin1_values_stay_as_sent(self):
        # (The email parser drops a \x85 from the value.)
        mine = ours(b"X-A: caf\xe9\x85Content-Length: 5\r\n\r\n")
        self.assertEqual(mine.get("x-a"), "caf\xe9\x85Content-Length: 5")
        self.assertIsNone(mine.get("content-length"))

    def test_content_length_is_normalized(self):
        for value in (b"17", b"017", b"17, 17", b" 17 "):
            self.assertEqual(ours(b"Content-Length: " + value + b"\r\n\r\n").get("content-length"), "17", value)
        self.assertEqual(ours(b"Content-Length: 3\r\nX: y\r\ncontent-length: 3\r\n\r\n").headers,
                         ["Content-Length: 3\r\n", "X: y\r\n"])

    def test_blocks_that_are_not_plain_are_refused(self):
        for block in (b"X-A: 1\r\n folded\r\n\r\n", b"X-A: a\x0bb\r\n\r\n",
                      b"no colon here\r\nContent-Length: 5\r\n\r\n", b"X-A: 1\r\n",  # cut short
                      b"Bad Name: 1\r\n\r\n", b"X-A: 1\r\r\n\r\n", b"X-A: 1\n\r\n", b"X-A: a\x00b\r\n\r\n"):
            self.assertIsNone(ours(block), block)

    def test_too_many_headers_is_refused_as_before(self):
        with self.assertRaises(FramingError) as caught:
            parse_head(b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n")
        self.assertEqual(caught.exception.status, 431)
        self.assertIsNotNone(ours(b"X-A: 1\r\n" * 100 + b"\r\n"))

    @settings(max_examples=400)
    @given(header_blocks())
    def test_generated_blocks_answer_as_the_email_parser_does(self, block):
        if ours(block) is not None and b"\x85" not in block:  # see test_latin1_values_stay_as_sent
            self.assert_same(block)


BASE_ENVIRON = {"GATEWAY_INTERFACE": "CGI/1.1", "SERVER_NAME": "h", "SERVER_PORT": "80", "SCRIPT_NAME": "x"}
TARGETS = ["/log", "/log?type=t&a=%41", "/a%20b%C3%A9?q", "/%ZZ%e9", "*", "/?", "/p?a?b", "/\xe9"]


class EnvironTest(unittest.TestCase):
    """httpheaders.environ gives the environ pywsgi's get_environ built from the same request."""

    def assert_same_environ(self, head, address=("10.1.2.3", 4567)):
        request = parse_head(head)

        class Server:  # what get_environ asks of the server
            def get_environ(self):
                return dict(BASE_ENVIRON)

        handler = WSGIHandler.__new__(WSGIHandler)
        handler.server, handler.client_address, handler.rfile, handler.socket = Server(), address, io.BytesIO(), None
        handler.command, handler.path, handler.request_version = request.method, request.target, request.version
        handler.headers = Headers(request.headers)
        handler.content_length = request.content_length
        theirs = handler.get_environ()
        mine = httpheaders.environ(dict(BASE_ENVIRON), request, address)
        for env in (theirs, mine):
            env.pop("wsgi.input", None)
            env.pop("wsgi.input_terminated", None)
        self.assertEqual(list(mine.items()), list(theirs.items()), head)  # the same order too

    def test_a_typical_request(self):
        self.assert_same_environ(b"POST /log?x=1 HTTP/1.1\r\nHost: h:8080\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 017\r\nCookie: a=1\r\nCookie: b=2\r\nX-F: 1\r\nx-f: 2\r\n"
                                 b"X_Under: u\r\ncontent-type: second\r\nExpect: 100-continue\r\n\r\n")
        self.assert_same_environ(b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"[:16] + b"\r\n",
                                 address="unix")
        self.assert_same_environ(b"POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\nUpgrade: websocket\r\n"
                                 b"X-Obs: \xa0caf\xe9\x85\r\n\r\n")

    @settings(max_examples=300)
    @given(st.sampled_from(TARGETS), header_blocks())
    def test_generated_requests(self, target, block):
        head = b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\n" + block
        if ours(block) is not None:
            self.assert_same_environ(head)


def _fields(lines):
    """(name, value) of header lines as pywsgi reads them into environ: the value stripped (the
    strict reading drops the whitespace after a value, RFC 9112 §5; the email parser keeps it)."""
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]


def _rstrip(value):
    return value.rstrip(" \t") if isinstance(value, str) else value


if __name__ == "__main__":
    unittest.main()
