"""HTTP error answers: the one error type and the one JSON writer for them.

Whatever refuses a request raises `HttpError(status, reason, headers, index, count)` (the router,
the ingest endpoint, body reading, the strict head parser, /tail), and every error answer's body
is `error_body()`: compact JSON `{"ok":false,"error":REASON}`, with `"index":N` when the refusal
names an item of a batch. `status_line()` gives the status line's reason phrase from the standard
library (http.HTTPStatus).
"""
import json
from http import HTTPStatus

from ..errors import ZsparkError

JSON = "application/json"
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(**kw) builds one per call
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class HttpError(ZsparkError):
    """An HTTP error answer: status, reason, extra headers (a dict). `index`: the item of a batch
    it refuses, if one; `count`: the events it rejects (every item of a batch refused for one of
    them, else one request)."""

    def __init__(self, status, reason, headers=None, index=None, count=1):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.index = index
        self.count = count


def status_line(code):
    """`'404 Not Found'`: the status line's status and reason phrase."""
    line = _STATUS_LINES.get(code)
    return line if line is not None else f"{code} Unknown"


def dumps(value):
    """`value` as compact JSON bytes (the encoding of every JSON answer)."""
    return _ENCODER.encode(value).encode("utf-8")


def error_body(reason, index=None):
    """The body of an error answer."""
    body = {"ok": False, "error": reason}
    if index is not None:
        body["index"] = index
    return dumps(body)


def error_answer(error):
    """(status, headers list, body) of the answer to `error`, an HttpError."""
    return error.status, [("Content-Type", JSON), *error.headers.items()], error_body(error.reason, error.index)


def respond(start_response, status, headers, body):
    """Answer with `body` (bytes) through WSGI's `start_response`, Content-Length added."""
    start_response(status_line(status), [*headers, ("Content-Length", str(len(body)))])
    return [body]
