"""Print journal events as JSON lines (the last 10 by default; -f to follow).

Reads the journal files directly, read-only: it works while the server runs and while it is
stopped. Damaged records are skipped with a warning on stderr. With --server it instead follows a
running server's live events over HTTP (GET /tail), touching no file: from another machine, or
without read access to the journal.

--type and --topic (each may repeat: any of its values) are shell wildcards matched against the
whole value, case-sensitively: 'page.*', 'web?', '[!x]*'; '[*]' is a literal *. They select
first: -n N is the last N matching events (looking back at most --lookback records), not the
matching ones among the last N. `zcmd replay` and GET /tail take the same patterns.

  zcmd -y development.yaml tail              the last 10 events
  zcmd -y development.yaml tail -n 100 -f    the last 100, then follow new ones
  zcmd -y development.yaml tail --from-offset 0 --offsets
  zcmd -y development.yaml tail -n 5 --type 'checkout.*'              the last 5 checkout events
  zcmd -y development.yaml tail --server --type click --topic web     live, from the server
  zcmd tail --server --url https://10.0.0.5:8080/tail -n 0

Exit status: 0; 1 no journal (or the stream from the server broke off); 2 bad arguments; 3 no
server answered (--server); 130 stopped by Ctrl-C.
"""
import os
import socket
import sys
import urllib.parse

from . import argtypes
from ..journal import JournalView, event_to_json
from ..recordfilter import RecordFilter, start_of_last
from ..safetext import json_line, one_line
from .running import BadAnswer, NoServer, open_url, server_url

STREAM_TIMEOUT_S = 30.0  # the server sends a keep-alive every few seconds; this long without one: gone
LOOKBACK = 100000  # records looked back over, at most, for the last -n matching events
PATTERN_HELP = "shell wildcards such as 'page.*' allowed; may repeat"


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--lines", type=argtypes.record_count, default=10, metavar="N",
                       help="start with the last N (matching) events (default 10)")
    where.add_argument("--from-offset", type=argtypes.offset, metavar="OFFSET",
                       help="start at this journal offset instead")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they arrive")
    parser.add_argument("--offsets", action="store_true", help="add each record's journal offset as \"_offset\"")
    parser.add_argument("--journal", metavar="DIR", help="journal directory (default: journal.dir from the config)")
    parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                        help=f"only events of this type ({PATTERN_HELP})")
    parser.add_argument("--topic", action="append", default=[], metavar="TOPIC",
                        help=f"only events of this topic ({PATTERN_HELP})")
    parser.add_argument("--lookback", type=argtypes.record_count, metavar="RECORDS",
                        help=f"with --type/--topic, look back over at most this many records for the "
                             f"last -n matching events (default {LOOKBACK})")
    server = parser.add_argument_group("from a running server")
    server.add_argument("--server", action="store_true",
                        help="follow the running server's live events over HTTP (GET /tail) instead of "
                             "reading the journal files; -n N starts with the last N matching events "
                             "(looking back at most the server's http.tail_max_last records)")
    server.add_argument("--url", help="the /tail URL (default: from http.host, http.port and http.root)")


def run(args, config):
    if args.server:
        if args.from_offset is not None or args.journal or args.offsets or args.lookback is not None:
            print("zcmd tail: --from-offset, --journal, --offsets and --lookback read the journal files; "
                  "they do not go with --server (its http.tail_max_last bounds the look back)", file=sys.stderr)
            return 2
        return _follow_server(args, config)
    wanted = RecordFilter({"type": args.type, "topic": args.topic})
    directory = args.journal or config.journal.dir
    if not os.path.isdir(directory):
        print(f"zcmd tail: no journal at {directory} (config key journal.dir)", file=sys.stderr)
        return 1
    view = JournalView(directory)
    reader = view.reader(args.from_offset or 0)
    out = sys.stdout
    try:
        if args.from_offset is None:
            reader.seek(start_of_last(reader, view.first_offset(), view.end_offset(), args.lines, wanted,
                                      LOOKBACK if args.lookback is None else args.lookback))
        while True:
            batch = reader.read()
            for offset, event in wanted.select(batch, _not_an_event):
                out.write(json_line(event_to_json(event, _offset=offset) if args.offsets else event_to_json(event)))
                out.write("\n")
            if batch:
                out.flush()
                continue
            if not args.follow:
                return 0
            reader.wait()
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error
        return 0
    except OSError as e:  # a segment unreadable, or a symbolic link, which readers never follow
        print(f"zcmd tail: cannot read the journal: {e}", file=sys.stderr)
        return 1
    finally:
        reader.close()


def _not_an_event(offset, payload, error):
    """An intact record that is not BSON: say so, go on."""
    print(f"zcmd tail: offset {offset}: not an event: {one_line(error)}", file=sys.stderr)


def _follow_server(args, config):
    query = [("last", str(max(args.lines, 0)))] + [("type", t) for t in args.type] + [("topic", t) for t in args.topic]
    url = (args.url or server_url(config, "/tail")) + "?" + urllib.parse.urlencode(query)
    try:
        stream = open_url(url, config, timeout=STREAM_TIMEOUT_S, accept="application/x-ndjson")
    except NoServer as e:
        print(f"zcmd tail: {one_line(e)}; is `zcmd serve` running?", file=sys.stderr)
        return 3
    except BadAnswer as e:
        print(f"zcmd tail: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"zcmd tail: following {url.split('?')[0]}", file=sys.stderr, flush=True)
    out = sys.stdout
    try:
        with stream:
            for line in stream:
                if line.strip():  # empty lines are the server's keep-alives
                    # The same JSON, with what a terminal would act on escaped: the server's text
                    # (its events and whatever else it sends) is not trusted with the terminal.
                    out.write(json_line(line.decode("utf-8", "replace").rstrip("\r\n")) + "\n")
                    out.flush()
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except (OSError, socket.timeout) as e:
        print(f"zcmd tail: the stream from the server broke off: {one_line(e)}", file=sys.stderr)
        return 1
    print("zcmd tail: the server ended the stream (it is stopping)", file=sys.stderr)
    return 0
