"""The HTTP source's one router: a dispatch table from exact path and method to a handler.

    Router({path: {method: handler}})     the WSGI app the server calls for every request
    Router({...}, default={method: handler})   the same, `default` serving every other path

- The path must equal PATH_INFO exactly (no trailing slash, case or encoding folded); any other
  is 404. A known path with a method it does not list is 405 with `Allow` naming the ones it does.
- A handler takes the WSGI environ and returns `(status, headers, body)`: headers a list of
  (name, value) pairs with the Content-Type, body bytes (Content-Length is added) or an iterable
  (a stream: /tail). It refuses a request by raising httperrors.HttpError, answered as JSON.
- HEAD is served only where a route lists it (its handler is the GET one); the answer is the
  GET's status and headers, Content-Length included, without the body. HEAD elsewhere is 405 or
  404 like any other method, also without a body.
- A handler that fails otherwise (a bug) is logged with its traceback and answered 500 JSON
  "internal error"; the client never sees the traceback.

`in_flight` counts the requests whose handlers run now (a stop waits for them).
"""
import logging

from .httperrors import JSON, HttpError, error_answer, error_body, respond, status_line

log = logging.getLogger("zspark.http")

NOT_FOUND = error_answer(HttpError(404, "not found"))
INTERNAL_ERROR = (500, [("Content-Type", JSON)], error_body("internal error"))


class Router:
    def __init__(self, routes, default=None):
        """`default`: {method: handler} for every path not in `routes` (else they are 404)."""
        self.routes = {path: dict(methods) for path, methods in routes.items()}
        self.default = dict(default) if default else None
        self.in_flight = 0
        # The 405 of each path, built once.
        self._not_allowed = {path: error_answer(HttpError(405, "method not allowed", {"Allow": ", ".join(methods)}))
                             for path, methods in self.routes.items()}
        self._not_allowed_default = self.default and error_answer(
            HttpError(405, "method not allowed", {"Allow": ", ".join(self.default)}))

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        self.in_flight += 1
        try:
            status, headers, body = self._answer(environ, method, path)
        except HttpError as e:
            status, headers, body = error_answer(e)
        except Exception:
            log.exception("HTTP handler failed on %s %s", method, path)
            status, headers, body = INTERNAL_ERROR
        finally:
            self.in_flight -= 1
        if isinstance(body, bytes):
            body = respond(start_response, status, headers, body)
        else:
            start_response(status_line(status), headers)
        if method == "HEAD":
            if hasattr(body, "close"):
                body.close()
            return []
        return body

    def _answer(self, environ, method, path):
        methods = self.routes.get(path, self.default)
        if methods is None:
            return NOT_FOUND
        handler = methods.get(method)
        if handler is None:
            return self._not_allowed.get(path) or self._not_allowed_default
        return handler(environ)
