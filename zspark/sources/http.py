"""The HTTP source: the routes of the ingest endpoint and the admin routes behind one router,
served by httpserver.Server (gevent.pywsgi, strict framing, bounded connections).

    /log                    httpingest.py (events from the request: httpevents.py)
    /pixel.gif /zspark.js   httpweb.py, which also adds CORS to /log (OPTIONS, the headers);
                            with http.pixel.bind also on a listener of its own, on every path
    /imok /status /metrics /tail   httpadmin.py (/tail: tap.py)

With `http.certfile` and `http.keyfile` it serves HTTPS. `http.tokens` guard /log;
`http.status_tokens` (else the same tokens) guard /status, /metrics and /tail; /imok is open
(httpauth.py). Every route lives under `http.root`. How a request is routed, and what answers a
path or method that is not served, or a handler that fails: httproutes.py. Error answers are
JSON (httperrors.py).
"""
import logging
import ssl
import time

import gevent
from gevent.pool import Pool

from ..config import pixel_address
from ..errors import TlsError  # noqa: F401 (server.py catches it from here)
from . import httpauth
from .httpadmin import AdminRoutes
from .httpevents import RequestEvents
from .httpingest import LogEndpoint
from .httproutes import Router
from .httpserver import ErrorLog, Server
from .httpweb import WebRoutes
from .tap import TailStream

log = logging.getLogger("zspark.http")


class HttpSource:
    def __init__(self, config, ingest, status_provider, stopping, metrics_provider=None, listen=None):
        """`listen(which, address)`: the listening socket for "main" (http.host and port) or
        "pixel" (http.pixel.bind), where the server should not bind it itself (an HTTP worker
        process: zspark/httpworker.py)."""
        self.config = c = config.http
        self._listen = listen
        log_tokens, status_tokens = httpauth.groups(c.tokens, c.status_tokens)
        self.endpoint = LogEndpoint(c, ingest, RequestEvents(c.trusted_proxies, ingest.limits), log_tokens, stopping)
        self.tail = TailStream(ingest.journal, stopping, c.tail_max_last, c.tail_max_clients, c.retry_after_s)
        self.admin = admin = AdminRoutes(status_tokens, status_provider, metrics_provider, self.tail)
        self.root = "/" + c.root.strip("/") if c.root.strip("/") else ""
        self.web = WebRoutes(c, self.endpoint.get)  # CORS on /log, the pixel, /zspark.js
        self.router = Router({**self.web.routes(self.root, self.endpoint.routes(self.root)),
                              **admin.routes(self.root)})
        self.server = None
        # http.pixel.bind (Zarkov's webevent.bind): a listener that answers the pixel on any path.
        self.pixel_address = pixel_address(config)
        self.pixel_router = Router({"/imok": {"GET": admin.imok, "HEAD": admin.imok}},
                                   default={"GET": self.web.pixel}) if self.pixel_address else None
        self.pixel_server = None

    def set_tokens(self, tokens, status_tokens):
        """The bearer tokens of /log, and of /status, /metrics and /tail (else the same), while
        serving (SIGHUP: zspark/reload.py)."""
        self.endpoint.tokens, self.admin.tokens = httpauth.groups(tokens, status_tokens)

    @property
    def _in_flight(self):
        """Requests being answered now (a stop waits for them)."""
        return self.router.in_flight + (self.pixel_router.in_flight if self.pixel_router else 0)

    def start(self):
        """Listen and serve; raise OSError (a port) or TlsError (the certificate)."""
        tls = {"ssl_context": self._tls_context()} if self.config.certfile else {}
        self.server = self._server(self._listener("main", (self.config.host, self.config.port)), self.router,
                                   self.root + "/imok", tls)
        if self.pixel_address is not None:
            self.pixel_server = self._server(self._listener("pixel", self.pixel_address), self.pixel_router,
                                             "/imok", tls)
            self.pixel_server.start()
            log.info("HTTP pixel listening on %s://%s:%d (http.pixel.bind)", "https" if tls else "http",
                     *self.pixel_server.address[:2])
        # /status sources.http: connections, timeouts..., and the bodies held in memory
        budget = self.endpoint.budget
        self.endpoint.stats.details = lambda: {**self.server.connection_stats(), "inflight_bytes": budget.used,
                                               "inflight_peak_bytes": budget.peak,
                                               "cors_refused": self.web.cors.refused}
        self.server.start()
        log.info("HTTP listening on %s://%s:%d%s/log", "https" if tls else "http", self.config.host,
                 self.address[1], self.config.root)

    def _listener(self, which, address):
        return address if self._listen is None else self._listen(which, address)

    def _server(self, address, router, imok_path, tls):
        c = self.config
        return Server(address, router, spawn=Pool(), log=None, error_log=ErrorLog(),
                      idle_timeout=c.idle_timeout_s, header_timeout=c.header_timeout_s,
                      tls_handshake_timeout=c.tls_handshake_timeout_s, max_connections=c.max_connections,
                      imok_path=imok_path, retry_after_s=c.retry_after_s, on_malformed=self.endpoint.malformed,
                      **tls)

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
        if self.pixel_server is not None:
            self.pixel_server.close()
        self.server.close()
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self._in_flight:
            log.warning("HTTP: %d request(s) still in flight after %.0fs; closing them unanswered",
                        self._in_flight, timeout)
        self.server.stop(timeout=0)
        if self.pixel_server is not None:
            self.pixel_server.stop(timeout=0)
