"""Print journal events as JSON lines (the last 10 by default; -f to follow).

Reads the journal files directly, read-only: it works while the server runs and while it is
stopped. Damaged records are skipped with a warning on stderr.

  zcmd -y development.yaml tail              the last 10 events
  zcmd -y development.yaml tail -n 100 -f    the last 100, then follow new ones
  zcmd -y development.yaml tail --from-offset 0 --offsets
"""
import os
import sys

from ..journal import JournalView, Reader, decode_event, event_to_json


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                       help="start with the last N events (default 10)")
    where.add_argument("--from-offset", type=int, metavar="OFFSET",
                       help="start at this journal offset instead")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they arrive")
    parser.add_argument("--offsets", action="store_true", help="add each record's journal offset as \"_offset\"")
    parser.add_argument("--journal", metavar="DIR", help="journal directory (default: journal.dir from the config)")


def run(args, config):
    directory = args.journal or config.journal.dir
    if not os.path.isdir(directory):
        print(f"zcmd tail: no journal at {directory} (config key journal.dir)", file=sys.stderr)
        return 1
    start = args.from_offset
    if start is None:
        start = JournalView(directory).start_of_last(args.lines)
    reader = Reader(directory, start)
    out = sys.stdout
    try:
        while True:
            batch = reader.read()
            for offset, payload in batch:
                try:
                    event = decode_event(payload)
                except Exception as e:  # an intact record that is not BSON: say so, go on
                    print(f"zcmd tail: offset {offset}: not an event: {e}", file=sys.stderr)
                    continue
                out.write(event_to_json(event, _offset=offset) if args.offsets else event_to_json(event))
                out.write("\n")
            if batch:
                out.flush()
                continue
            if not args.follow:
                return 0
            reader.wait()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error
        return 0
    finally:
        reader.close()
