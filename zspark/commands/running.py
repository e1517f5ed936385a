"""How operator commands reach the running server: its addresses from the config, and its /status.

Not a command itself (it is not in COMMANDS). A server bound to every interface (`0.0.0.0`, `*`,
`::`) is reached on the loopback address of the same family.
"""
import json
import re
import socket
import ssl
import urllib.error
import urllib.request

from ..errors import CommandError
from . import argtypes

DEFAULT_TIMEOUT_S = 5.0
_ANY = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "[::1]"}
_TCP = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\]):")


class NoServer(CommandError):
    """Nothing answered at the URL (refused, timed out, no route)."""


class BadAnswer(CommandError):
    """Something answered, but not with a usable /status (an HTTP error, not JSON)."""


def add_server_arguments(parser, timeout_help):
    """--url and --timeout, as `zcmd status` and `zcmd check` take them."""
    parser.add_argument("--url", help="the /status URL (default: from http.host, http.port and http.root)")
    parser.add_argument("--timeout", type=argtypes.seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"{timeout_help} (default {DEFAULT_TIMEOUT_S:g})")


def server_url(config, path):
    """The URL of `path` (/status, /tail...) on the server the config describes."""
    host = _ANY.get(config.http.host, config.http.host)
    if ":" in host:
        host = f"[{host}]"
    root = config.http.root.strip("/")
    scheme = "https" if config.http.certfile else "http"
    return f"{scheme}://{host}:{config.http.port}{'/' + root if root else ''}{path}"


def status_url(config):
    return server_url(config, "/status")


def bson_address(config):
    """The address a client connects to for the BSON socket (None when it is disabled)."""
    address = config.zmq.bson_bind
    if not address:
        return None
    return _TCP.sub(lambda m: f"tcp://{_ANY[m.group(1)]}:", address)


def open_url(url, config, timeout=DEFAULT_TIMEOUT_S, accept="application/json"):
    """GET `url` from the server; return the open response, or raise NoServer / BadAnswer with a
    readable reason.

    Sends the first of `http.status_tokens` (else of `http.tokens`) as a bearer token. Over HTTPS
    the server's certificate is checked against `http.certfile` from the same config."""
    headers = {"Accept": accept}
    tokens = config.http.status_tokens or config.http.tokens
    if tokens:
        headers["Authorization"] = f"Bearer {tokens[0]}"
    context = None
    if url.startswith("https:") and config.http.certfile:
        context = ssl.create_default_context(cafile=config.http.certfile)
        context.check_hostname = False  # the very certificate the server uses: no name to match
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout,
                                      context=context)
    except urllib.error.HTTPError as e:
        hint = " (check http.status_tokens / http.tokens in the config)" if e.code in (401, 403) else ""
        raise BadAnswer(f"{url} answered HTTP {e.code} {e.reason}{hint}") from None
    except (socket.timeout, TimeoutError):
        raise NoServer(f"no answer from {url} within {timeout:g}s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise NoServer(f"no answer from {url} within {timeout:g}s") from None
        text = getattr(reason, "strerror", None) or str(reason)
        raise NoServer(f"no zspark server answered at {url}: {text}") from None
    except (OSError, ValueError) as e:  # a reset connection, a malformed --url
        raise NoServer(f"no zspark server answered at {url}: {e}") from None


def fetch_status(url, config, timeout=DEFAULT_TIMEOUT_S):
    """GET /status and return it as a dict; raise NoServer or BadAnswer with a readable reason."""
    try:
        with open_url(url, config, timeout) as resp:
            body = resp.read()
    except (socket.timeout, TimeoutError):
        raise NoServer(f"no answer from {url} within {timeout:g}s") from None
    except OSError as e:
        raise NoServer(f"no zspark server answered at {url}: {e}") from None
    try:
        status = json.loads(body)
    except ValueError:
        raise BadAnswer(f"{url} answered, but not with JSON: {body[:80]!r}") from None
    if not isinstance(status, dict) or "journal" not in status:
        raise BadAnswer(f"{url} answered JSON that is not zspark's /status: {body[:80]!r}")
    return status


def journal_percent(status):
    """How full the journal is, in percent of `journal.max_bytes`."""
    journal = status["journal"]
    return 100.0 * journal["bytes"] / journal["max_bytes"] if journal.get("max_bytes") else 0.0
