"""The strict reading of one HTTP/1.1 request head, from its raw bytes (RFC 9112 §2.2, §3, §5, §6).

`parse_head(head)` takes the bytes from the first byte of the request line to the empty line that
ends the head (included), and returns a `Head`: the request line, the header fields, and how the
body is framed (a length, chunked, or none). A head that breaks a rule raises `FramingError`
(status, reason): the server answers it and closes the connection, since after a framing error no
one can tell where the next request would start. Whatever parses HTTP for zspark (gevent.pywsgi
through httpserver.RequestHandler today, a C parser perhaps tomorrow) must frame requests by this
function's answer alone; tests/hostile/test_http_framing.py holds the server to it over sockets.
The common head is parsed by compiled code (zspark/_native.c, `parse_head`: see zspark/native.py),
which gives the same Head or hands the head to `_parse_head` here, the reference it is tested and
fuzzed against (tests/test_native.py): every refusal and its reason come from the Python code.

The rules, each one the strict choice where the RFC leaves one, so that no proxy in front can read
the same bytes as a different sequence of requests:
- every line ends with CRLF: a bare CR or a bare LF anywhere in the head is refused (§2.2 lets a
  recipient take a bare LF as a line end; a strict one does not);
- request-line = method SP request-target SP HTTP-version, one SP each, HTTP/1.0 or HTTP/1.1
  (no HTTP/0.9, no leading empty lines, no other whitespace);
- field-line = field-name ":" OWS field-value OWS: a token name with no whitespace before the
  colon (§5.1), a value of visible characters, obs-text, SP and HTAB (no NUL, no other control
  character: RFC 9110 §5.5), and no obs-fold (a line starting with SP or HTAB, §5.2);
- Transfer-Encoding: only as one field line whose value is `chunked` (any case), only in
  HTTP/1.1, never with Content-Length (§6.1, §6.3); anything else is refused, not guessed at;
- Content-Length: 1*DIGIT. Several values (repeated lines or a comma list, §6.3 rule 5) are
  accepted when all are the same number and refused when they differ; the app then sees one
  value, the number;
- a HEAD request with a body is refused (pywsgi's rule before, kept).
A request with neither Content-Length nor Transfer-Encoding has no body (§6.3 rule 7).
"""
import re
from dataclasses import dataclass

from .. import native
from .httperrors import HttpError

MAX_REQUEST_LINE = 8192  # pywsgi's limit: a longer request line is answered 414
MAX_HEAD_BYTES = 64 * 1024  # the whole head; more is answered 431
MAX_HEADERS = 100  # header lines (http.client's limit, which pywsgi had); more is answered 431

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/([0-9]\.[0-9])")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_FIELD_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_DIGITS = re.compile(rb"[0-9]+")
_OWS = b" \t"
VERSIONS = ("1.0", "1.1")


class FramingError(HttpError):
    """A request head that breaks a framing rule: answer `status` with `reason`, then close."""


@dataclass
class Head:
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: list  # [(name, value)], latin-1 strings, values without the OWS around them
    content_length: int | None  # None: no Content-Length (chunked, or no body)
    chunked: bool
    persistent: bool  # the connection may carry another request after this one


_compiled_parse_head = native.compiled("parse_head", None)


def parse_head(head):
    """The `Head` of `head` (bytes ending with CRLF CRLF), or FramingError naming the rule broken."""
    if _compiled_parse_head is not None:
        fields = _compiled_parse_head(head)
        if fields is not None:
            return Head(*fields)
    return _parse_head(head)


