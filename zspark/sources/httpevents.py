"""Turning an HTTP request into event dicts: Sparkngin's query form, and what the request says of
its sender.

    GET /log?type=&level=&topic=&env=&ver=&stimestamp=&ip=&...

The named parameters are event fields (`ver` is `version`; event.from_query: each at most once,
any other into `context`, a list when repeated, or refused by `event.unknown_fields`); `ip`
defaults to the client's address (`client_ip`: the peer, or the rightmost address in
X-Forwarded-For that is not of a proxy in `http.trusted_proxies` when the peer is one), and the
Referer, User-Agent and Cookie headers give `referrer`, `user_agent` and `cookies`. POSTed events
get the same `ip`, `referrer` and `user_agent` where they have none (`http.post_request_fields`:
Ingest.normalize_all adds them). The dicts are raw: event.normalize (through ingest) validates them.
"""
import ipaddress
import urllib.parse

from ..event import InvalidEvent, from_query
from .httperrors import HttpError

class RequestEvents:
    def __init__(self, trusted_proxies, limits):
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self._limits = limits  # event.Limits: unknown_fields decides what other parameters become

    def from_query(self, environ):
        """The one event of a GET /log: [event dict]; HttpError 400 if the query is not UTF-8."""
        try:
            raw_qs = environ.get("QUERY_STRING", "").encode("latin-1").decode("utf-8")
            pairs = urllib.parse.parse_qsl(raw_qs, keep_blank_values=True, errors="strict")
        except (UnicodeError, ValueError):
            raise HttpError(400, "the query string is not valid UTF-8") from None
        try:
            event = from_query(pairs, self._limits)  # the fields, and context (event.py)
        except InvalidEvent as e:
            raise HttpError(400, str(e)) from None
        for name, value in self.sender_fields(environ).items():
            event.setdefault(name, value)
        cookies = parse_cookies(environ.get("HTTP_COOKIE", ""))
        if cookies:
            event["cookies"] = cookies
        return [event]

    def sender_fields(self, environ):
        """What the request says of its sender: `ip`, and `referrer` and `user_agent` where sent."""
        fields = {"ip": self.client_ip(environ)}
        # The raw latin-1 strings from environ, read as the UTF-8 most clients meant.
        if environ.get("HTTP_REFERER"):
            fields["referrer"] = header_text(environ["HTTP_REFERER"])
        if environ.get("HTTP_USER_AGENT"):
            fields["user_agent"] = header_text(environ["HTTP_USER_AGENT"])
        return fields

    def client_ip(self, environ):
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


def parse_cookies(header):
    cookies = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies[header_text(name)] = header_text(value.strip().strip('"'))
    return cookies


def header_text(value):
    """Header values arrive as latin-1 strings; most clients meant UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value
