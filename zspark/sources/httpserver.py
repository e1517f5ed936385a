"""The HTTP server under the HTTP source: gevent.pywsgi's server and request handler, made strict
about framing and bounded in what a connection can hold.

- **Framing.** `RequestHandler` reads each request head itself, whole, and frames the request by
  httpframing.parse_head alone: a head that breaks a rule is answered with a JSON 4xx (counted
  through `on_malformed`, like any refused request) and the connection closed. A head cut short
  by the client's close or by a timeout never reaches the app. The body is left to the app,
  through environ['wsgi.input'] (pywsgi's Input, which reads exactly the framed length or the
  chunks), and whatever the app left unread is read and dropped before the next request. A head
  that arrived whole with the bytes already received (the common case) is taken from them at
  once, exactly as the line-by-line reading would have taken it; the environ is built from
  parse_head's fields (httpheaders.environ) and says when the body is in hand too (httpbody).
- **Timeouts.** A connection must send its first request head within `header_timeout` of being
  accepted (of the TLS handshake's end on HTTPS); between requests it may wait `idle_timeout` for
  the next one, whose head then has `header_timeout` from its first byte. Both are deadlines for
  the whole head, not for each read, so a byte every second does not keep a head alive. A head
  that started and did not finish gets a 408 and is closed; a connection that sent nothing is
  just closed. The TLS handshake has `tls_handshake_timeout`.
- **Connections.** At most `max_connections` are served at once. When a new one would pass the
  cap, the connection that has waited longest for its next request (idle keep-alives, and new
  connections that have sent nothing yet: RFC 9112 §9.8 lets a server close those at any time)
  is closed to make room; failing that, the one longest in an unfinished TLS handshake or
  request head. When every connection is busy with a request, up to OVERFLOW_CONNECTIONS more are taken for
  OVERFLOW_DEADLINE_S each, to answer one request: `GET /imok` as usual (a load balancer must
  see the node alive while it is busy), anything else a 503 with Retry-After; when those are all
  taken, the oldest of them is closed for the new one, so connections held open cannot keep
  /imok out for long. Refusals are counted and logged at most 10 a minute.
- **TLS.** A handshake that fails (plain HTTP on the HTTPS port, no shared protocol...) or does
  not finish in time is counted and logged as one rate-limited line with the peer's address,
  never a traceback.
- **Answers** are written with one send() for head and body (see `_write_with_headers`).

`Server.connection_stats()` gives the counters /status shows under sources.http.
"""
import contextlib
import errno
import logging
import socket
import time
from collections import OrderedDict

from gevent import GreenletExit, Timeout, get_hub, getcurrent, spawn_later
from gevent.pywsgi import Input, WSGIHandler, WSGIServer, format_date_time

from ..metrics import RateLimitedLog
from .httperrors import JSON, HttpError, error_answer, error_body, respond, status_line
from .httpbody import BODY_IN_HAND
from .httpframing import MAX_HEAD_BYTES, MAX_REQUEST_LINE, FramingError, parse_head
from . import httpheaders
from .httpheaders import Headers

log = logging.getLogger("zspark.http")

OVERFLOW_CONNECTIONS = 64  # connections taken beyond max_connections, for /imok and a 503
OVERFLOW_DEADLINE_S = 2.0  # the whole life of one of them, TLS handshake included
ACCEPT_RETRY_S = 0.1  # out of descriptors: accepting is tried again after this
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# Counters of Server.connection_stats() (with `open`, the number open now).
COUNTERS = ("accepted",  # connections accepted
            "refused",  # beyond the cap: answered 503 or closed at once
            "evicted",  # idle or unfinished connections closed to make room under the cap
            "idle_closed",  # keep-alive connections closed after idle_timeout without a request
            "timeouts",  # a request head or a TLS handshake that did not finish in time
            "tls_errors",  # failed TLS handshakes
            "accept_errors")  # accept() failed for want of descriptors or memory; retried


_date_cache = [None, b""]  # [second, its HTTP date]


def http_date():
    """The Date header's value for now, formatted once a second."""
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[:] = second, format_date_time(second)
    return _date_cache[1]


