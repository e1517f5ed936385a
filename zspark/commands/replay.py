"""Re-send journal records to a sink (Kafka, MongoDB, ZeroMQ PUB) or print them, with a progress bar.

Reads the journal files directly and read-only, like `zcmd tail`: it works while the server runs
and while it is stopped, and it never moves (or even opens) the forwarders' cursors, so the live
forwarders carry on exactly where they were. The destination is the sink --to names (kafka, mongo,
pub, or any sink in the registry of zspark/sinks/), built from its config section whether or not
that section is `enabled`.

Selecting records (all the conditions given must hold):

  --from-offset N     first journal offset to replay (inclusive; default: the oldest on disk)
  --to-offset M       last journal offset to replay (INCLUSIVE: "--from-offset 100 --to-offset
                      199" replays 100 records; default: the last record on disk when the replay
                      starts; records appended while it runs are not included)
  --since TIME        event `timestamp` (when zspark received it) at or after TIME (inclusive)
  --until TIME        event `timestamp` before TIME (exclusive)
  --type T ...        event `type` is one of these (shell wildcards allowed: 'page.*')
  --topic T ...       event `topic` field is one of these (wildcards allowed); this is the event's
                      field, not the Kafka topic (see --kafka-topic for that)

A pattern is a shell wildcard matched against the whole value, case-sensitively: `*` any
characters, `?` one, `[abc]`/`[!abc]` one of (none of) those, `[*]` a literal *; `zcmd tail` and
GET /tail take the same patterns.

TIME is ISO 8601 ("2024-05-01", "2024-05-01T12:30:00Z", "2024-05-01 14:30+02:00"; no zone means
UTC), a time ago ("30s", "30m", "2h", "1d", "1w", "1h30m", "2h ago") or "now". A time selection
still reads the whole offset range; add --from-offset to start nearer.

Delivery: batches of --batch-size records (default forward.batch_size) go through the same sink
code as the forwarders, so MongoDB replays are idempotent (each event keeps its `_id`: replaying
twice leaves one copy) and a Kafka batch counts only once every delivery report came back. A
batch that fails for a transient reason is retried with backoff for up to --timeout seconds (each
attempt waits at most a third of that), then the replay stops with exit status 1. The destination is checked for reachability first (its
healthcheck, within --timeout: Kafka and MongoDB must answer) so that an unreachable destination
fails fast with a clear message. Records the
destination refuses for good are listed on stderr with the reason, and the replay goes on.
ZeroMQ PUB has no acknowledgements: subscribers must be connected (see --pub-wait) and keep up,
or they miss events. Kafka is at-least-once: replaying sends the events again as new messages.

At the end a summary goes to stderr: records scanned, matched, sent, refused, damaged bytes
skipped. Exit status: 0 all matched records were sent (or printed, or counted with --dry-run);
1 some were refused or could not be delivered; 2 bad arguments or an unusable config.

Examples:

  zcmd -y prod.yaml replay --to mongo --since 2h
        re-insert the last two hours into MongoDB (events already there are left as they are)
  zcmd -y prod.yaml replay --to kafka --from-offset 120000 --to-offset 129999 --type 'checkout.*'
        re-send checkout events among offsets 120000..129999 to Kafka
  zcmd -y prod.yaml replay --to kafka --since 2024-05-01 --until 2024-05-02 --dry-run
        count what a day's replay would send, without connecting to anything
  zcmd -y prod.yaml replay --to kafka --kafka-topic replayed.{type} --since 1d
        send a day's events to other topics than the live forwarder's
  zcmd -y prod.yaml replay --to stdout --topic billing --since 30m --offsets | jq .
        print the selected events as JSON lines, as `zcmd tail` does
  zcmd -y prod.yaml replay --to pub --pub-bind tcp://127.0.0.1:7000 --pub-wait 2 --since 10m
        replay to ZeroMQ subscribers on another address than the running server's PUB socket
"""
import argparse
import contextlib
import datetime
import os
import re
import sys
import time

import gevent

