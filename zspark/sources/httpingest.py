"""The ingest endpoint, /log: events in, journaled, answered.

    GET  /log?...   one event from the query (httpevents.py)
    POST /log       a JSON object, a JSON array or NDJSON (application/x-ndjson), gzip optional
                    (httpbody.py reads it within the in-flight budget and the deadline)

A request's events are journaled whole or not at all, and answered 200 with their ids only once
they are durable (with `Prefer: return=minimal`, RFC 7240, only their count). A refusal is an HttpError: 400 with the reason (and the `index` of the bad item
of a batch), 401 (httpauth.py), 408, 413 (also a batch larger than the whole journal), 415, 503
with Retry-After when the journal is full or cannot take events, the server is stopping, or the
bodies in memory are at `http.max_inflight_bytes`. Refusals are counted in /status (rejected:
4xx but 401; refused: 503) and logged at most 10 a minute. Bad input never produces a 500.
"""
import json
import logging

import gevent

from ..ingest import BatchRejected, Received
from ..journal import JournalError, JournalFull, TooLargeForJournal
from ..metrics import RateLimitedLog
from . import fastjson, httpbody
from .httperrors import JSON, HttpError, error_body

log = logging.getLogger("zspark.http")

SOURCE = "http"
# Events in a batch above which its request lets the rest of the server run between decoding,
# validating and journaling it (each about 50 ms of the event loop for 4 MiB of small events).
_LARGE_BATCH = 5000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonlines",
                "application/x-jsonlines")
_JSON_HEADERS = [("Content-Type", JSON)]
_MINIMAL_HEADERS = _JSON_HEADERS + [("Preference-Applied", "return=minimal")]


def _prefers_minimal(header):
    """True if a Prefer header (RFC 7240) asks for `return=minimal`: the 200 then gives only the
    count of events journaled, not their ids (27 KB for a batch of 1,000)."""
    if not header:
        return False
    for preference in header.split(","):
        name, _, value = preference.partition(";")[0].partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"').lower() == "minimal":
            return True
    return False


class LogEndpoint:
    def __init__(self, config, ingest, events, tokens, stopping):
        self.config = config  # the `http` section
        self.ingest = ingest
        self.events = events  # httpevents.RequestEvents
        self.tokens = tokens  # httpauth.BearerTokens of /log
        self.stopping = stopping  # callable: True once the server is shutting down
        self.stats = ingest.metrics.source(SOURCE)
        self.budget = httpbody.InflightBudget(config.max_inflight_bytes)
        self._warn = RateLimitedLog(log)

    def routes(self, root):
        return {root + "/log": {"GET": self.get, "POST": self.post}}

    def get(self, environ):
        return self._answer(environ, self._events_from_query)

    def post(self, environ):
        return self._answer(environ, self._events_from_body)

    def _answer(self, environ, read_events):
        """(200, headers, body) once the events are journaled; HttpError otherwise."""
        # The body and the events decoded from it are held until the answer: so is their share
        # of http.max_inflight_bytes. (A body left unread, refused before or while it was read,
        # closes the connection: httpserver.RequestHandler.start_response.)
        minimal = _prefers_minimal(environ.get("HTTP_PREFER"))
        with self.budget.hold() as held:
            try:
                ids = self._journal(environ, read_events, held, not minimal)
            except BatchRejected as e:
                self._warn("HTTP %s: rejected: %s", environ.get("REMOTE_ADDR", "?"), e)
                return 400, _JSON_HEADERS, error_body(e.reason, e.index)
            except HttpError as e:
                self._count(environ.get("REMOTE_ADDR", "?"), e)
                raise
        if minimal:  # ids is their count
            return 200, _MINIMAL_HEADERS, b'{"ok":true,"count":%d}' % ids
        # Ids are hex strings: no escaping needed.
        return 200, _JSON_HEADERS, b'{"ok":true,"ids":["' + '","'.join(ids).encode() + b'"]}'

    def _journal(self, environ, read_events, held, ids=True):
        if self.stopping():
            raise HttpError(503, "the server is stopping", {**self._retry(), "Connection": "close"})
        self.tokens.check(environ)
        raws, added = read_events(environ, held)  # or a Received already (Ingest.ndjson_frames)
        if len(raws) > _LARGE_BATCH:
            gevent.sleep(0)  # decoding, validating and encoding a large batch each take tens of ms
        received = raws if type(raws) is Received else self.ingest.normalize_all(raws, SOURCE, added=added)
        if len(raws) > _LARGE_BATCH:
            gevent.sleep(0)  # the batch is still journaled whole: it is all in hand
        try:
            return self.ingest.append(received, ids)
        except TooLargeForJournal as e:  # no retry would ever fit it: not a 503
            raise HttpError(413, str(e)) from None
        except JournalFull as e:
            raise HttpError(503, str(e), self._retry()) from None
        except JournalError as e:
            raise HttpError(503, f"the journal cannot take events now: {e}", self._retry()) from None

    def _retry(self):
        return {"Retry-After": str(self.config.retry_after_s)}

    def _count(self, address, error):
        """A refused request in /status and the log (rate-limited)."""
        if error.status < 500:
            if error.status != 401:
                self.stats.reject(error.reason, error.count)
            self._warn("HTTP %s: %d %s", address, error.status, error.reason)
        else:
            self.stats.refused += 1  # requests answered 503

    def malformed(self, address, status, reason):
        """A request pywsgi refused before it reached the app: a rejection like any other."""
        self._count(address[0] if isinstance(address, tuple) else address, HttpError(status, reason))

    # -- reading requests ---------------------------------------------------------------------

    def _events_from_query(self, environ, held):
        """(events, fields each event gets where it has none): a GET's event has them already."""
        return self.events.from_query(environ), None

    def _events_from_body(self, environ, held):
        body = httpbody.read_body(environ, self.config.max_body_bytes, self.config.body_timeout_s, held,
                                  self.config.retry_after_s)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HttpError(400, f"the body is not valid UTF-8 (at byte {e.start})") from None
        added = self.events.sender_fields(environ) if self.config.post_request_fields else None
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type not in NDJSON_TYPES:
            return _parse_json(text), added
        # Events of the common kind go from the lines to BSON in compiled code, no dict built.
        received = self.ingest.ndjson_frames(body, SOURCE, added)
        if received is not None:
            return received, None
        return _parse_ndjson(body), added


