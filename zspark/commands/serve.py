"""Run the appliance: HTTP and ZeroMQ sources and the journal in one gevent process.

SIGTERM or SIGINT stops it gracefully: it stops accepting, answers the requests in flight,
journals what the ZeroMQ sockets hold, syncs the journal and exits 0. SIGHUP reopens the log files
and reloads what can change while serving: tokens, log level (zspark/reload.py). Exit 1 means a
part of the server failed while running; exit 3 that it could not start (the message says why).
"""
import gc
import logging
import signal
import sys

import gevent

from ..reload import Reloader
from ..server import Server, StartupError

log = logging.getLogger("zspark.serve")
EXIT_STARTUP = 3


def add_arguments(parser):
    pass


def run(args, config):
    server = Server(config)
    # Before start(): HTTP answers (/imok) while start() is still journaling node_online, and a
    # SIGTERM then must stop the server cleanly, not kill it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.request_stop, signal.Signals(signum).name)
    gevent.signal_handler(signal.SIGHUP, Reloader(server).on_sighup)  # before start() changes the config
    try:
        server.start()
    except StartupError as e:
        log.error("cannot start: %s", e)
        print(f"zcmd serve: cannot start: {e}", file=sys.stderr)
        return EXIT_STARTUP
    # Everything allocated so far lives as long as the process: keep the collector from walking
    # it again, and let young objects (a batch's events) pile up a little longer before a
    # collection; ingest allocates many short-lived, acyclic objects.
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    return server.run()