from . import argtypes
from .. import sinks
from ..errors import RETRYABLE, CommandError, PermanentDeliveryError, describe
from ..journal import Reader, decode_records, event_to_json, list_segments
from ..journal.journal import last_offset_on_disk
from ..recordfilter import RecordFilter
from ..retry import Backoff
from ..safetext import json_line, one_line
from ..sinks import first_line as _first_line

UTC = datetime.timezone.utc
STDOUT = "stdout"
# Destination options: (option, args attribute, the sink it goes with, the field of its section it
# replaces).
OVERRIDES = (("--kafka-topic", "kafka_topic", "kafka", "topic"),
             ("--mongo-collection", "mongo_collection", "mongo", "collection"),
             ("--pub-bind", "pub_bind", "pub", "bind"))
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 5.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+(?:\s*ago)?", re.IGNORECASE)
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])", re.IGNORECASE)


class UsageError(CommandError):
    """Bad arguments or a config the replay cannot use: exit status 2."""


class DeliveryFailed(CommandError):
    """A batch could not be delivered within --timeout: exit status 1."""


# -- arguments ----------------------------------------------------------------------------------

def parse_time(text, now=None):
    """ISO 8601 (no zone = UTC), a time ago ('2h', '30m', '1d', '1h30m', '2h ago') or 'now'."""
    now = now or datetime.datetime.now(UTC)
    value = text.strip()
    if value.lower() == "now":
        return now
    try:
        if _RELATIVE.fullmatch(value):
            seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _RELATIVE_PART.findall(value))
            return now - datetime.timedelta(seconds=seconds)
        parsed = datetime.datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use ISO 8601 such as 2024-05-01T12:00:00Z, a time ago such "
            "as 30m, 2h, 1d, or 'now')") from None
    except OverflowError:
        raise argparse.ArgumentTypeError(f"time out of range: {text!r}") from None


def add_arguments(parser):
    parser.add_argument("--to", required=True, choices=(*sinks.names(), STDOUT),
                        help=f"where to send: {', '.join(sinks.names())} (the config's sections of "
                             "those names, enabled or not) or stdout (JSON lines)")
    sel = parser.add_argument_group("selecting records (all given conditions must hold)")
    sel.add_argument("--from-offset", type=argtypes.offset, metavar="N",
                     help="first journal offset, inclusive (default: the oldest on disk)")
    sel.add_argument("--to-offset", type=argtypes.offset, metavar="M",
                     help="last journal offset, INCLUSIVE (default: the last on disk at the start)")
    sel.add_argument("--since", type=parse_time, metavar="TIME",
                     help="event timestamp at or after TIME: ISO 8601 (no zone = UTC) or a time ago "
                          "such as 30m, 2h, 1d")
    sel.add_argument("--until", type=parse_time, metavar="TIME",
                     help="event timestamp before TIME (exclusive); same forms as --since")
    sel.add_argument("--type", dest="types", nargs="+", action="extend", metavar="T",
                     help="event type is one of these (repeatable; shell wildcards such as 'page.*')")
    sel.add_argument("--topic", dest="topics", nargs="+", action="extend", metavar="T",
                     help="event topic field is one of these (repeatable; wildcards allowed)")
    how = parser.add_argument_group("how")
    how.add_argument("--dry-run", action="store_true",
                     help="count what would be sent; connect to nothing, send nothing")
    how.add_argument("--batch-size", type=argtypes.positive_int, metavar="N",
                     help="records per batch sent (default: forward.batch_size from the config)")
    how.add_argument("--timeout", type=argtypes.seconds, default=30.0, metavar="SECONDS",
                     help="how long to try to reach the destination, and to retry a failing batch, "
                          "before giving up with exit status 1 (default 30)")
    bar = how.add_mutually_exclusive_group()
    bar.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="no progress bar (default: shown when stderr is a terminal)")
    bar.add_argument("--progress", dest="progress", action="store_true",
                     help="show the progress bar on stderr even when it is not a terminal")
    how.add_argument("--journal", metavar="DIR", help="journal directory (default: journal.dir from the config)")
    dest = parser.add_argument_group("destination overrides (the config's values otherwise)")
    dest.add_argument("--offsets", action="store_true",
                      help="stdout: add each record's journal offset as \"_offset\"")
    dest.add_argument("--kafka-topic", metavar="TEMPLATE",
                      help="kafka: topic template instead of kafka.topic, e.g. 'replay.{type}'")
    dest.add_argument("--mongo-collection", metavar="NAME",
                      help="mongo: collection instead of mongo.collection")
    dest.add_argument("--pub-bind", metavar="ADDRESS",
                      help="pub: bind here instead of pub.bind (needed while the server's own PUB "
                           "socket holds that address)")
    dest.add_argument("--pub-wait", type=argtypes.non_negative_seconds, default=1.0, metavar="SECONDS",
                      help="pub: wait this long for subscribers to connect before sending, and for "
                           "the last messages to leave after (default 1)")


