"""The HTTP source: Bottle routes served by gevent.pywsgi.

    GET  /log?type=&level=&topic=&env=&ver=&stimestamp=&ip=&...   Sparkngin's form; other
         parameters land in `context`; ip, referrer, user agent and cookies come from the request
    POST /log    a JSON object, a JSON array or NDJSON (application/x-ndjson), gzip optional;
                 a batch is journaled whole or not at all
    GET  /imok   "imok"
    GET  /status JSON counters
    GET  /metrics the same state in the Prometheus text format
    GET  /tail   live events as JSON lines (sources/tap.py)

With `http.certfile` and `http.keyfile` it serves HTTPS. `http.tokens` guard /log;
`http.status_tokens` (else the same tokens) guard /status, /metrics and /tail; /imok is open.

Every answer is JSON except /imok, /metrics and /tail. 200 only once the events are durable; 400
with the reason and the index of the bad item; 401 without a valid bearer token where tokens
are configured; 405, 408 (the body took longer than `http.body_timeout_s`), 413 (also after
gunzip), 503 + Retry-After when the journal is full, the server stopping, or the bodies in memory
at the limit (`http.max_inflight_bytes`; httpbody.py reads bodies). Bad input never produces a 500.
"""
import hmac
import ipaddress
import json
import logging
import ssl
import time
import urllib.parse

import bottle
import gevent
from gevent.pool import Pool

from ..event import InvalidEvent, from_query
from ..ingest import BatchRejected
from ..journal import JournalError, JournalFull, TooLargeForJournal
from ..metrics import RateLimitedLog
from . import fastjson, httpbody
from .httpserver import ErrorLog, Server
from .tap import TailStream

log = logging.getLogger("zspark.http")

SOURCE = "http"
# Events in a batch above which its request lets the rest of the server run between decoding,
# validating and journaling it (each about 50 ms of the event loop for 4 MiB of small events).
_LARGE_BATCH = 5000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonlines",
                "application/x-jsonlines")


class TlsError(Exception):
    """The certificate or key for HTTPS cannot be used; the message names the config keys."""


class Refusal(Exception):
    """An HTTP error answer: status, reason, extra headers; `count`: the events it rejects (every
    item of a batch refused for its item `index`, else one request)."""

    def __init__(self, status, reason, headers=None, index=None, count=1):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.index = index
        self.count = count


def json_response(status, body, headers=None):
    return bottle.HTTPResponse(_ENCODER.encode(body), status,
                               {"Content-Type": "application/json", **(headers or {})})


