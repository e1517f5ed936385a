"""Print journal events as JSON lines (the last 10 by default; -f to follow).

Reads the journal files directly, read-only: it works while the server runs and while it is
stopped. Damaged records are skipped with a warning on stderr. With --server it instead follows a
running server's live events over HTTP (GET /tail), touching no file: from another machine, or
without read access to the journal.

  zcmd -y development.yaml tail              the last 10 events
  zcmd -y development.yaml tail -n 100 -f    the last 100, then follow new ones
  zcmd -y development.yaml tail --from-offset 0 --offsets
  zcmd -y development.yaml tail --server --type click --topic web     live, from the server
  zcmd tail --server --url https://10.0.0.5:8080/tail -n 0

Exit status: 0; 1 no journal (or the stream from the server broke off); 2 bad arguments; 3 no
server answered (--server); 130 stopped by Ctrl-C.
"""
import os
import socket
import sys
import urllib.parse

from ..journal import JournalView, Reader, decode_event, event_to_json
from ..safetext import json_line, one_line
from .running import BadAnswer, NoServer, open_url, server_url

STREAM_TIMEOUT_S = 30.0  # the server sends a keep-alive every few seconds; this long without one: gone


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                       help="start with the last N events (default 10)")
    where.add_argument("--from-offset", type=int, metavar="OFFSET",
                       help="start at this journal offset instead")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they arrive")
    parser.add_argument("--offsets", action="store_true", help="add each record's journal offset as \"_offset\"")
    parser.add_argument("--journal", metavar="DIR", help="journal directory (default: journal.dir from the config)")
    parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                        help="only events of this type (may repeat)")
    parser.add_argument("--topic", action="append", default=[], metavar="TOPIC",
                        help="only events of this topic (may repeat)")
    server = parser.add_argument_group("from a running server")
    server.add_argument("--server", action="store_true",
                        help="follow the running server's live events over HTTP (GET /tail) instead of "
                             "reading the journal files; -n N starts with the last N records")
    server.add_argument("--url", help="the /tail URL (default: from http.host, http.port and http.root)")


def run(args, config):
    if args.server:
        if args.from_offset is not None or args.journal or args.offsets:
            print("zcmd tail: --from-offset, --journal and --offsets read the journal files; "
                  "they do not go with --server", file=sys.stderr)
            return 2
        return _follow_server(args, config)
    wanted = _selector(args)
    directory = args.journal or config.journal.dir
    if not os.path.isdir(directory):
        print(f"zcmd tail: no journal at {directory} (config key journal.dir)", file=sys.stderr)
        return 1
    reader = Reader(directory, args.from_offset or 0)
    out = sys.stdout
    try:
        if args.from_offset is None:
            reader.seek(JournalView(directory).start_of_last(args.lines))
        while True:
            batch = reader.read()
            for offset, payload in batch:
                try:
                    event = decode_event(payload)
                except Exception as e:  # an intact record that is not BSON: say so, go on
                    print(f"zcmd tail: offset {offset}: not an event: {one_line(e)}", file=sys.stderr)
                    continue
                if not wanted(event):
                    continue
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


def _selector(args):
    types, topics = set(args.type), set(args.topic)
    return lambda event: ((not types or event.get("type") in types)
                          and (not topics or event.get("topic") in topics))


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
