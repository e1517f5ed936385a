"""The admin routes: the server's own state, for load balancers, operators and monitoring.

    GET  /imok     "imok" (text/plain), open to all; HEAD too
    GET  /status   JSON counters (the server's status()); HEAD too
    GET  /metrics  the same state in the Prometheus text format; HEAD too
    GET  /tail     live events as JSON lines (tap.py)

/status, /metrics and /tail are behind the status group's bearer tokens (httpauth.py); a request
refused for want of one is logged, at most 10 a minute.
"""
import logging

from ..metrics import RateLimitedLog
from .httperrors import JSON, HttpError, dumps

log = logging.getLogger("zspark.http")

_IMOK = (200, [("Content-Type", "text/plain")], b"imok")


class AdminRoutes:
    def __init__(self, tokens, status_provider, metrics_provider, tail):
        self.tokens = tokens  # httpauth.BearerTokens of the status group
        self.status_provider = status_provider  # () -> the /status dict
        self.metrics_provider = metrics_provider  # () -> (body bytes, content type), or None
        self.tail = tail  # tap.TailStream
        self._warn = RateLimitedLog(log)

    def routes(self, root):
        routes = {root + "/imok": {"GET": self.imok, "HEAD": self.imok},
                  root + "/status": {"GET": self.status, "HEAD": self.status},
                  root + "/tail": {"GET": self.tail_stream}}
        if self.metrics_provider is not None:
            routes[root + "/metrics"] = {"GET": self.metrics, "HEAD": self.metrics}
        return routes

    @staticmethod
    def imok(environ):
        return _IMOK

    def status(self, environ):
        self._authorize(environ)
        return 200, [("Content-Type", JSON)], dumps(self.status_provider())

    def metrics(self, environ):
        self._authorize(environ)
        body, content_type = self.metrics_provider()
        return 200, [("Content-Type", content_type)], body

    def tail_stream(self, environ):
        self._authorize(environ)
        return self.tail.answer(environ)

    def _authorize(self, environ):
        try:
            self.tokens.check(environ)
        except HttpError as e:
            self._warn("HTTP %s: %d %s on %s", environ.get("REMOTE_ADDR", "?"), e.status, e.reason,
                       environ.get("PATH_INFO", "?"))
            raise
