"""What web pages need from the HTTP source: CORS, the pixel, the session cookie, the snippet.

`Cors` answers preflights (`OPTIONS /log`) and gives the headers of every `/log` answer, from
`http.cors.allowed_origins` (`*`, listed origins, or both). Credentials
(`Access-Control-Allow-Credentials`) are only ever allowed for a listed origin, which is echoed;
any other origin gets `*`, without credentials, when `*` is allowed. The answer depends on the
Origin, so it says `Vary: Origin`.

The pixel (`GET http.pixel.path`, `/pixel.gif`) always answers `GIF` with `NO_CACHE` headers,
whatever became of its event, so that an `<img>` never breaks a page; `pixel_answer` turns the
answer `/log` would have given into the pixel's (the status stays: 200 only once journaled, the
reason in `X-Zspark-Error`). `SessionCookie` is Zarkov's `zess`: a visitor id kept in a
long-lived cookie (`http.pixel.cookie`).

`snippet(pixel_path)` is `static/zspark.js` (served at `/zspark.js`): `zspark.pageView()` and
`zspark.event(type, fields)` by sendBeacon, else fetch with keepalive, else the pixel.
"""
import importlib.resources
import json
import logging
import re
import secrets

from ..metrics import RateLimitedLog
from ..safetext import ascii_line, shorten
from .httperrors import HttpError, error_answer
from .httpevents import parse_cookies

log = logging.getLogger("zspark.http")

# The 43-byte transparent 1x1 GIF89a every pixel server answers.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
            "Expires": "0"}
ERROR_HEADER = "X-Zspark-Error"
_ERROR_HEADER_CHARS = 200

METHODS = ("GET", "POST")  # what a page may send to /log
# What a page may set on a /log request beyond the CORS-safelisted headers: the JSON content
# type (a Blob's or fetch's), gzip (CompressionStream), a bearer token where http.tokens is set.
REQUEST_HEADERS = ("content-type", "content-encoding", "authorization")
# What a page may read of an answer beyond the safelisted ones: when to send again after a 503.
_EXPOSED = "Retry-After"

SCRIPT_TYPE = "application/javascript; charset=utf-8"
SCRIPT_CACHE = "public, max-age=3600"