class RequestHandler(WSGIHandler):
    """One connection: requests read strictly (httpframing), under the server's timeouts."""

    accepted = 0.0  # monotonic time the connection was accepted (or its TLS handshake done)
    overflow = False  # taken beyond max_connections: one request, /imok or a 503
    _served = 0  # requests read on this connection so far
    _in_hand = 0  # bytes the read buffer held after the last request head

    def handle(self):
        # Without TCP_NODELAY, keep-alive answers wait ~40 ms for the client's delayed ACK.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket
        return super().handle()

    def handle_one_request(self):
        """pywsgi's contract: None to close, True for the next request, or (status, bytes to send
        before closing)."""
        if self.rfile.closed:
            return None
        self.command = None  # (a keep-alive's last request set it)
        self.response_length = 0
        try:
            head = self._receive_head()
            if head is None:
                return None
            request = parse_head(head)
        except FramingError as e:
            self.server.on_malformed(self.client_address, e.status, e.reason)
            return self._closing_answer(e.status, e.reason)
        except _HeadTimeout as e:
            self.server.timed_out(self.client_address, e.reason)
            return self._closing_answer(408, e.reason)
        self.requestline = head[:head.index(b"\r\n")].decode("latin-1")
        self.command, self.path, self.request_version = request.method, request.target, request.version
        self.headers = Headers(request.headers)
        self.content_length = request.content_length
        self.close_connection = self.overflow or not request.persistent
        self.environ = environ = httpheaders.environ(self.server.get_environ(), request, self.client_address)
        sock = self.socket if environ.get("HTTP_EXPECT") == "100-continue" else None
        self.wsgi_input = Input(self.rfile, request.content_length, socket=sock, chunked_input=request.chunked)
        # zspark upgrades no connection: a request asking for one has its body framed as any
        # other (pywsgi would hand the app the raw stream, and read a body's length again after).
        environ["wsgi.input"] = self.wsgi_input
        environ["wsgi.input_terminated"] = True
        if request.content_length is not None and request.content_length <= self._in_hand:
            environ[BODY_IN_HAND] = True
        self.application = self.server.overflow_app if self.overflow else self.server.application
        self.handle_one_response()
        if self.close_connection or self.rfile.closed:
            return None
        return True

    def _receive_head(self):
        """The next request head's bytes; None when the connection closed, timed out or was
        evicted before one was complete (nothing to answer); raises FramingError (too long) or
        _HeadTimeout (a head begun and not finished in time)."""
        server = self.server
        first = not self._served
        self._served += 1
        self._in_hand = 0
        now = time.monotonic()
        deadline = self.accepted + server.header_timeout if first else None
        waited = server.wait_for_request(self.rfile, (deadline - now) if first else server.idle_timeout)
        if waited is None:  # timed out
            if first:
                server.timed_out(self.client_address, None)
            else:
                server.counts["idle_closed"] += 1
            return None
        if not waited:
            return None  # closed (or evicted)
        head = self._buffered_head()
        if head is not None:
            return head
        if deadline is None:
            deadline = time.monotonic() + server.header_timeout
        timer = Timeout(max(deadline - time.monotonic(), 0.0))
        try:
            with timer, server.unfinished():
                return self._read_head()
        except Timeout as e:
            if e is not timer:
                raise
            raise _HeadTimeout(f"the request head did not arrive within {server.header_timeout:g}s "
                               "(http.header_timeout_s)") from None
        except OSError:
            return None

    def _buffered_head(self):
        """The next request head if the bytes already received hold all of it, as _read_head
        would return it: the common case, where one recv brought the head (and a small body),
        read without a timer or a read per line. None to read it line by line."""
        buffered = self.rfile.peek(MAX_REQUEST_LINE)  # what is buffered: waited for, no recv
        end = buffered.find(b"\r\n\r\n") + 4
        if end < 4 or end > MAX_HEAD_BYTES or buffered[0] in b"\r\n":
            return None
        # Its first empty line is that one, as readline() sees lines, and its request line is
        # not too long (else _read_head stops elsewhere, or answers 414).
        if buffered.find(b"\n\r\n") != end - 3 or b"\n\n" in buffered[:end] or \
                buffered.find(b"\n") >= MAX_REQUEST_LINE - 1:
            return None
        self._in_hand = len(buffered) - end
        return self.rfile.read(end)

    def _read_head(self):
        """Lines up to the first empty one (any line end: parse_head judges them), or None at
        the end of the stream before it."""
        rfile = self.rfile
        line = rfile.readline(MAX_REQUEST_LINE)
        if len(line) >= MAX_REQUEST_LINE:
            raise FramingError(414, f"the request line is longer than {MAX_REQUEST_LINE - 1} bytes")
        lines = [line]
        size = len(line)
        while line.endswith(b"\n"):
            room = MAX_HEAD_BYTES - size
            line = rfile.readline(room + 1)
            if len(line) > room:
                raise FramingError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            lines.append(line)
            size += len(line)
            if line in (b"\r\n", b"\n"):
                return b"".join(lines)
        return None  # cut short: the client closed

    def start_response(self, status, headers, exc_info=None):
        if _body_unread(self.wsgi_input):
            # Answered without its body read (a refusal, a route that takes none): close the
            # connection rather than let pywsgi read the rest after the answer, however slowly
            # it comes (its Input._discard skips a body whose framing it no longer trusts).
            self.wsgi_input._chunked_input_error = True
            self.close_connection = True
            headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def _closing_answer(self, code, reason):
        body = error_body(reason)
        head = (f"HTTP/1.1 {status_line(code)}\r\nContent-Type: {JSON}\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        return str(code), head if self.command == "HEAD" else head + body

    # pywsgi's own response writing, made cheaper for the many small answers of /log: one send()
    # for head and body instead of two (on these VMs a loopback send() wakes the client on the
    # other vCPU, which costs more than the rest of a small request's work), no getsockopt() per
    # send, the Date header formatted once a second, and no access-log line formatted to be
    # thrown away (the server is created with log=None).

    def _write_with_headers(self, data):
        self.headers_sent = True
        if self.provided_date is None:
            self.response_headers.append((b"Date", http_date()))
            self.provided_date = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        if data and self.response_use_chunked:
            towrite += b"%x\r\n" % len(data)
            towrite += data
            towrite += b"\r\n"
        else:
            towrite += data
        self._sendall(towrite)

    def _sendall(self, data):
        try:
            sent = self.socket.send(data)  # cooperative: waits only if the buffer is full
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def log_request(self):
        if self.server.access_log is not None:  # http.access_log: zspark/accesslog.py
            self.server.access_log(self)


def _body_unread(stream):
    """True if the request's body (pywsgi's Input) has not been read to its end."""
    if stream.chunked_input:
        return stream.chunk_length != 0
    return stream.position < (stream.content_length or 0)


class _HeadTimeout(Exception):
    """A request head begun and not finished by its deadline."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class _Closed(GreenletExit):
    """Thrown into the greenlet of a connection closed to make room (a GreenletExit: no traceback)."""


class Server(WSGIServer):
    """pywsgi's server with the connection cap, the timeouts and quiet TLS failures."""

    handler_class = RequestHandler
    access_log = None  # called with each finished request's handler (zspark/accesslog.py)

    def __init__(self, listener, application, *, idle_timeout, header_timeout, tls_handshake_timeout,
                 max_connections, imok_path, retry_after_s, on_malformed, **kwargs):
        super().__init__(listener, application, **kwargs)
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        self.max_connections = max_connections
        self.imok_path = imok_path
        self.retry_after_s = retry_after_s
        self.on_malformed = on_malformed  # (address, status, reason): a refused request head
        self.counts = dict.fromkeys(COUNTERS, 0)
        # The greenlets serving connections (dict keys, in insertion order: oldest first).
        self._connections = {}  # those counted against the cap
        self._idle = OrderedDict()  # of those, the ones waiting for a request; longest first
        self._unfinished = OrderedDict()  # of those, the ones in a TLS handshake or a request head
        self._overflow = OrderedDict()  # those served beyond the cap
        self._warn = RateLimitedLog(log)

    def connection_stats(self):
        return {"connections": {"open": len(self._connections), **self.counts}}

    # -- accepting ------------------------------------------------------------------------

    def do_read(self):
        """Accept a connection. Out of descriptors (EMFILE), pause accepting for a moment instead
        of failing: gevent would log a traceback for each attempt. Connections wait in the listen
        backlog meanwhile, and are served once descriptors are free again."""
        try:
            return super().do_read()
        except OSError as e:
            if e.errno not in _OUT_OF_RESOURCES:
                raise
            self.counts["accept_errors"] += 1
            self._warn("HTTP: cannot accept connections: %s (%d open); trying again in %gs",
                       e.strerror, len(self._connections), ACCEPT_RETRY_S)
            self.stop_accepting()
            spawn_later(ACCEPT_RETRY_S, self._resume_accepting)
            return None

    def _resume_accepting(self):
        if not self.closed:
            self.start_accepting()

    def do_handle(self, sock, address):
        """Called by the accept loop for each new connection: serve it, make room, or refuse it."""
        self.counts["accepted"] += 1
        overflow = len(self._connections) >= self.max_connections and not self._evict()
        if overflow and len(self._overflow) >= OVERFLOW_CONNECTIONS:
            # The oldest makes room, so that connections held open cannot keep /imok out.
            oldest, _ = self._overflow.popitem(last=False)
            self._refused(address, "an unanswered connection beyond the cap closed")
            oldest.kill(_Closed, block=False)  # (it may not have started: kill() handles that)
        greenlet = self._spawn(self._serve, sock, address, overflow)
        (self._overflow if overflow else self._connections)[greenlet] = None

    def _evict(self):
        """Make room: close the connection that has waited longest for a request or else the one
        longest in an unfinished TLS handshake or request head (RFC 9112 §9.8 lets a server close
        either; the second keeps slow heads, which hold their place until header_timeout_s,
        from filling the cap). False if every connection is busy with a request."""
        for waiting in (self._idle, self._unfinished):
            if waiting:
                greenlet, _ = waiting.popitem(last=False)
                break
        else:
            return False
        self._connections.pop(greenlet, None)
        self.counts["evicted"] += 1
        # It is suspended in wait_for_request, a head's read or a handshake (nowhere else is it
        # in those lists), so the exception lands there and nowhere in a request. The accept
        # loop runs in the hub, which may switch to it at once; from anywhere else, the same
        # through the hub.
        if getcurrent() is get_hub():
            greenlet.throw(_Closed)
        else:
            get_hub().loop.run_callback(greenlet.throw, _Closed)
        return True

    @contextlib.contextmanager
    def unfinished(self):
        """While the current connection is in a TLS handshake or reading a request head: one
        that may be closed to make room."""
        me = getcurrent()
        if me in self._connections:
            self._unfinished[me] = None
        try:
            yield
        finally:
            self._unfinished.pop(me, None)

    def _serve(self, sock, address, overflow):
        try:
            if overflow:
                with Timeout(OVERFLOW_DEADLINE_S, False):  # a hard deadline: it holds a spare slot
                    self._serve_connection(sock, address, overflow)
            else:
                self._serve_connection(sock, address, overflow)
        except _Closed:
            pass  # evicted
        finally:
            sock.close()
            me = getcurrent()
            self._overflow.pop(me, None)
            self._connections.pop(me, None)
            self._idle.pop(me, None)
            self._unfinished.pop(me, None)

    def _serve_connection(self, sock, address, overflow):
        conn = sock if self.ssl_args is None else self._handshake(sock, address)
        if conn is None:
            return
        try:
            handler = self.handler_class(conn, address, self)
            handler.accepted = time.monotonic()
            handler.overflow = overflow
            handler.handle()
        finally:
            if conn is not sock:
                conn.close()

    def _handshake(self, sock, address):
        """The TLS socket, or None (counted and logged) if the handshake fails or takes too long."""
        # The TLS socket takes over the descriptor from `sock`: it is the one to close.
        tls = self.wrap_socket(sock, do_handshake_on_connect=False, **self.ssl_args)
        timer = Timeout(self.tls_handshake_timeout)
        try:
            with timer, self.unfinished():
                tls.do_handshake()
            return tls
        except Timeout as e:
            if e is not timer:
                tls.close()
                raise
            self.counts["timeouts"] += 1
            self._warn("HTTPS %s: the TLS handshake did not finish within %gs (http.tls_handshake_timeout_s); "
                       "closed", _peer(address), self.tls_handshake_timeout)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            self.counts["tls_errors"] += 1
            reason = getattr(e, "reason", None)
            reason = ("plain HTTP on the HTTPS port" if reason == "HTTP_REQUEST"
                      else reason or getattr(e, "strerror", None) or type(e).__name__)
            self._warn("HTTPS %s: TLS handshake failed: %s", _peer(address), reason)
        except BaseException:
            tls.close()
            raise
        tls.close()
        return None

    # -- called by the handlers ------------------------------------------------------------

    def wait_for_request(self, rfile, timeout):
        """Wait until `rfile` has a byte to read: True; False at its end (or on eviction); None
        after `timeout` seconds. Meanwhile the connection may be evicted to make room."""
        me = getcurrent()
        if me in self._connections:
            self._idle[me] = None
        timer = Timeout(max(timeout, 0.0))
        try:
            with timer:
                return bool(rfile.peek(1))
        except Timeout as e:
            if e is not timer:
                raise
            return None
        except OSError:
            return False
        finally:
            self._idle.pop(me, None)

    def timed_out(self, address, reason):
        """A request head that did not arrive in time; `reason` None if not a byte of it came."""
        self.counts["timeouts"] += 1
        if reason:
            self._warn("HTTP %s: %s; closed", _peer(address), reason)

    def overflow_app(self, environ, start_response):
        """The app of a connection beyond the cap: /imok as always, else 503."""
        if environ.get("PATH_INFO") == self.imok_path and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self.application(environ, start_response)
        self._refused((environ.get("REMOTE_ADDR", "?"),), "answered 503")
        error = HttpError(503, f"too many connections (http.max_connections: {self.max_connections}); "
                               "try again later", {"Retry-After": str(self.retry_after_s), "Connection": "close"})
        return respond(start_response, *error_answer(error))

    def _refused(self, address, what):
        self.counts["refused"] += 1
        self._warn("HTTP %s: connection refused (%s): %d connections open, the most http.max_connections allows",
                   _peer(address), what, len(self._connections))


def _peer(address):
    return address[0] if isinstance(address, tuple) and address else str(address)


class ErrorLog:
    """pywsgi's error log, routed to logging (client disconnects, bodies cut short)."""

    def write(self, data):
        data = data.strip()
        if data:
            log.debug("pywsgi: %s", data)

    def flush(self):
        pass
