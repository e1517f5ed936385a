"""HTTP framing as RFC 9112 §2.2, §5 and §6 say, over raw sockets: a request whose framing is
ambiguous (two lengths, a length and chunked, a Transfer-Encoding other than one `chunked`, a bare
CR or LF, a length that is not digits, whitespace before a colon, a folded line) gets a JSON 400,
counted as a rejection, and the connection is closed, so that the bytes after it are never read
as another request. A head that never completes is never handed to the app. One connection never
yields more answers, nor journals more events, than a strict parser would see in its bytes.

Written from the standard and from the attacks of issue 10, not from the parser: whatever parses
HTTP for zspark must pass them.
"""
import json
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile.test_http import parse_answers
from tests.test_http import HttpCase

SMUGGLED = b"GET /log?type=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def post(body, *headers, version=b"HTTP/1.1"):
    """A POST /log request with exactly these header lines (raw bytes), and `body` after its head."""
    head = b"POST /log " + version + b"\r\nHost: zspark\r\nContent-Type: application/json\r\n"
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def event(type_):
    return json.dumps({"type": type_}).encode()


def chunked(body, size=5):
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


class FramingCase(HttpCase):
    # Long enough that a connection the server keeps is told apart from one it closes.
    http_settings = {"idle_timeout_s": 60}

    def exchange(self, wire, close_write=False, quiet=3.0):
        """Send `wire` on a new connection; read until the server closes it or `quiet` seconds
        pass without a byte. ([(status, headers, body)], whether the server closed it)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=quiet) as sock:
            sock.sendall(wire)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
            data, closed = b"", False
            while True:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                data += chunk
        return parse_answers(data), closed

    def assert_refused_and_closed(self, wire, reason=None, status=400):
        """One JSON `status` answer, the connection closed, one rejection counted, nothing journaled."""
        before = self.http_counts()
        journaled = len(self.events())
        answers, closed = self.exchange(wire)
        self.assertEqual([a[0] for a in answers], [status], (wire, answers))
        self.assertEqual(answers[0][1].get("connection"), "close")
        answer = json.loads(answers[0][2])
        self.assertIs(answer["ok"], False)
        if reason:
            self.assertIn(reason, answer["error"])
        self.assertTrue(closed, f"the connection stayed open after a {status}: {wire!r}")
        self.assertEqual(self.http_counts(), (before[0], before[1] + 1))
        self.assertEqual(len(self.events()), journaled, "a refused request journaled something")
        return answer

    def types(self):
        return [e["type"] for e in self.events()]


class IssueAttacksTest(FramingCase):
    """The attacks issue 10's probe made, each of which pywsgi had accepted."""

    def test_two_different_content_lengths(self):
        first, second = event("first"), b"GET /log?type=second HTTP/1.1\r\nHost: x\r\n\r\n"
        wire = post(first + second, b"Content-Length: %d" % len(first),
                    b"Content-Length: %d" % (len(first) + len(second)))
        self.assert_refused_and_closed(wire, "differing Content-Length")
        self.assertEqual(self.types(), [])

    def test_a_second_transfer_encoding_cannot_smuggle_a_request(self):
        wire = post(SMUGGLED, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
                    b"Content-Length: %d" % len(SMUGGLED))
        self.assert_refused_and_closed(wire)
        wire = post(SMUGGLED, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity")
        self.assert_refused_and_closed(wire, "Transfer-Encoding")
        self.assertNotIn("smuggled", self.types())

    def test_a_bare_cr_does_not_end_a_header_line(self):
        body = event("hidden")
        wire = post(body + SMUGGLED, b"X-Pad: a\rContent-Length: %d" % len(body))
        self.assert_refused_and_closed(wire, "bare CR")
        self.assertEqual(self.types(), [])

    def test_content_length_with_transfer_encoding_is_refused_and_closed(self):
        body = chunked(event("chunked")) + SMUGGLED
        wire = post(body, b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked")
        self.assert_refused_and_closed(wire, "Content-Length together with Transfer-Encoding")
        wire = post(body, b"Transfer-Encoding: chunked", b"Content-Length: 3")
        self.assert_refused_and_closed(wire, "Content-Length together with Transfer-Encoding")
        self.assertEqual(self.types(), [])

    def test_signed_and_underscored_lengths(self):
        body = event("eighteen_bytes_x")
        for value in (b"+%d" % len(body), b"%d_%d" % divmod(len(body), 10)):
            self.assert_refused_and_closed(post(body, b"Content-Length: " + value), "digits only")
        self.assertEqual(self.types(), [])

    def test_a_head_cut_off_is_never_journaled(self):
        for wire in (b"GET /log?type=cut HTTP/1.1\r\nHost: x\r\n",
                     b"GET /log?type=cut HTTP/1.1\r\nHost: x\r\n\r",
                     b"GET /log?type=cut HTTP/1.1",
                     b"POST /log HTTP/1.1\r\nContent-Length: 14\r\n" + event("cut")):
            answers, closed = self.exchange(wire, close_write=True)
            self.assertEqual(answers, [], wire)
            self.assertTrue(closed)
        self.assertEqual(self.types(), [])
        self.assertEqual(self.http_counts(), (0, 0))


class RulesTest(FramingCase):
    """One case per rule, and the cases each rule must still let through."""

    def test_content_length_must_be_digits(self):
        for value in (b"+18", b"1_8", b"0x12", b"18.0", b"", b"-1", b"1 8", b"\xb2", b"18;", b"1e1"):
            self.assert_refused_and_closed(post(b"", b"Content-Length: " + value), "digits only")

    def test_content_length_with_whitespace_around_and_identical_repeats_is_taken(self):
        body = event("ows")
        n = b"%d" % len(body)
        for headers in ([b"Content-Length:  " + n + b" \t"], [b"Content-Length: " + n, b"content-length: " + n],
                        [b"Content-Length: " + n + b", " + n], [b"Content-Length: 00" + n]):
            answers, _ = self.exchange(post(body, *headers, b"Connection: close"))
            self.assertEqual([a[0] for a in answers], [200], headers)
        self.assertEqual(self.types(), ["ows"] * 4)

    def test_differing_lengths_in_a_list(self):
        self.assert_refused_and_closed(post(b"{}", b"Content-Length: 2, 3"), "differing Content-Length")

    def test_transfer_encoding_other_than_one_chunked(self):
        body = chunked(event("te"))
        for headers in ([b"Transfer-Encoding: gzip, chunked"], [b"Transfer-Encoding: chunked, chunked"],
                        [b"Transfer-Encoding: identity"], [b"Transfer-Encoding: gzip"], [b"Transfer-Encoding:"],
                        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                        [b"Transfer-Encoding: chunked\x0b"], [b"Transfer-Encoding : chunked"]):
            self.assert_refused_and_closed(post(body, *headers))
        self.assert_refused_and_closed(post(body, b"Transfer-Encoding: chunked", version=b"HTTP/1.0"), "HTTP/1.0")
        self.assertEqual(self.types(), [])

    def test_chunked_in_any_case_with_whitespace_around_is_taken(self):
        for value in (b"chunked", b"Chunked", b"  CHUNKED\t"):
            answers, _ = self.exchange(post(chunked(event("te")), b"Transfer-Encoding: " + value, b"Connection: close"))
            self.assertEqual([a[0] for a in answers], [200], value)
        self.assertEqual(self.types(), ["te"] * 3)

    def test_bare_cr_or_lf_anywhere_in_the_head(self):
        for wire in (b"GET /log?type=cr\r HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /log?type=cr HTTP/1.1\r\nHost: x\r\r\n\r\n",
                     b"GET /log?type=cr HTTP/1.1\r\nX-A: 1\r\rHost: x\r\n\r\n",
                     b"GET /log?type=lf HTTP/1.1\nHost: x\n\n",
                     b"GET /log?type=lf HTTP/1.1\r\nX-A: 1\nContent-Length: 0\r\n\r\n",
                     b"GET /log?type=lf HTTP/1.1\r\nHost: x\r\n\n"):
            self.assert_refused_and_closed(wire, "bare")
        self.assertEqual(self.types(), [])

    def test_whitespace_between_a_header_name_and_its_colon(self):
        body = event("ws")
        for name in (b"Content-Length ", b"Content-Length\t"):
            self.assert_refused_and_closed(post(body, name + b": %d" % len(body)), "whitespace between")

    def test_folded_header_lines(self):
        body = event("fold")
        self.assert_refused_and_closed(post(body, b"X-A: 1", b" Content-Length: %d" % len(body)), "obs-fold")
        self.assert_refused_and_closed(post(body, b"Content-Length:", b"\t%d" % len(body)), "obs-fold")
        self.assert_refused_and_closed(b"GET /log?type=fold HTTP/1.1\r\n Host: x\r\n\r\n", "obs-fold")

    def test_control_characters_in_a_value_and_odd_request_lines(self):
        for wire in (b"GET /log?type=nul HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
                     b"GET  /log?type=x HTTP/1.1\r\n\r\n", b"GET /log?type=x  HTTP/1.1\r\n\r\n",
                     b"GET\t/log?type=x HTTP/1.1\r\n\r\n", b"GET /log?type=x\r\n\r\n",
                     b"GET /log?type=x HTTP/1.1 \r\n\r\n", b"\r\nGET /log?type=x HTTP/1.1\r\n\r\n"):
            self.assert_refused_and_closed(wire)
        self.assertEqual(self.types(), [])

    def test_a_body_is_consumed_exactly_and_the_next_request_follows(self):
        one, two = event("one"), event("two")
        wire = (post(one, b"Content-Length: %d" % len(one)) + post(chunked(two), b"Transfer-Encoding: chunked")
                + b"GET /log?type=three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers, closed = self.exchange(wire)
        self.assertEqual([a[0] for a in answers], [200, 200, 200])
        self.assertTrue(closed)
        self.assertEqual(self.types(), ["one", "two", "three"])

    def test_nothing_after_a_framing_error_is_read_as_a_request(self):
        good = event("good")
        wire = (post(good, b"Content-Length: %d" % len(good)) + post(b"{}", b"Content-Length: 2", b"Content-Length: 3")
                + b"GET /log?type=after HTTP/1.1\r\nHost: x\r\n\r\n")
        answers, closed = self.exchange(wire)
        self.assertEqual([a[0] for a in answers], [200, 400])
        self.assertTrue(closed)
        self.assertEqual(self.types(), ["good"])

    def test_a_valid_keep_alive_connection_stays_open(self):
        answers, closed = self.exchange(b"GET /imok HTTP/1.1\r\nHost: x\r\n\r\n", quiet=1.0)
        self.assertEqual([a[0] for a in answers], [200])
        self.assertFalse(closed)


# -- property: a sequence of requests with random framing on one connection ----------------------

def _valid(kind, type_):
    body = event(type_)
    if kind == "get":
        return b"GET /log?type=" + type_.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == "length":
        return post(body, b"Content-Length: %d" % len(body))
    if kind == "length-twice":
        return post(body, b"Content-Length: %d" % len(body), b"Content-Length: %d" % len(body))
    return post(chunked(body, 3), b"Transfer-Encoding: chunked")


def _invalid(kind, type_):
    """A request a strict parser refuses; its body is followed by a request that a parser
    misreading the framing would see."""
    body = event(type_)
    n = len(body)
    after = body + SMUGGLED
    return {
        "two-lengths": lambda: post(after, b"Content-Length: %d" % n, b"Content-Length: %d" % len(after)),
        "length-and-chunked": lambda: post(chunked(body) + SMUGGLED, b"Transfer-Encoding: chunked",
                                           b"Content-Length: %d" % len(chunked(body))),
        "two-codings": lambda: post(chunked(body) + SMUGGLED, b"Transfer-Encoding: chunked",
                                    b"Transfer-Encoding: identity"),
        "coding-list": lambda: post(chunked(body) + SMUGGLED, b"Transfer-Encoding: gzip, chunked"),
        "bare-cr": lambda: post(after, b"X-Pad: a\rContent-Length: %d" % n),
        "bare-lf": lambda: post(after, b"X-Pad: a\nContent-Length: %d" % n),
        "signed-length": lambda: post(after, b"Content-Length: +%d" % n),
        "space-before-colon": lambda: post(after, b"Content-Length : %d" % n),
        "folded": lambda: post(after, b"X-Pad: a", b" Content-Length: %d" % n),
    }[kind]()


VALID = ["get", "length", "length-twice", "chunked"]
INVALID = ["two-lengths", "length-and-chunked", "two-codings", "coding-list", "bare-cr", "bare-lf",
           "signed-length", "space-before-colon", "folded"]


class SequenceTest(FramingCase):
    examples = 0

    @settings(max_examples=60)
    @given(st.lists(st.sampled_from(VALID + INVALID), min_size=1, max_size=6))
    def test_never_more_answers_or_events_than_a_strict_parser_sees(self, kinds):
        SequenceTest.examples += 1
        tag = f"s{SequenceTest.examples}"
        wire, strict_types, strict_answers, refused = b"", [], 0, 0
        for i, kind in enumerate(kinds + ["last"]):
            type_ = f"{tag}-{i}"
            if kind == "last":  # ends the connection, when a strict parser gets this far
                wire += b"GET /log?type=" + type_.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            else:
                wire += _valid(kind, type_) if kind in VALID else _invalid(kind, type_)
            if not refused:  # what a strict parser sees: every request up to the first refused one
                strict_answers += 1
                if kind in INVALID:
                    refused = 1
                else:
                    strict_types.append(type_)
        accepted, rejected = self.http_counts()
        answers, closed = self.exchange(wire)
        self.assertTrue(closed)
        self.assertLessEqual(len(answers), strict_answers, (kinds, [a[0] for a in answers]))
        self.assertEqual([a[0] for a in answers], [200] * (strict_answers - refused) + [400] * refused)
        self.assertEqual([t for t in self.types() if t.startswith(tag + "-")], strict_types, kinds)
        self.assertNotIn("smuggled", self.types())
        self.assertEqual(self.http_counts(), (accepted + len(strict_types), rejected + refused))