# -- selection ----------------------------------------------------------------------------------

class Selection:
    def __init__(self, args):
        self.since = args.since
        self.until = args.until
        self.fields = RecordFilter({"type": args.types, "topic": args.topics})

    def matches(self, event):
        if self.since is not None or self.until is not None:
            ts = event.get("timestamp")
            if not isinstance(ts, datetime.datetime):
                return False
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts >= self.until:
                return False
        return self.fields.matches(event)


# -- destinations -------------------------------------------------------------------------------

class StdoutTarget:
    def __init__(self, with_offsets):
        self.with_offsets = with_offsets
        self.out = sys.stdout

    def describe(self):
        return "stdout"

    def send(self, items):
        lines = [json_line(event_to_json(e, _offset=o) if self.with_offsets else event_to_json(e))
                 for o, e in items]
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        return []

    def healthcheck(self, timeout):
        pass

    def close(self, abandon=False):
        pass


def build_target(args, config):
    """The sink for --to, from the config section of that name (enabled or not) with overrides.

    The sink's own timeouts are capped at a third of --timeout, so that a destination that stops
    answering is noticed in time and a batch gets a few attempts within --timeout.
    """
    if args.to == STDOUT:
        return StdoutTarget(args.offsets)
    context = sinks.Context(config, replay=True, timeout_ms=max(1000, int(args.timeout * 1000 / 3)),
                            linger_s=args.pub_wait)
    overrides = {field: getattr(args, attr) for _, attr, to, field in OVERRIDES
                 if to == args.to and getattr(args, attr) is not None}
    try:
        return sinks.build(args.to, config, context, **overrides)
    except Exception as e:  # a bad broker list or URI, a PUB address in use
        key = "pub.bind or --pub-bind" if args.to == "pub" else sinks.get(args.to).section
        raise UsageError(f"cannot set up {args.to} (config {key}): {e}") from None


def check_reachable(sink, timeout):
    """Fail fast, with a clear message, when the destination cannot be reached within `timeout`."""
    try:
        sink.healthcheck(timeout)
    except sinks.Unreachable as e:
        raise DeliveryFailed(str(e)) from None


def deliver(sink, items, timeout):
    """`sink.send(items)` with retries and backoff for up to `timeout` seconds; return refused.
    A transient failure is retried (zspark/errors.py RETRYABLE), a permanent one ends the replay,
    anything else is a bug and goes up with its traceback."""
    backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S, jitter=0.3, timeout=timeout)
    where = f"offsets {items[0][0]}..{items[-1][0]}"
    while True:
        try:
            return sink.send(items)
        except RETRYABLE as e:
            reason = _first_line(describe(e))
            delay = backoff.failed()
            if delay is None:
                raise DeliveryFailed(f"giving up on {where} after {backoff.attempt} attempt(s) in "
                                     f"{timeout:g}s (--timeout): {reason}") from None
            _say(f"zcmd replay: sending {where} failed (attempt {backoff.attempt}), "
                 f"retrying in {delay:.1f}s: {reason}")
            backoff.wait()
        except PermanentDeliveryError as e:
            raise DeliveryFailed(f"{where} refused for good: {_first_line(e)}") from None


