"""`GET /tail`: live events as JSON lines over HTTP, for `zcmd tail --server` (like `vector tap`).

    GET /tail                      events journaled from now on
    GET /tail?last=100             ... starting with the last 100 events
    GET /tail?type=click&topic=web only these (each parameter may repeat; values are OR-ed)
    GET /tail?type=page.*&last=5   the last 5 page events, then the new ones

`type` and `topic` are shell wildcards matched against the whole value, as `zcmd tail` and
`zcmd replay` take them (zspark/recordfilter.py). `last` counts matching events: with a filter,
the start is looked for back over at most `http.tail_max_last` records.

The stream follows the journal from inside the server (durable records only), so a client needs
no access to the journal files. It is an NDJSON body with chunked encoding that ends when the
server stops. Empty lines carry no event: one starts the stream (so the client knows it is
following), and one every few seconds while nothing comes lets the server notice a client that
went away.

A stream must never hold the server: `last` is capped (`http.tail_max_last`: a larger ask gets
that many), so are the clients at once (`http.tail_max_clients`: one more gets 503 with
Retry-After); the start is found by offset (the journal's index, not a scan), and the records
are read in small batches with a pause for the rest of the server after each. A record a filter
cannot match (its bytes do not hold any wanted literal `type` / `topic` value) is not even decoded.
"""
import time
import urllib.parse

import gevent

from ..journal import event_to_json
from ..recordfilter import RecordFilter, start_of_last
from ..safetext import json_line
from .httperrors import HttpError

KEEPALIVE_S = 5.0
WAIT_S = 0.5  # how often a quiet stream looks whether the server is stopping
BATCH = 100  # records read, filtered and written between two pauses for the rest of the server


class TailStream:
    def __init__(self, journal, stopping, max_last=10000, max_clients=16, retry_after_s=5):
        self.journal = journal
        self.stopping = stopping  # callable: True once the server is shutting down
        self.max_last = max_last
        self.max_clients = max_clients
        self.retry_after_s = retry_after_s
        self.clients = 0  # streams open now

    def answer(self, environ):
        """(200, headers, the stream) for httproutes.Router; HttpError 400 or 503."""
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        text = query.get("last", ["0"])[-1]
        if not (text.isascii() and text.isdigit()):
            raise HttpError(400, "last: expected a non-negative number of records")
        if self.clients >= self.max_clients:
            raise HttpError(503, f"{self.clients} /tail clients already, as many as may be (http.tail_max_clients); "
                                 "try again later", {"Retry-After": str(self.retry_after_s)})
        digits = text.lstrip("0")
        last = self.max_last if len(digits) > 18 else min(int(digits or "0"), self.max_last)
        wanted = RecordFilter({"type": query.get("type", ()), "topic": query.get("topic", ())})
        # Where "now" is, before the answer: what is journaled once the client hears back is new.
        return 200, [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-cache")], _Stream(
            self, self._lines(self.journal.end_offset, last, wanted))

    def _lines(self, end, last, wanted):
        reader = self.journal.reader(end)
        try:
            yield b"\n"
            reader.seek(start_of_last(reader, self.journal.first_offset, end, last, wanted, self.max_last))
            said = time.monotonic()
            while not self.stopping():
                records = reader.read(max_records=BATCH)
                if not records:
                    reader.wait(WAIT_S)
                    if time.monotonic() - said >= KEEPALIVE_S:
                        said = time.monotonic()
                        yield b"\n"
                    continue
                # A record that is not an event (the forwarders dead-letter it) is not shown.
                lines = [json_line(event_to_json(event))  # shown on terminals (curl)
                         for _, event in wanted.select(records)]
                if lines:
                    said = time.monotonic()
                    yield ("\n".join(lines) + "\n").encode("utf-8")
                else:
                    gevent.sleep(0)  # nothing to write (that would have paused): pause anyway
        finally:
            reader.close()


class _Stream:
    """The body of one stream: counts as a client from the answer until pywsgi closes it, whether
    or not it was ever iterated."""

    def __init__(self, tail, lines):
        self._tail = tail
        self._lines = lines
        tail.clients += 1

    def __iter__(self):
        return self._lines

    def close(self):
        if self._tail is not None:
            self._tail.clients -= 1
            self._tail = None
            self._lines.close()