class Cors:
    """The CORS rules of `/log`. `refused`: preflights refused (for /status and /metrics)."""

    def __init__(self, allowed_origins, max_age_s):
        self.any = "*" in allowed_origins
        self.listed = frozenset(o for o in allowed_origins if o != "*")
        self.max_age = str(int(max_age_s))
        self.refused = 0

    def headers(self, origin):
        """The CORS headers of an answer to a request whose Origin header is `origin` (None
        without one: not a cross-origin request, no headers)."""
        if origin is None:
            return {}
        if origin in self.listed:
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                    "Access-Control-Expose-Headers": _EXPOSED, "Vary": "Origin"}
        if self.any:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": _EXPOSED,
                    "Vary": "Origin"}
        return {"Vary": "Origin"}  # the browser keeps the answer from the page

    def preflight(self, origin, method, request_headers):
        """The answer to `OPTIONS /log` from `origin` asking for `method` with `request_headers`
        (the Access-Control-Request-* values, None where absent): (headers, None) to answer 204,
        or (None, reason) to refuse it (403), counted in `refused`."""
        reason = None
        requested = [h.strip().lower() for h in (request_headers or "").split(",") if h.strip()]
        if origin not in self.listed and not self.any:
            reason = f"origin {origin} is not allowed (http.cors.allowed_origins)"
        elif method not in METHODS:
            reason = (f"method {method} is not allowed (GET, POST)" if method else
                      "a preflight must say Access-Control-Request-Method")
        else:
            unknown = [h for h in requested if h not in REQUEST_HEADERS]
            if unknown:
                reason = f"request header {unknown[0]} is not allowed ({', '.join(REQUEST_HEADERS)})"
        if reason is not None:
            self.refused += 1
            return None, shorten(reason, _ERROR_HEADER_CHARS)
        headers = {**self.headers(origin), "Access-Control-Allow-Methods": ", ".join(METHODS),
                   "Access-Control-Max-Age": self.max_age,
                   "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
        if requested:
            headers["Access-Control-Allow-Headers"] = ", ".join(requested)
        return headers, None


class SessionCookie:
    """A visitor id in a cookie, as Zarkov's `zess`: the id the request carries, else a new one;
    set again on every answer, so it lasts `max_age_s` from the last visit."""

    _VALUE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # an id another server may have set: kept

    def __init__(self, name, max_age_s, same_site, secure):
        self.name = name
        self._attributes = f"; Max-Age={int(max_age_s)}; Path=/; SameSite={same_site}; HttpOnly"
        if secure:
            self._attributes += "; Secure"

    def assign(self, cookies):
        """(the visitor's id, the Set-Cookie value) for a request with `cookies` (a dict)."""
        value = cookies.get(self.name)
        if not value or not self._VALUE.match(value):
            value = secrets.token_hex(16)
        return value, f"{self.name}={value}{self._attributes}"


def pixel_answer(status, headers, body, set_cookie=None):
    """The pixel's answer for what `/log` answered (status, headers list, JSON body bytes): the
    GIF, the same status, the reason of a refusal in `X-Zspark-Error` (ASCII, one short line)."""
    headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
    headers += [("Content-Type", "image/gif"), *NO_CACHE.items()]
    if status != 200:
        try:
            reason = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            reason = "refused"
        headers.append((ERROR_HEADER, ascii_line(reason, _ERROR_HEADER_CHARS)))
    if set_cookie is not None:
        headers.append(("Set-Cookie", set_cookie))
    return status, headers, GIF


def snippet(pixel_path):
    """The bytes of /zspark.js, its image fallback sending to `pixel_path` (beside /log)."""
    source = importlib.resources.files(__package__).joinpath("static", "zspark.js").read_text("utf-8")
    source = source[source.index("*/") + 2:]  # its comment, for who reads the file
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    return "\n".join(lines).replace('"/pixel.gif"', json.dumps(pixel_path)).encode("utf-8") + b"\n"


class WebRoutes:
    """The routes web pages use: CORS on /log (its preflight, and headers on each of its
    answers), the pixel and /zspark.js. `log_get(environ)` answers a GET /log (the pixel's
    event goes the same way)."""

    def __init__(self, config, log_get):
        self.cors = Cors(config.cors.allowed_origins, config.cors.max_age_s)
        pixel = config.pixel
        self.cookie = SessionCookie(pixel.cookie, pixel.cookie_max_age_days * 86400, pixel.cookie_same_site,
                                    pixel.cookie_secure) if pixel.cookie else None
        self.pixel_path = pixel.path
        self.script = snippet(pixel.path) if config.snippet else None
        self.log_get = log_get
        self._warn = RateLimitedLog(log)

    def reload_cors(self, cors_config):
        """Take new `http.cors` settings (a SIGHUP's reload); the refused count goes on."""
        refused = self.cors.refused
        self.cors = Cors(cors_config.allowed_origins, cors_config.max_age_s)
        self.cors.refused = refused

    def routes(self, root, log_routes):
        """The router's table for `log_routes` ({path: {method: handler}} of /log) with CORS,
        and the pixel's and the snippet's routes under `root`."""
        routes = {path: {**{m: self._with_cors(h) for m, h in methods.items()}, "OPTIONS": self.preflight}
                  for path, methods in log_routes.items()}
        routes[root + self.pixel_path] = {"GET": self.pixel}
        if self.script is not None:
            routes[root + "/zspark.js"] = {"GET": self.serve_script, "HEAD": self.serve_script}
        return routes

    def _with_cors(self, handler):
        def answer(environ):
            origin = environ.get("HTTP_ORIGIN")
            if origin is None:  # not from a page of another origin: nothing to add
                return handler(environ)
            try:
                status, headers, body = handler(environ)
            except HttpError as e:  # a page may read why it was refused
                status, headers, body = error_answer(e)
            return status, [*headers, *self.cors.headers(origin).items()], body
        return answer

    def preflight(self, environ):
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:  # a plain OPTIONS: what /log takes
            return 204, [("Allow", "GET, POST, OPTIONS")], b""
        headers, reason = self.cors.preflight(origin, environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"),
                                              environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"))
        if reason is not None:
            self._warn("HTTP %s: CORS preflight refused: %s", environ.get("REMOTE_ADDR", "?"), reason)
            raise HttpError(403, reason, {"Vary": "Origin"})
        return 204, list(headers.items()), b""

    def pixel(self, environ):
        set_cookie = None
        if self.cookie is not None:
            cookies = parse_cookies(environ.get("HTTP_COOKIE", ""))
            value, set_cookie = self.cookie.assign(cookies)
            if cookies.get(self.cookie.name) != value:  # the event carries the id it is given
                environ["HTTP_COOKIE"] = f"{environ.get('HTTP_COOKIE', '')}; {self.cookie.name}={value}"
        try:
            answer = self.log_get(environ)
        except HttpError as e:  # counted and logged by /log's endpoint
            answer = error_answer(e)
        return pixel_answer(*answer, set_cookie=set_cookie)

    def serve_script(self, environ):
        return 200, [("Content-Type", SCRIPT_TYPE), ("Cache-Control", SCRIPT_CACHE),
                     ("Access-Control-Allow-Origin", "*"), ("X-Content-Type-Options", "nosniff")], self.script
