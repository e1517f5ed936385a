"""Bearer tokens: who may send events, who may read the server's state.

`http.tokens` guard /log; `http.status_tokens` (else the same tokens) guard /status, /metrics and
/tail; /imok is open. With no tokens configured every request passes. A request passes with
`Authorization: Bearer TOKEN` (the scheme in any case) naming one of them, compared in constant
time against every token so that the time taken does not tell which one came close.
"""
import hmac

from .httperrors import HttpError

UNAUTHORIZED = ("a valid bearer token is required (Authorization: Bearer TOKEN)",
                {"WWW-Authenticate": 'Bearer realm="zspark"'})


class BearerTokens:
    """The tokens one group of routes accepts."""

    def __init__(self, tokens):
        self._tokens = [t.encode() for t in tokens]

    def check(self, environ):
        """Return if the request carries one of the tokens (or none are configured), else raise
        the 401 HttpError."""
        if not self._tokens:
            return
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            given = token.strip().encode()
            matched = False
            for expected in self._tokens:
                matched |= hmac.compare_digest(given, expected)
            if matched:
                return
        reason, headers = UNAUTHORIZED
        raise HttpError(401, reason, dict(headers))


def groups(tokens, status_tokens):
    """(the /log tokens, the tokens of the status group): `http.tokens`, `http.status_tokens`."""
    return BearerTokens(tokens), BearerTokens(status_tokens or tokens)
