"""An interactive Python console with zspark's MongoDB database, config, journal and client ready.

IPython when it is installed (--plain for the standard console), else the standard console:

  ZM       the MongoDB database of mongo.uri / mongo.database, as Zarkov's Ming model:
           ZM.event.m.find().all() (mingview.py), and pymongo's ZM.event.find() too
           (connects at the first query: the shell starts even when MongoDB is down)
  config   the loaded Config: config.journal.dir, config.mongo.uri ...
  journal  the journal, READ-ONLY (no lock, no recovery, no writes: safe beside a running server):
           journal.last(5), journal.events(start, stop), journal.get(offset), journal.segments(),
           journal.first_offset(), journal.end_offset(), journal.cursors()
  client   a ZSparkClient connected to the BSON socket (zmq.bson_bind; 0.0.0.0 or * -> 127.0.0.1):
           client.event("page_view", {"user": "rick"})

  zcmd -y development.yaml shell
  zcmd -y development.yaml shell -c "print(ZM.event.count_documents({}))"

With -c the code runs and the shell exits: status 0, or 1 with the traceback on stderr if it
raised (sys.exit(N) exits N).
"""
import code
import sys
import traceback

from .. import __version__
from ..client import ZSparkClient
from ..journal import JournalView
from ..redact import redact
from ..safetext import one_line
from .mingview import Database
from .running import bson_address

CLIENT_LINGER_MS = 2000  # at exit, how long queued client events may take to go out


def add_arguments(parser):
    parser.add_argument("-c", dest="code", metavar="CODE",
                        help="run CODE with the same names ready, then exit (for scripts)")
    parser.add_argument("--plain", action="store_true",
                        help="the standard Python console even when IPython is installed")


def run(args, config):
    from ..sinks.mongo import connect  # pymongo's import is slow; only needed here

    mongo = connect(config.mongo, socketTimeoutMS=None)  # no time limit on a long query
    address = bson_address(config)
    client = ZSparkClient(address) if address else None
    namespace = {"ZM": Database(mongo[config.mongo.database]), "config": config,
                 "journal": JournalView(config.journal.dir), "client": client}
    try:
        if args.code is not None:
            return _run_code(args.code, namespace)
        _interact(namespace, banner(config, address, redact(config.mongo.uri)), args.plain)
        return 0
    finally:
        if client is not None:
            client.close(CLIENT_LINGER_MS)
        mongo.close()


def banner(config, address, mongo_uri):
    journal = JournalView(config.journal.dir)
    if journal.exists():
        where = (f"{journal.directory}, READ-ONLY: offsets {journal.first_offset()}.."
                 f"{journal.end_offset()}, {len(journal.segments())} segment(s)")
    else:
        where = f"{journal.directory} (no journal there yet)"
    coll = config.mongo.collection
    find = f"ZM.{coll}" if coll.isidentifier() else f"ZM[{coll!r}]"
    lines = [
        f"zspark {__version__} shell (config {config.source})",
        f"  ZM       MongoDB database {config.mongo.database!r} at {mongo_uri}"
        " (connects at the first query)",
        f"           as Zarkov's Ming model: {find}.m.find().all(), {find}.m.get(type='x')",
        f"           and pymongo's: {find}.find().limit(5), {find}.count_documents({{}})",
        "  config   the loaded config: config.journal.dir, config.mongo.uri, ...",
        f"  journal  the journal in {where}",
        "           journal.last(5), journal.events(start, stop), journal.get(offset), journal.cursors()",
    ]
    if address:
        lines += [f"  client   ZSparkClient to {address} (the BSON socket)",
                  "           client.event('page_view', {'user': 'rick'})"]
    else:
        lines.append("  client   None: zmq.bson_bind is empty, the BSON socket is off")
    return "\n".join(one_line(line) for line in lines)  # paths, URIs, names: nothing moves the cursor


def _run_code(source, namespace):
    try:
        exec(compile(source, "<zcmd shell -c>", "exec"), namespace)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
    return 0


def _interact(namespace, text, plain):
    if not plain:
        try:
            import IPython
        except ImportError:
            pass
        else:
            print(text)
            IPython.start_ipython(argv=["--no-banner"], user_ns=namespace)
            return
    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:  # no readline on this platform: the console works without completion
        pass
    code.interact(banner=text, local=namespace, exitmsg="")