# -- the replay ---------------------------------------------------------------------------------

class Counts:
    def __init__(self):
        self.scanned = 0
        self.matched = 0
        self.sent = 0
        self.refused = 0
        self.undecodable = 0
        self.skipped_bytes = 0


_bar = None  # the progress bar while it shows: messages must go around it


def _say(message):
    """A message to stderr (around the progress bar): one line, as it may quote an event or a
    destination's error."""
    message = one_line(message)
    if _bar is not None:
        _bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _progress_bar(args, total):
    show = args.progress
    if show is None:  # auto: only to a terminal, and not over JSON lines going to the same one
        show = sys.stderr.isatty() and not (args.to == STDOUT and sys.stdout.isatty())
    if not show:
        return None
    from tqdm import tqdm
    tqdm.monitor_interval = 0  # no monitor thread: this is a gevent process
    return tqdm(total=total, file=sys.stderr, unit=" rec", dynamic_ncols=True,
                mininterval=0.25, desc="replay", leave=True)


def run(args, config):
    global _bar
    started = time.monotonic()
    try:
        plan = _plan(args, config)
    except UsageError as e:
        _say(f"zcmd replay: {e}")
        return EXIT_USAGE
    directory, start, end = plan  # records start..end-1
    selection = Selection(args)
    batch_size = args.batch_size or config.forward.batch_size or 1000
    counts = Counts()
    target = None
    status = EXIT_OK
    problem = None
    bar = None
    try:
        if not args.dry_run:
            target = build_target(args, config)
            check_reachable(target, args.timeout)
            if args.to == "pub" and args.pub_wait:
                gevent.sleep(args.pub_wait)  # let subscribers connect (ZeroMQ "slow joiner")
        bar = _progress_bar(args, max(0, end - start))
        with contextlib.ExitStack() as stack:
            if bar is not None:
                _bar = bar
                from tqdm.contrib.logging import logging_redirect_tqdm
                stack.enter_context(logging_redirect_tqdm())
            _replay(directory, start, end, selection, batch_size, target, args, counts, bar)
    except UsageError as e:
        _say(f"zcmd replay: {e}")
        return EXIT_USAGE
    except DeliveryFailed as e:
        problem = str(e)
        status = EXIT_FAILED
    except KeyboardInterrupt:
        problem = "interrupted"
        status = EXIT_INTERRUPTED
    except BrokenPipeError:  # `| head`: the reader of stdout went away; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not complain
        os.close(devnull)
        problem = "stdout was closed by its reader"
    except OSError as e:  # the journal could not be read (a permission, a disk error)
        problem = f"reading the journal in {directory} failed: {e}"
        status = EXIT_FAILED
    finally:
        if bar is not None:
            bar.close()
            _bar = None
        if target is not None:
            _close(target, abandon=status != EXIT_OK)
    if counts.refused and status == EXIT_OK:
        status = EXIT_FAILED
    _summary(args, counts, start, end, target, time.monotonic() - started, problem)
    return status


def _plan(args, config):
    """Check the arguments against each other and the journal; return (directory, start, end)."""
    if args.from_offset is not None and args.to_offset is not None and args.from_offset > args.to_offset:
        raise UsageError(f"--from-offset {args.from_offset} is after --to-offset {args.to_offset} "
                         "(--to-offset is inclusive)")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError(f"--since {_iso(args.since)} is not before --until {_iso(args.until)}")
    if args.offsets and args.to != STDOUT:
        raise UsageError("--offsets goes with --to stdout only")
    for option, attr, target, _ in OVERRIDES:
        if getattr(args, attr) is not None and args.to != target:
            raise UsageError(f"{option} goes with --to {target} only")
    if args.mongo_collection is not None and not args.mongo_collection.strip():
        raise UsageError("--mongo-collection must not be empty")
    directory = args.journal or config.journal.dir
    if not os.path.isdir(directory):
        where = "--journal" if args.journal else "config key journal.dir"
        raise UsageError(f"no journal at {directory} ({where})")
    bases = list_segments(directory)
    first = bases[0] if bases else 0
    last = last_offset_on_disk(directory)
    end = 0 if last is None else last + 1
    if args.to_offset is not None:
        end = min(end, args.to_offset + 1)
    start = first if args.from_offset is None else args.from_offset
    if args.from_offset is not None and bases and args.from_offset < first:
        print(f"zcmd replay: note: offsets before {first} are no longer in the journal (retention); "
              f"starting at {first}", file=sys.stderr)
        start = first
    return directory, start, max(start, end)