def _parse_head(head):
    """parse_head in Python: the reference, and the parser of every head the compiled one declines."""
    if len(head) > MAX_HEAD_BYTES:
        raise FramingError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
    crlfs = head.count(b"\r\n")
    if head.count(b"\r") != crlfs:
        raise FramingError(400, "a bare CR (not followed by LF) in the request head")
    if head.count(b"\n") != crlfs:
        raise FramingError(400, "a bare LF (not preceded by CR) in the request head")
    if not head.endswith(b"\r\n\r\n"):
        raise FramingError(400, "the request head does not end with an empty line (CRLF CRLF)")
    line_end = head.index(b"\r\n")
    method, target, version = _request_line(head[:line_end])
    block = head[line_end + 2:-2]  # the field lines, each with its CRLF
    if block.count(b"\r\n") > MAX_HEADERS:
        raise FramingError(431, f"more than {MAX_HEADERS} header lines")
    lines = block[:-2].split(b"\r\n") if block else []
    if _FIELD_BLOCK.fullmatch(block):  # every line well formed, checked in one go
        fields = [(name, value.strip(_OWS)) for name, _, value in (line.partition(b":") for line in lines)]
    else:
        fields = [_field_line(line) for line in lines]  # the one at fault raises, naming its rule
    names = [name.lower() for name, _ in fields]
    lengths = [value for name, (_, value) in zip(names, fields) if name == b"content-length"]
    codings = [value for name, (_, value) in zip(names, fields) if name == b"transfer-encoding"]
    content_length = None
    chunked = False
    if codings:
        if lengths:
            raise FramingError(400, "Content-Length together with Transfer-Encoding")
        if version == "1.0":
            raise FramingError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            raise FramingError(400, "Transfer-Encoding must be one field 'chunked', got "
                               f"{', '.join(_show(c) for c in codings)!r}")
        chunked = True
        fields = [(b"Transfer-Encoding", b"chunked") if name.lower() == b"transfer-encoding" else (name, value)
                  for name, value in fields]
    elif lengths:
        content_length = _content_length(lengths)
        # One field with the number, where the first one was: every reader after this sees that.
        first = next(i for i, (name, _) in enumerate(fields) if name.lower() == b"content-length")
        fields = [(name, value) for name, value in fields if name.lower() != b"content-length"]
        fields.insert(first, (b"Content-Length", str(content_length).encode()))
    if method == "HEAD" and (chunked or content_length):
        raise FramingError(400, "a HEAD request with a body")
    options = {o.strip(_OWS).lower() for name, (_, value) in zip(names, fields) if name == b"connection"
               for o in value.split(b",")} if b"connection" in names else ()
    persistent = (b"close" not in options if version == "1.1"
                  else b"keep-alive" in options and b"close" not in options)
    return Head(method, target, "HTTP/" + version,
                [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields],
                content_length, chunked, persistent)


def _request_line(line):
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise FramingError(400, f"malformed request line {_show(line)!r} (wanted: METHOD SP target SP HTTP/1.1)")
    if m[3].decode() not in VERSIONS:
        raise FramingError(400, f"unsupported HTTP version HTTP/{m[3].decode()} (HTTP/1.0 and HTTP/1.1 are served)")
    return m[1].decode("ascii"), m[2].decode("latin-1"), m[3].decode("ascii")


def _field_line(line):
    m = _FIELD_LINE.fullmatch(line)
    if m is not None:
        return m[1], m[2].strip(_OWS)
    if line[:1] in (b" ", b"\t"):
        raise FramingError(400, f"a folded header line (obs-fold) {_show(line)!r}")
    name, colon, _ = line.partition(b":")
    if not colon:
        raise FramingError(400, f"a header line is not 'Name: value': {_show(line)!r}")
    if name and name.rstrip(_OWS) != name:
        raise FramingError(400, f"whitespace between a header name and its colon: {_show(line)!r}")
    if not re.fullmatch(_TOKEN, name):
        raise FramingError(400, f"a header name that is not a token: {_show(line)!r}")
    raise FramingError(400, f"a control character in the value of header {_show(name)!r}")


# More digits than any body could have: such a length is only "too large" (int() would refuse
# one of over 4300 digits, and leading zeros are allowed however many).
_HUGE_DIGITS = 20


def _content_length(values):
    numbers = set()  # the digits without leading zeros: equal lengths, equal strings
    for value in values:
        for part in value.split(b","):
            part = part.strip(_OWS)
            if not _DIGITS.fullmatch(part):
                raise FramingError(400, f"Content-Length is not a number of bytes (digits only): {_show(value)!r}")
            numbers.add(part.lstrip(b"0") or b"0")
    if len(numbers) != 1:
        raise FramingError(400, f"differing Content-Length values: "
                                f"{', '.join(_show(n, 40) for n in sorted(numbers, key=lambda n: (len(n), n)))}")
    digits = numbers.pop()
    return int(digits) if len(digits) <= _HUGE_DIGITS else 10 ** _HUGE_DIGITS


def _show(raw, limit=200):
    """Request bytes for a reason: latin-1, cut to `limit` characters."""
    text = raw.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "..."
