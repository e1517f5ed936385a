"""How zspark's log is written: one line per record, whoever logged it and whatever it holds.

A record is one line, `2026-11-23 13:00:00,123 WARNING zspark.http: message`: its message (after
%-formatting, so also the arguments, which may be a sender's text) goes through
`safetext.one_line`, so no newline, CR, escape sequence or line separator in it can start a line
of its own or reach the operator's terminal. A traceback or stack (exc_info, stack_info) follows
its record on continuation lines, each starting with CONTINUATION ("  | ") and escaped the same
way: a line that starts with a date is a record zspark wrote, any other line belongs to the record
above it.

With `log.format: json` a record is instead one JSON object per line (`time`, `level`, `logger`,
`message`, and `traceback` when there is one), escaped the same way (`safetext.json_line`), for
log shippers (Vector, Fluent Bit) that read JSON lines.

`log.file` sends the log to a file instead of stderr; `reopen()` (SIGHUP) opens every log file
zspark writes (this one, and the access log's: `file_handler`) again at its path, so that
logrotate can move them away.

`setup(level)` installs this on the root logger, so it holds for every library too, and routes
what would otherwise bypass logging and be written to stderr raw into it: gevent's hub (an
exception a greenlet or a thread pool task did not catch) and Python warnings. A KeyboardInterrupt
(Ctrl-C) is not an error: the hub passes it on to the main greenlet without a word, and `zcmd`
exits 130 quietly.
"""
import datetime
import json
import logging
import sys

from .safetext import json_line, one_line

RECORD_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONTINUATION = "  | "


class OneLineFormatter(logging.Formatter):
    """A Formatter whose output is one escaped line, plus continuation lines for a traceback."""

    def __init__(self, fmt=RECORD_FORMAT, datefmt=None):
        super().__init__(fmt, datefmt)

    def format(self, record):
        try:
            record.message = record.getMessage()
        except Exception as e:  # a caller's format and arguments do not match: still one record
            record.message = f"unformattable log message {record.msg!r} % {record.args!r}: {e!r}"
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [one_line(self.formatMessage(record))]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                lines.extend(CONTINUATION + one_line(line) for line in block.split("\n"))
        return "\n".join(lines)


class JsonLineFormatter(logging.Formatter):
    """A Formatter whose output is one JSON object on one line: time (UTC, ISO 8601), level,
    logger, message, and traceback when the record has one."""

    def format(self, record):
        try:
            message = record.getMessage()
        except Exception as e:  # as OneLineFormatter: still one record
            message = f"unformattable log message {record.msg!r} % {record.args!r}: {e!r}"
        line = {"time": iso_time(record.created), "level": record.levelname, "logger": record.name, "message": message}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        trace = "\n".join(block for block in (record.exc_text, record.stack_info and self.formatStack(
            record.stack_info)) if block)
        if trace:
            line["traceback"] = trace
        return json_line(json.dumps(line, ensure_ascii=False, default=str))


def iso_time(seconds):
    """Seconds since the epoch as ISO 8601 UTC to the millisecond: 2026-11-23T13:00:00.123Z."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


FORMATTERS = {"text": OneLineFormatter, "json": JsonLineFormatter}  # log.format
_files = []  # the FileHandlers of every log file, for reopen()


def file_handler(path):
    """A handler appending to the file at `path`, reopened by reopen()."""
    handler = logging.FileHandler(path, encoding="utf-8")
    _files.append(handler)
    return handler


def reopen():
    """Open every log file again at its path (after logrotate moved it away)."""
    for handler in _files:
        handler.acquire()
        try:
            if handler.stream is not None:
                handler.stream.close()
            handler.stream = handler._open()
        finally:
            handler.release()


def set_level(level):
    """Change the level of zspark's log ("info", "debug", ...) while it runs."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def setup(level, stream=None, format="text", path=""):
    """Log records of `level` ("info", "debug", ...) and above to `stream` (stderr), or the file
    at `path`, one line each in `format` (FORMATTERS), unless the root logger is configured
    already (as logging.basicConfig does)."""
    handler = file_handler(path) if path else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[format]())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.captureWarnings(True)  # warnings.warn() texts through the formatter, not raw to stderr
    _route_gevent_errors()


def _route_gevent_errors():
    """gevent's hub prints an exception no greenlet caught straight to stderr, its message and
    all; make it a log record (logger `gevent.hub`) instead. Set on the class, so that the hubs of
    thread pool threads do the same."""
    import gevent.hub

    hub_class = gevent.hub.Hub
    if getattr(hub_class.print_exception, "_zspark", False):
        return
    # The hub still raises it in the main greenlet (it is a SYSTEM_ERROR); it only stops printing it.
    hub_class.NOT_ERROR = (*hub_class.NOT_ERROR, KeyboardInterrupt)
    original = hub_class.print_exception

    def print_exception(hub, context, type_, value, tb):
        try:
            if context is not None and not isinstance(context, str):
                try:
                    context = hub.format_context(context)
                except Exception:
                    context = object.__repr__(context)
            exc_info = (type_, value, tb) if isinstance(value, BaseException) else None
            logging.getLogger("gevent.hub").error(
                "%s failed with %s%s", context or "the event loop", getattr(type_, "__name__", type_),
                "" if exc_info else f": {value}", exc_info=exc_info)
        except Exception:  # must not raise (gevent's contract): fall back to gevent's own printing
            original(hub, context, type_, value, tb)

    print_exception._zspark = True
    hub_class.print_exception = print_exception
