"""The HTTP source's own header parsing (zspark/sources/httpheaders.py) answers exactly as the
email-package parser pywsgi uses would, for every header block it takes on itself, and hands
every other block to that parser."""
import http.client
import io
import unittest

from gevent.pywsgi import OldMessage
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.hostile  # noqa: F401  (loads the hypothesis profile: derandomized in CI)
from zspark.sources.httpheaders import PlainHeaders, read_headers


def email_parsed(block):
    """What pywsgi's own headers_factory makes of `block`."""
    return http.client.parse_headers(io.BytesIO(block), _class=OldMessage)


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
        ours = read_headers(io.BytesIO(block + b"BODY"))
        theirs = email_parsed(block + b"BODY")
        self.assertEqual(ours.status, theirs.status)
        self.assertEqual(bool(ours.defects), bool(theirs.defects), block)
        self.assertEqual(list(ours.headers), list(theirs.headers), block)
        self.assertEqual(ours.typeheader, theirs.typeheader)
        for name in NAMES + ["Nope"]:
            self.assertEqual(ours.get(name), theirs.get(name), (block, name))
            self.assertEqual(ours.get(name, "dflt"), theirs.get(name, "dflt"), (block, name))
            self.assertEqual(ours.getheader(name), theirs.getheader(name), (block, name))
        for name in ("content-length", "Connection"):
            del ours[name]
            del theirs[name]
            self.assertEqual(list(ours.headers), list(theirs.headers), block)
        return ours

    def test_a_typical_request_is_parsed_without_the_email_parser(self):
        block = (b"Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
                 b"Authorization: Bearer abc\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
                 b"Cookie: a=1\r\nCookie: b=2\r\nTrailing:  spaced  \t\r\nEmpty:\r\nTight:x\r\n\r\n")
        ours = self.assert_same(block)
        self.assertIsInstance(ours, PlainHeaders)
        self.assertEqual(ours.get("x-forwarded-for"), "10.0.0.1")  # the first, as before

    def test_blocks_that_are_not_plain_go_to_the_email_parser(self):
        for block in (b"X-A: 1\r\n folded\r\n\r\n", b"X-A: caf\xe9\r\n\r\n", b"X-A: a\x0bb\r\n\r\n",
                      b"no colon here\r\nContent-Length: 5\r\n\r\n", b"X-A: 1\r\n",  # cut short
                      b"Bad Name: 1\r\n\r\n", b"X-A: 1\r\r\n\r\n", b"X-A: a\x85b\r\n\r\n"):
            ours = self.assert_same(block)
            self.assertNotIsInstance(ours, PlainHeaders, block)

    def test_the_block_ends_where_pywsgi_ends_it_and_the_body_stays_unread(self):
        fp = io.BytesIO(b"Content-Length: 4\r\n\r\nBODY")
        read_headers(fp)
        self.assertEqual(fp.read(), b"BODY")

    def test_a_line_too_long(self):
        ours = read_headers(io.BytesIO(b"X-A: " + b"a" * 70000 + b"\r\n\r\n"))
        self.assertEqual(ours.status, "Line too long")

    def test_too_many_headers_is_refused_as_before(self):
        with self.assertRaises(http.client.HTTPException):
            read_headers(io.BytesIO(b"X-A: 1\r\n" * 101 + b"\r\n"))

    @settings(max_examples=400)
    @given(header_blocks())
    def test_generated_blocks_answer_as_the_email_parser_does(self, block):
        self.assert_same(block)