def _replay(directory, start, end, selection, batch_size, target, args, counts, bar):
    reader = Reader(directory, start)
    pending = []
    position = start  # progress: every offset below this has been looked at

    def skipped(offset, payload, error):  # an intact record that is not an event
        counts.undecodable += 1
        _say(f"zcmd replay: offset {offset}: not an event, skipped: {_first_line(error)}")
    try:
        while position < end:
            records = reader.read(max_records=max(batch_size, 100))
            if not records:
                break
            inside = [r for r in records if r[0] < end]
            counts.scanned += len(inside)
            position = end if len(inside) < len(records) else inside[-1][0] + 1
            for offset, event in decode_records(inside, skipped):
                if not selection.matches(event):
                    continue
                counts.matched += 1
                if target is None:
                    continue  # dry run
                pending.append((offset, event))
                if len(pending) >= batch_size:
                    _send(target, pending, args, counts)
                    pending = []
            counts.skipped_bytes = reader.skipped_bytes
            if bar is not None:
                bar.update(max(0, min(position, end) - start - bar.n))
                bar.set_postfix_str(_progress_note(counts, target), refresh=False)
        if pending:
            _send(target, pending, args, counts)
            pending = []
        if bar is not None:
            bar.set_postfix_str(_progress_note(counts, target), refresh=False)
    finally:
        counts.skipped_bytes = reader.skipped_bytes
        reader.close()


def _progress_note(counts, target):
    if target is None:
        return f"would send {counts.matched}"
    return (f"matched {counts.matched}, sent {counts.sent}"
            + (f", refused {counts.refused}" if counts.refused else ""))


def _send(target, items, args, counts):
    if isinstance(target, StdoutTarget):
        refused = target.send(items)  # nothing to retry: a closed stdout ends the replay
    else:
        refused = deliver(target, items, args.timeout) or []
    for offset, event, reason in refused:
        _say(f"zcmd replay: offset {offset} (_id {event.get('_id')}) refused by {target.describe()}: "
             f"{reason}")
    counts.refused += len(refused)
    counts.sent += len(items) - len(refused)


def _close(target, abandon=False):
    try:
        target.close(abandon=abandon)
    except Exception as e:
        _say(f"zcmd replay: closing {target.describe()} failed: {_first_line(e)}")


def _summary(args, counts, start, end, target, seconds, problem):
    where = "nothing" if end <= start else f"offsets {start}..{end - 1}"
    dest = target.describe() if target is not None else args.to
    parts = [f"scanned {counts.scanned}", f"matched {counts.matched}"]
    if args.dry_run:
        parts.append(f"would send {counts.matched} (dry run: nothing sent)")
    else:
        parts += [f"sent {counts.sent}", f"refused {counts.refused}"]
        unsent = counts.matched - counts.sent - counts.refused
        if unsent:
            parts.append(f"not sent {unsent}")
    parts.append(f"skipped {counts.skipped_bytes} damaged bytes")
    if counts.undecodable:
        parts.append(f"{counts.undecodable} undecodable record(s)")
    if problem:
        _say(f"zcmd replay: {problem}")
    _say(f"zcmd replay: {', '.join(parts)}; {where} to {dest} in {seconds:.1f}s"
         + (" (stopped early)" if problem else ""))


def _iso(moment):
    return moment.isoformat().replace("+00:00", "Z")
