"""`GET /tail`: live events as JSON lines over HTTP, for `zcmd tail --server` (like `vector tap`).

    GET /tail                      events journaled from now on
    GET /tail?last=100             ... starting with the last 100 records
    GET /tail?type=click&topic=web only these (each parameter may repeat; values are OR-ed)

The stream follows the journal from inside the server (durable records only), so a client needs
no access to the journal files. It is an NDJSON body with chunked encoding that ends when the
server stops. Empty lines carry no event: one starts the stream (so the client knows it is
following), and one every few seconds while nothing comes lets the server notice a client that
went away.
"""
import time
import urllib.parse

from ..journal import decode_event, event_to_json
from ..safetext import json_line

KEEPALIVE_S = 5.0
WAIT_S = 0.5  # how often a quiet stream looks whether the server is stopping


class TailStream:
    def __init__(self, journal, stopping):
        self.journal = journal
        self.stopping = stopping  # callable: True once the server is shutting down

    def wsgi(self, environ, start_response):
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            last = int(query.get("last", ["0"])[-1])
            if last < 0:
                raise ValueError
        except ValueError:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [b'{"ok":false,"error":"last: expected a non-negative number of records"}']
        start = max(self.journal.first_offset, self.journal.end_offset - last)
        start_response("200 OK", [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-cache")])
        return self._lines(start, set(query.get("type", ())), set(query.get("topic", ())))

    def _lines(self, start, types, topics):
        reader = self.journal.reader(start)
        try:
            yield b"\n"
            said = time.monotonic()
            while not self.stopping():
                records = reader.read()
                if not records:
                    reader.wait(WAIT_S)
                    if time.monotonic() - said >= KEEPALIVE_S:
                        said = time.monotonic()
                        yield b"\n"
                    continue
                lines = []
                for _, payload in records:
                    try:
                        event = decode_event(payload)
                    except Exception:  # not an event (the forwarders dead-letter it): not shown
                        continue
                    if (types and event.get("type") not in types) or (topics and event.get("topic") not in topics):
                        continue
                    lines.append(json_line(event_to_json(event)))  # shown on terminals (curl)
                if lines:
                    said = time.monotonic()
                    yield ("\n".join(lines) + "\n").encode("utf-8")
        finally:
            reader.close()
