"""The HTTP access log (`http.access_log`): one line per answered request, for log shippers.

    combined   Apache's / nginx's combined format:
               127.0.0.1 - - [02/Dec/2026:14:00:00 +0000] "GET /log?type=a HTTP/1.1" 200 171 "-" "curl/8.5"
    json       one JSON object: time, remote, method, path, protocol, status, bytes, duration_ms,
               referrer, user_agent

`bytes` (and combined's size field) counts what was sent for the answer, head included. `remote`
is the connection's peer (a proxy's address behind one). Lines go to `http.access_log_file`, or
stdout when it is empty (zspark's own log is on stderr), and the file is reopened on SIGHUP with
zspark's log (logsetup.reopen).

Every field a sender chose (the request line, Referer, User-Agent) is escaped: in combined lines
`"` and `\\` get a backslash and whatever safetext.one_line escapes is escaped, in JSON lines
safetext.json_line applies, so no sender can end a line, forge one or reach a terminal.

`build(http_config)` returns the callable that the HTTP server calls with each finished request's
handler (sources/httpserver.py RequestHandler.log_request), or None when the log is off: then the
server skips it, and the access log costs nothing.
"""
import datetime
import json
import logging
import sys

from . import logsetup
from .safetext import json_line, one_line

LOGGER = "zspark.access"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def build(http_config):
    """The access log the config asks for (a callable taking a request handler), or None."""
    if http_config.access_log == "off":
        return None
    path = http_config.access_log_file
    handler = logsetup.file_handler(path) if path else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.propagate = False  # its own lines, not records of zspark's log
    logger.setLevel(logging.INFO)
    line = _combined if http_config.access_log == "combined" else _json
    return lambda request: logger.info("%s", line(_fields(request)))


def _fields(request):
    """What a line says about a finished request (a pywsgi WSGIHandler)."""
    environ = getattr(request, "environ", None) or {}
    address = request.client_address
    status = (request._orig_status or "000").split(" ", 1)[0]
    finished = request.time_finish or request.time_start
    return {
        "time": request.time_start,
        "remote": address[0] if isinstance(address, tuple) else str(address or "-"),
        "requestline": request.requestline or "",
        "method": request.command or "",
        "path": getattr(request, "path", "") or "",
        "protocol": request.request_version or "",
        "status": int(status) if status.isdigit() else 0,
        "bytes": request.response_length or 0,
        "duration_ms": round((finished - request.time_start) * 1000, 3),
        "referrer": environ.get("HTTP_REFERER", ""),
        "user_agent": environ.get("HTTP_USER_AGENT", ""),
    }


def _quoted(text):
    return '"' + one_line(text.replace("\\", "\\\\").replace('"', '\\"')) + '"' if text else '"-"'


def _combined(f):
    t = datetime.datetime.fromtimestamp(f["time"], datetime.timezone.utc)
    when = f"{t.day:02d}/{_MONTHS[t.month - 1]}/{t.year}:{t:%H:%M:%S} +0000"
    return (f"{one_line(f['remote'])} - - [{when}] {_quoted(f['requestline'])} {f['status']} {f['bytes']} "
            f"{_quoted(f['referrer'])} {_quoted(f['user_agent'])}")


def _json(f):
    line = {"time": logsetup.iso_time(f["time"]), **{k: v for k, v in f.items() if k not in ("time", "requestline")}}
    return json_line(json.dumps(line, ensure_ascii=False))
