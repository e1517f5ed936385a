"""Request headers for the HTTP source, parsed without the email package when they are plain.

pywsgi reads a request's headers with `http.client.parse_headers`, which hands them to the email
package's parser: a fifth of the CPU of a small keep-alive request. Almost every request's header
block is nothing but `Name: value` lines of printable ASCII; `read_headers` parses such a block
itself and gives everything else (continuation lines, control characters, non-ASCII, a block cut
short by the end of the stream) to the email parser as before. For a block it parses itself, its
answers (`get`, `headers`, deletion...) are the ones the email parser's message would give:
tests/test_http_headers.py compares the two over generated header blocks.
"""
import email.parser
import http.client
import re

from gevent.pywsgi import OldMessage

# A header line the email parser reads as one `name: value` with nothing special about it: a
# token name, then the value in printable ASCII and tabs (other control characters, \x85 among
# them, are line breaks to it), then the line end.
_PLAIN_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e]*?)\r?\n")
_END_LINES = (b"\r\n", b"\n")


def read_headers(fp):
    """pywsgi's `headers_factory`: read the header block from `fp` and return its message."""
    try:
        lines = http.client._read_headers(fp)
    except http.client.LineTooLong:
        message = OldMessage()
        message.status = "Line too long"
        return message
    pairs = _plain_pairs(lines)
    if pairs is not None:
        return PlainHeaders(pairs)
    return email.parser.Parser(_class=OldMessage).parsestr(b"".join(lines).decode("iso-8859-1"))


def _plain_pairs(lines):
    """[(name, value)] if every line but the blank last one is a plain header line, else None."""
    if lines[-1] not in _END_LINES:
        return None
    pairs = []
    match = _PLAIN_LINE.fullmatch
    for line in lines[:-1]:
        m = match(line)
        if m is None:
            return None
        pairs.append((m[1].decode("ascii"), m[2].decode("ascii")))
    return pairs


class PlainHeaders:
    """The part of pywsgi's OldMessage that pywsgi and zspark use, for a plain header block."""

    status = ""  # pywsgi: set when a line was too long
    defects = ()  # the email parser's complaints: a plain block has none

    def __init__(self, pairs):
        self._pairs = pairs

    def get(self, name, default=None):
        """The first header called `name` (in any case), as the email message answers."""
        name = name.lower()
        for key, value in self._pairs:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __delitem__(self, name):
        name = name.lower()
        self._pairs = [(key, value) for key, value in self._pairs if key.lower() != name]

    @property
    def headers(self):
        return [f"{key}: {value}\r\n" for key, value in self._pairs]

    @property
    def typeheader(self):
        return self.get("content-type")