def _parse_json(text):
    """The events of a JSON body (valid UTF-8): an object or an array of them."""
    # Anything but NDJSON is read as JSON: `curl -d` says form-urlencoded but sends JSON.
    value = _loads(text, "the body")
    if isinstance(value, list):
        if not value:
            raise HttpError(400, "the batch is empty")
        return value
    if isinstance(value, dict):
        return [value]
    raise HttpError(400, "the body must be a JSON object, an array of objects, or NDJSON")


def _loads(text, what):
    try:
        if text.startswith("\ufeff"):  # what json.loads says; the decoder alone would not
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except RecursionError:
        raise HttpError(400, f"{what} is nested too deeply") from None
    except ValueError as e:
        hint = " (for one event per line send Content-Type: application/x-ndjson)" if (
            "Extra data" in str(e) and what == "the body") else ""
        raise HttpError(400, f"{what} is not valid JSON: {e}{hint}") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


# Built once: json.loads with keyword arguments builds a new decoder per call, which costs more
# than decoding a small event.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN = _DECODER.scan_once


def _parse_ndjson(body):
    """The values of the lines of `body` (bytes, valid UTF-8), blank lines skipped."""
    # JSON's whitespace around a line; anything else is an error.
    lines = [line for line in [line.strip(b" \t\r") for line in body.split(b"\n")] if line]
    if not lines:
        raise HttpError(400, "the batch is empty")
    # One look at the whole body usually clears every line of numbers orjson would get wrong.
    values = fastjson.decode_all(lines, None if fastjson.may_hold_long_numbers(body) else False)
    if fastjson.NOT_DECODED in values:
        # In order: the lines before one json decides are valid (orjson decoded them).
        for index, value in enumerate(values):
            if value is fastjson.NOT_DECODED:
                try:
                    values[index] = _decode_line(lines[index].decode("utf-8"), index)
                except HttpError as e:
                    e.count = len(lines)  # refused whole, like a batch with an invalid event: all count
                    raise
    return values


def _decode_line(line, index):
    """The value of one NDJSON line by the json module; HttpError naming the line if invalid."""
    # The decoder's C scanner directly: json.loads' Python wrapper costs as much again.
    try:
        value, end = _SCAN(line, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(line):
        try:
            _loads(line, f"line {index + 1}")  # for the error message
        except HttpError as e:
            e.index = index
            raise
        raise HttpError(400, f"line {index + 1} is not valid JSON", index=index)
    return value
