"""The request headers object pywsgi and the app read, and the WSGI environ, built from the
fields that httpframing.parse_head validated.

pywsgi reads headers through the email package's parser, which takes a control character such as
\\x85 for a line break and so can see a header the strict parser did not (a hidden
Content-Length); it also costs a fifth of the CPU of a small keep-alive request. `Headers` holds
exactly the (name, value) pairs of the strict reading and answers as the email parser's message
answers for the same block (`get` and `getheader` give the first field of a name in any case,
`headers` every field line): tests/test_http_headers.py compares the two.

`environ(base, head, client_address)` is the environ pywsgi's WSGIHandler.get_environ builds
from those Headers (the same keys in the same order, the same values), without its detour
through header line strings: tests/test_http_headers.py compares the two as well.
"""
from urllib.parse import unquote

# Header names the environ holds without an HTTP_ prefix (from the first such field), or not at all.
_UNPREFIXED = frozenset(("CONTENT_TYPE", "CONTENT_LENGTH"))


class Headers:
    """The part of pywsgi's OldMessage that pywsgi's get_environ and zspark read (pywsgi's
    read_request, which used the rest, is not called: httpserver.RequestHandler frames requests)."""

    def __init__(self, pairs):
        self._pairs = pairs

    def get(self, name, default=None):
        """The first header called `name` (in any case), as the email message answers."""
        name = name.lower()
        for key, value in self._pairs:
            if key.lower() == name:
                return value
        return default

    getheader = get

    @property
    def headers(self):
        return [f"{key}: {value}\r\n" for key, value in self._pairs]

    @property
    def typeheader(self):
        return self.get("content-type")


def environ(base, head, client_address):
    """The WSGI environ of the request `head` (an httpframing.Head) on top of `base` (a fresh
    copy of the server's environ), but for wsgi.input: what pywsgi's get_environ gives."""
    env = base
    env["REQUEST_METHOD"] = head.method
    env["SCRIPT_NAME"] = ""
    path, _, query = head.target.partition("?")
    env["PATH_INFO"] = unquote(path, encoding="latin-1")
    env["QUERY_STRING"] = query
    fields = head.headers
    for name, value in fields:
        if name.lower() == "content-type":
            env["CONTENT_TYPE"] = value
            break
    if head.content_length is not None:  # parse_head leaves one field, with the number
        env["CONTENT_LENGTH"] = str(head.content_length)
    env["SERVER_PROTOCOL"] = head.version
    if isinstance(client_address, tuple):
        env["REMOTE_ADDR"] = str(client_address[0])
        env["REMOTE_PORT"] = str(client_address[1])
    for name, value in fields:
        if "_" in name:  # pywsgi drops them: HTTP_X_A could be X-A's or X_A's
            continue
        key = name.replace("-", "_").upper()
        if key in _UNPREFIXED:
            continue
        key = "HTTP_" + key
        value = value.strip()
        if key in env:
            env[key] += ("; " if "COOKIE" in key else ",") + value
        else:
            env[key] = value
    return env