class HttpSource:
    def __init__(self, config, ingest, status_provider, stopping, metrics_provider=None):
        self.config = config.http
        self.ingest = ingest
        self.status_provider = status_provider
        self.metrics_provider = metrics_provider  # () -> (body bytes, content type), or None
        self.stopping = stopping  # callable: True once the server is shutting down
        self.stats = ingest.metrics.source(SOURCE)
        self._warn = RateLimitedLog(log)
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in self.config.trusted_proxies]
        self.set_tokens(self.config.tokens, self.config.status_tokens)
        self.tail = TailStream(ingest.journal, stopping, self.config.tail_max_last, self.config.tail_max_clients,
                               self.config.retry_after_s)
        self.budget = httpbody.InflightBudget(self.config.max_inflight_bytes)
        self.app = self._build_app()
        self.server = None
        self._in_flight = 0  # requests being answered now (a stop waits for them)

    def set_tokens(self, tokens, status_tokens):
        """The bearer tokens of /log, and of /status, /metrics and /tail (else the same); also
        while serving (SIGHUP: zspark/reload.py)."""
        self._tokens = [t.encode() for t in tokens]
        self._status_tokens = [t.encode() for t in status_tokens] or self._tokens

    # -- serving ------------------------------------------------------------------------------

    def start(self):
        """Listen and serve; raise OSError (the port) or TlsError (the certificate)."""
        tls = {"ssl_context": self._tls_context()} if self.config.certfile else {}
        c = self.config
        self.server = Server((c.host, c.port), self.wsgi, spawn=Pool(), log=None, error_log=ErrorLog(),
                             idle_timeout=c.idle_timeout_s, header_timeout=c.header_timeout_s,
                             tls_handshake_timeout=c.tls_handshake_timeout_s, max_connections=c.max_connections,
                             imok_path=self._log_path[:-len("log")] + "imok", retry_after_s=c.retry_after_s,
                             on_malformed=self._malformed, **tls)
        # /status sources.http: connections, timeouts..., and the bodies held in memory
        self.stats.details = lambda: {**self.server.connection_stats(), "inflight_bytes": self.budget.used,
                                      "inflight_peak_bytes": self.budget.peak}
        self.server.start()
        log.info("HTTP listening on %s://%s:%d%s/log", "https" if tls else "http", self.config.host,
                 self.address[1], self.config.root)

    def _tls_context(self):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.certfile, self.config.keyfile)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"cannot use the certificate {self.config.certfile} with the key "
                           f"{self.config.keyfile} (config keys http.certfile, http.keyfile): "
                           f"{getattr(e, 'strerror', None) or e}") from None
        return context

    @property
    def address(self):
        return self.server.address

    def stop(self, timeout):
        """Stop accepting, let requests in flight finish (up to `timeout` seconds), then close
        the connections that are left (idle keep-alives)."""
        if self.server is None:
            return
        self.server.close()
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self._in_flight:
            log.warning("HTTP: %d request(s) still in flight after %.0fs; closing them unanswered",
                        self._in_flight, timeout)
        self.server.stop(timeout=0)

    # -- the app ------------------------------------------------------------------------------

    def wsgi(self, environ, start_response):
        """The WSGI entry: GET and POST /log, the hot path, are answered here directly (Bottle's
        routing and response objects cost more than the rest of a small request); everything
        else goes through the Bottle app."""
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") == self._log_path and method in ("GET", "POST"):
            read = self._events_from_body if method == "POST" else self._events_from_query
            try:
                answer = self._handle(environ, read)
            except Exception:
                log.exception("HTTP handler failed on %s %s", method, self._log_path)
                answer = 500, {}, b'{"ok":false,"error":"internal error"}'
            return self._respond(start_response, answer)
        if environ.get("PATH_INFO") == self._tail_path and method == "GET":
            refusal = self._refusal(environ, self._status_tokens)
            if refusal is not None:
                return self._respond(start_response, (refusal.status, refusal.headers,
                                                      _dumps({"ok": False, "error": refusal.reason})))
            return self.tail.wsgi(environ, start_response)
        return self.app(environ, start_response)

    @staticmethod
    def _respond(start_response, answer):
        status, headers, body = answer
        start_response(_STATUS_LINES[status], [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body))), *headers.items()])
        return [body]

    def _build_app(self):
        app = bottle.Bottle(catchall=True, autojson=False)
        root = "/" + self.config.root.strip("/") if self.config.root.strip("/") else ""
        self._log_path = root + "/log"
        self._tail_path = root + "/tail"
        # GET and POST /log are answered by wsgi() before Bottle; these routes make Bottle's
        # 405 list them in Allow and refuse HEAD (which Bottle would route to GET).
        app.route(root + "/log", ["GET", "POST"], self._head_log)
        app.route(root + "/tail", "GET", lambda: json_response(405, {"ok": False, "error": "method not allowed"},
                                                               {"Allow": "GET"}))  # HEAD only
        app.route(root + "/imok", ["GET", "HEAD"], lambda: _text("imok"))
        app.route(root + "/status", "GET",
                  self._read_only(lambda: json_response(200, self.status_provider())))
        if self.metrics_provider is not None:
            app.route(root + "/metrics", "GET", self._read_only(self._metrics))
        for code, reason in ((404, "not found"), (405, "method not allowed")):
            app.error(code)(self._error_page(code, reason))
        app.error(500)(self._internal_error)
        return app

    def _error_page(self, code, reason):
        def page(error):
            bottle.response.content_type = "application/json"
            if code == 405:
                bottle.response.set_header("Allow", error.headers.get("Allow", "GET, POST"))
            return json.dumps({"ok": False, "error": reason})
        return page

    def _internal_error(self, error):
        exc = error.exception
        log.error("HTTP handler failed on %s %s: %s", bottle.request.method, bottle.request.path, exc,
                  exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None)
        bottle.response.content_type = "application/json"
        return json.dumps({"ok": False, "error": "internal error"})

    def _read_only(self, answer):
        """A Bottle route for the status group (/status, /metrics): behind `status_tokens`."""
        def route():
            refusal = self._refusal(bottle.request.environ, self._status_tokens)
            if refusal is not None:
                return json_response(refusal.status, {"ok": False, "error": refusal.reason}, refusal.headers)
            return answer()
        return route

    def _refusal(self, environ, tokens):
        """The 401 to answer (logged, rate-limited) unless the request carries one of `tokens`."""
        try:
            self._authorize(environ, tokens)
            return None
        except Refusal as e:
            self._warn("HTTP %s: %d %s on %s", environ.get("REMOTE_ADDR", "?"), e.status, e.reason,
                       environ.get("PATH_INFO", "?"))
            return e

    def _metrics(self):
        body, content_type = self.metrics_provider()
        return bottle.HTTPResponse(body, 200, {"Content-Type": content_type})

    def _head_log(self):
        # Only HEAD reaches Bottle on /log (wsgi() answers GET and POST): a probe must not log.
        return json_response(405, {"ok": False, "error": "method not allowed"}, {"Allow": "GET, POST"})

    def _handle(self, environ, read_events):
        """Answer GET or POST /log: (status, headers, JSON body bytes)."""
        self._in_flight += 1
        try:
            return self._answer(environ, read_events)
        finally:
            self._in_flight -= 1

    def _answer(self, environ, read_events):
        # The body and the events decoded from it are held until the answer: so is their share
        # of http.max_inflight_bytes.
        # (A body left unread, refused before or while it was read, closes the connection:
        # httpserver.RequestHandler.start_response.)
        with self.budget.hold() as held:
            return self._answer_holding(environ, read_events, held)

    def _answer_holding(self, environ, read_events, held):
        try:
            if self.stopping():
                raise Refusal(503, "the server is stopping", {"Retry-After": str(self.config.retry_after_s),
                                                                "Connection": "close"})
            self._authorize(environ, self._tokens)
            raws = read_events(environ, held)
            if len(raws) > _LARGE_BATCH:
                gevent.sleep(0)  # decoding, validating and encoding a large batch each take tens of ms
            received = self.ingest.normalize_all(raws, SOURCE)
            if len(raws) > _LARGE_BATCH:
                gevent.sleep(0)  # the batch is still journaled whole: it is all in hand
            try:
                ids = self.ingest.append(received)
            except TooLargeForJournal as e:  # no retry would ever fit it: not a 503
                raise Refusal(413, str(e)) from None
            except JournalFull as e:
                raise Refusal(503, str(e), {"Retry-After": str(self.config.retry_after_s)}) from None
            except JournalError as e:
                raise Refusal(503, f"the journal cannot take events now: {e}",
                              {"Retry-After": str(self.config.retry_after_s)}) from None
        except BatchRejected as e:
            self._warn("HTTP %s: rejected: %s", environ.get("REMOTE_ADDR", "?"), e)
            return 400, {}, _dumps({"ok": False, "error": e.reason, "index": e.index})
        except Refusal as e:
            if e.status < 500:
                if e.status != 401:
                    self.stats.reject(e.reason, e.count)
                self._warn("HTTP %s: %d %s", environ.get("REMOTE_ADDR", "?"), e.status, e.reason)
            else:
                self.stats.refused += 1  # requests answered 503
            body = {"ok": False, "error": e.reason}
            if e.index is not None:
                body["index"] = e.index
            return e.status, e.headers, _dumps(body)
        # Ids are hex strings: no escaping needed.
        return 200, {}, b'{"ok":true,"ids":["' + '","'.join(ids).encode() + b'"]}'

    def _malformed(self, address, status, reason):
        """A request pywsgi refused before it reached the app: a rejection like any other."""
        self.stats.reject(reason)
        self._warn("HTTP %s: %d %s", address[0] if isinstance(address, tuple) else address, status, reason)

    @staticmethod
    def _authorize(environ, tokens):
        if not tokens:
            return
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token:
            given = token.strip().encode()
            # Compare against every token so the time taken does not tell which one came close.
            matched = False
            for expected in tokens:
                matched |= hmac.compare_digest(given, expected)
            if matched:
                return
        raise Refusal(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                      {"WWW-Authenticate": 'Bearer realm="zspark"'})

    # -- reading requests ---------------------------------------------------------------------

    def _events_from_query(self, environ, held=None):
        try:
            raw_qs = environ.get("QUERY_STRING", "").encode("latin-1").decode("utf-8")
            pairs = urllib.parse.parse_qsl(raw_qs, keep_blank_values=True, errors="strict")
        except (UnicodeError, ValueError):
            raise Refusal(400, "the query string is not valid UTF-8") from None
        try:
            event = from_query(pairs, self.ingest.limits)  # the fields, and context (event.py)
        except InvalidEvent as e:
            raise Refusal(400, str(e)) from None
        event.setdefault("ip", self._client_ip(environ))
        # The raw latin-1 strings from environ: bottle's request.headers decodes them as strict
        # UTF-8 and raises on anything else.
        if environ.get("HTTP_REFERER"):
            event["referrer"] = _header_text(environ["HTTP_REFERER"])
        if environ.get("HTTP_USER_AGENT"):
            event["user_agent"] = _header_text(environ["HTTP_USER_AGENT"])
        cookies = _parse_cookies(environ.get("HTTP_COOKIE", ""))
        if cookies:
            event["cookies"] = cookies
        return [event]

    def _events_from_body(self, environ, held):
        body = self._read_body(environ, held)
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Refusal(400, f"the body is not valid UTF-8 (at byte {e.start})") from None
        if content_type in NDJSON_TYPES:
            return _parse_ndjson(body)
        # Anything else is read as JSON: `curl -d` says form-urlencoded but sends JSON.
        value = _loads(text, "the body")
        if isinstance(value, list):
            if not value:
                raise Refusal(400, "the batch is empty")
            return value
        if isinstance(value, dict):
            return [value]
        raise Refusal(400, "the body must be a JSON object, an array of objects, or NDJSON")

    def _read_body(self, environ, held):
        try:
            return httpbody.read_body(environ, self.config.max_body_bytes, self.config.body_timeout_s, held,
                                      self.config.retry_after_s)
        except httpbody.BodyError as e:
            raise Refusal(e.status, e.reason, e.headers) from None

    def _client_ip(self, environ):
        peer = environ.get("REMOTE_ADDR", "")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded or not self._is_trusted(peer):
            return peer
        # The rightmost address not of a trusted proxy is the client's.
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._is_trusted(hop):
                return hop
        return peer

    def _is_trusted(self, address):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)


