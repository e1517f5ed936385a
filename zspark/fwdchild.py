"""A forwarder process (`forward.own_process`): `python -m zspark.fwdchild SINK`, started and
supervised by the serving process (zspark/fwdproxy.py, over zspark/children.py's link).

It builds its one sink from the config the owner sent (the sink registry), and runs the
unchanged Forwarder loop over the journal directory, read-only, from its cursor
(journal/follow.py): it reads nothing past the durable end the owner tells it. It sends back
what the owner shows and needs of a forwarder (the message kinds are listed in fwdproxy.py):
its as_dict() when it changes, and per confirmed batch the offsets and, for the sink that drives
the hour-complete notices, the events counted per (hour, topic). Events never cross the link.

The Kafka process routes events to topics, so it is the one writer of kafka/topics.json
(zspark/topics.py) and reports the topics it took. It ignores SIGINT and SIGTERM (the owner says
when to stop, after the drain: "stop" saves the cursor and exits 0) and exits at once when the
owner is gone. If it cannot build its sink it says so ("error") and exits 3.
"""
from gevent import monkey

monkey.patch_all()  # before anything imports socket, threading or pymongo

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from . import children, logsetup, sinks  # noqa: E402
from .children import LinkError  # noqa: E402
from .forwarders import make_forwarder  # noqa: E402
from .journal.follow import FollowedJournal  # noqa: E402
from .topics import TopicPolicy, state_path  # noqa: E402

log = logging.getLogger("zspark.fwdchild")

EXIT_NO_SINK = 3
REPORT_EVERY_S = 0.2
_COUNTERS_IGNORED = ("lag",)  # the owner works the lag out from its own journal end


class _LinkedDamage:
    """The journal damage this process's readers find, reported to the owner's journal (its
    Damage logs and counts each place once, whichever reader found it)."""

    def __init__(self, link):
        self.link = link

    def skipped(self, key, nbytes, message):
        self.link.send({"kind": "damage", "what": "skipped", "key": list(key), "nbytes": nbytes,
                        "message": message})

    def missing(self, start, end, message):
        self.link.send({"kind": "damage", "what": "missing", "start": start, "end": end,
                        "message": message})


class ForwarderChild:
    def __init__(self, link, config, name):
        self.link = link
        self.config = config
        self.name = name
        sink_type = sinks.get(name)
        self.topics = None
        # Only the process that routes events to Kafka topics writes the topics taken (topics.py).
        self.routes_topics = config.kafka.enabled and sink_type.section == "kafka"
        if config.kafka.enabled:
            self.topics = TopicPolicy(config.kafka, state_path(config.journal.dir),
                                      persist=self.routes_topics)
        self.sink = sinks.build(name, config, sinks.Context(config, topics=self.topics))
        self.journal = FollowedJournal(config.journal.dir, _LinkedDamage(link))
        self.forwarder = make_forwarder(self.journal, self.sink, config.forward)
        nc = config.notices
        self.counting = sink_type.tracks_hours and nc.enabled and nc.hour_complete
        self.forwarder.on_delivered = self._delivered
        self.forwarder.counts_hours = self.counting
        self._reported = None
        self._topics_reported = None

    def run(self):
        try:
            # The owner's first word is the journal's durable end: known before the forwarder starts.
            if not self._handle(self.link.recv()[0]):
                self.sink.close()
                return 0
            greenlet = self.forwarder.start()
            greenlet.link_exception(self._forwarder_died)
            gevent.sleep(0)  # let it start: the first report shows it running
            self.link.send({"kind": "ready", "pid": os.getpid(), "destination": self.sink.describe(),
                            "forwarder": self._state()})
            reporter = gevent.spawn(self._report_loop)
            while self._handle(self.link.recv()[0]):
                pass
            reporter.kill()
            self.forwarder.stop(self.config.forward.stop_timeout_s)
            self._report(force=True)
            return 0
        except (EOFError, ConnectionError):
            log.warning("forwarder %s (pid %d): the serving process is gone; exiting", self.name, os.getpid())
            os._exit(1)  # at once: the cursor is saved per batch, the batch in flight is sent again

    def _handle(self, header):
        """Act on a message from the owner; False for "stop"."""
        kind = header["kind"]
        if kind == "durable":
            try:
                self.journal.advance(int(header["end"]), int(header["segment"]), int(header["bytes"]))
            except (KeyError, TypeError, ValueError) as e:
                raise LinkError(f"a malformed durable message: {e!r}") from None
            return True
        if kind == "stop":
            return False
        raise LinkError(f"a message of kind {kind!r} from the owner")

    def _state(self):
        state = self.forwarder.as_dict()
        for key in _COUNTERS_IGNORED:
            state.pop(key, None)
        return state

    def _delivered(self, first, next_offset, hours):
        header = {"kind": "delivered", "first": first, "next": next_offset, "forwarder": self._state()}
        if self.counting:
            header["counts"] = hours.as_list()
        self._add_topics(header)
        self.link.send(header)
        self._reported = header["forwarder"]

    def _add_topics(self, header):
        if self.routes_topics:
            report = self.topics.routing_report()
            if report != self._topics_reported:
                header["topics"] = self._topics_reported = report

    def _report(self, force=False):
        state = self._state()
        header = {"kind": "status", "forwarder": state}
        self._add_topics(header)
        if force or state != self._reported or "topics" in header:
            self.link.send(header)
            self._reported = state

    def _report_loop(self):
        while True:
            gevent.sleep(REPORT_EVERY_S)
            self._report()

    def _forwarder_died(self, greenlet):
        log.critical("forwarder %s (pid %d) died: %r; exiting (the serving process starts it again)",
                     self.name, os.getpid(), greenlet.exception)
        os._exit(1)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    link, config = children.attach()
    logsetup.setup(config.log.level, format=config.log.format, path=config.log.file)
    gevent.signal_handler(signal.SIGHUP, logsetup.reopen)  # log rotation: SIGHUP to the process group
    name = argv[0]
    try:
        child = ForwarderChild(link, config, name)
    except Exception as e:  # a bad broker list or URI, a PUB address in use
        message = f"cannot set up forwarding: {e}"
        log.error("forwarder %s (pid %d): %s", name, os.getpid(), message)
        link.send({"kind": "error", "error": message})
        return EXIT_NO_SINK
    try:
        return child.run()
    except LinkError as e:
        log.critical("forwarder %s (pid %d): bad message from the serving process: %s", name, os.getpid(), e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