def _loads(text, what):
    try:
        if text.startswith("\ufeff"):  # what json.loads says; the decoder alone would not
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except RecursionError:
        raise Refusal(400, f"{what} is nested too deeply") from None
    except ValueError as e:
        hint = " (for one event per line send Content-Type: application/x-ndjson)" if (
            "Extra data" in str(e) and what == "the body") else ""
        raise Refusal(400, f"{what} is not valid JSON: {e}{hint}") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


# Built once: json.loads/json.dumps with keyword arguments build a new decoder/encoder per call,
# which cost more than decoding a small event.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_SCAN = _DECODER.scan_once
_STATUS_LINES = {code: f"{code} {reason}" for code, reason in bottle.HTTP_CODES.items()}


def _dumps(value):
    return _ENCODER.encode(value).encode("utf-8")


def _parse_ndjson(body):
    """The values of the lines of `body` (bytes, valid UTF-8), blank lines skipped."""
    # JSON's whitespace around a line; anything else is an error.
    lines = [line for line in [line.strip(b" \t\r") for line in body.split(b"\n")] if line]
    if not lines:
        raise Refusal(400, "the batch is empty")
    # One look at the whole body usually clears every line of numbers orjson would get wrong.
    values = fastjson.decode_all(lines, None if fastjson.may_hold_long_numbers(body) else False)
    if fastjson.NOT_DECODED in values:
        # In order: the lines before one json decides are valid (orjson decoded them).
        for index, value in enumerate(values):
            if value is fastjson.NOT_DECODED:
                try:
                    values[index] = _decode_line(lines[index].decode("utf-8"), index)
                except Refusal as e:
                    e.count = len(lines)  # refused whole, like a batch with an invalid event: all count
                    raise
    return values


def _decode_line(line, index):
    """The value of one NDJSON line by the json module; Refusal naming the line if invalid."""
    # The decoder's C scanner directly: json.loads' Python wrapper costs as much again.
    try:
        value, end = _SCAN(line, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(line):
        try:
            _loads(line, f"line {index + 1}")  # for the error message
        except Refusal as e:
            e.index = index
            raise
        raise Refusal(400, f"line {index + 1} is not valid JSON", index=index)
    return value


def _parse_cookies(header):
    cookies = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies[_header_text(name)] = _header_text(value.strip().strip('"'))
    return cookies


def _header_text(value):
    """Header values arrive as latin-1 strings; most clients meant UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _text(body):
    return bottle.HTTPResponse(body, 200, {"Content-Type": "text/plain"})
