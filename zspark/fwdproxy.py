"""A forwarder in a process of its own (`forward.own_process`), seen from the serving process.

`ForwarderProcess` has the Forwarder's interface (name, cursor.offset, lag, state, delivered,
failed, as_dict, status, drain, stop, on_delivered, sink.describe / sink.topic_for), so the
server, /metrics, the hour tracker and the commands use it as they use a Forwarder. Behind it is
one supervised child (zspark/children.py) running zspark/fwdchild.py for one sink. The journal
is the only data link: no event crosses the link, only these messages:

    owner -> child   config       the Config (children.py's first message)
                     durable      end, segment, bytes: records below `end` are durable, `bytes`
                                  of the active segment `segment`; sent whenever the journal's
                                  end advances (coalesced: the latest end when the link is free)
                     stop         drain is over: finish the batch in flight, save the cursor, exit
    child -> owner   ready        pid, destination, forwarder (its as_dict) once the sink is built
                     error        error: the sink could not be built (the child exits 3)
                     status       forwarder, topics (when changed): its state changed
                     delivered    first, next, forwarder, counts (per [hour, topic, n]; the Kafka
                                  forwarder's, for the hour tracker), topics: a batch confirmed
                     damage       what its readers skipped or found missing in the journal

The counters (delivered, failed, dead_lettered) go on across the child's restarts (the records
a killed run delivered without reporting them count as delivered when the next run starts past
them). While its
process is down the forwarder shows `backing_off` with the exit in last_error; a child that
exits is restarted with the one backoff (children.py), and sends its batch in flight again from
its cursor. The hour tracker's count stays exact across a crash: a batch whose `delivered` never
came leaves a gap the tracker counts from the journal (hours.py, catch_up).
"""
import logging
import time

import gevent
from gevent.event import Event

from .children import Child, LinkError
from .errors import StartupError
from .forwarder import BACKING_OFF, RUNNING, STOPPED, Forwarder
from .hours import HourCounts
from .journal import read_cursor
from .retry import Backoff

log = logging.getLogger("zspark.fwdproxy")

MODULE = "zspark.fwdchild"
START_TIMEOUT_S = 60.0  # for the first start: the sink built (the Kafka client loaded)
STOP_MARGIN_S = 5.0  # beyond forward.stop_timeout_s: the child closes its sink and exits
COUNTERS = ("delivered", "failed", "dead_lettered")


class _Position:
    """The cursor as the child last reported it (the file is the child's)."""
    __slots__ = ("offset",)

    def __init__(self, offset):
        self.offset = offset


class _RemoteSink:
    """What the owner knows of the child's sink: where it delivers, and (Kafka) the topic an
    event went to, by the serving process's TopicPolicy (which learns the child's topics)."""

    def __init__(self, name, topics):
        self.name = name
        self.topics = topics
        self.destination = name

    def describe(self):
        return self.destination

    def topic_for(self, event):
        return self.topics.delivered_topic(event)


class ForwarderProcess:
    drain = Forwarder.drain
    lag = Forwarder.lag
    status = Forwarder.status

    def __init__(self, journal, name, config, topics=None):
        self.journal = journal
        self.name = name
        self.topics = topics
        self.sink = _RemoteSink(name, topics)
        self.cursor = _Position(read_cursor(journal.directory, name))
        self.on_delivered = None  # as Forwarder's: on_delivered(first, next_offset, HourCounts)
        fc = config.forward
        self.child = Child(f"forwarder {name}", MODULE, config, self._serve, args=[name],
                           backoff=Backoff(fc.backoff_initial_ms / 1000.0, fc.backoff_max_s))
        self._remote = {}  # the child's last as_dict()
        self._totals = dict.fromkeys(COUNTERS, 0)  # of the child's earlier runs
        self._seen = dict.fromkeys(COUNTERS, 0)  # of its current run
        self._redirected = 0  # the current run's redirected count, as reported
        self._linked = False  # the current run said it is ready
        self._ready = Event()
        self._start_error = None
        self._exited_at = None
        self._sent_end = None
        self._feed = None

    # -- the Forwarder's interface ----------------------------------------------------------

    @property
    def state(self):
        if self._linked:
            return self._remote.get("state", RUNNING)
        # Not started yet (as a Forwarder before start()), or its process exited: being restarted.
        return STOPPED if self.child.state == "stopped" or not self._ready.is_set() else BACKING_OFF

    @property
    def delivered(self):
        return self._totals["delivered"] + self._seen["delivered"]

    @property
    def failed(self):
        return self._totals["failed"] + self._seen["failed"]

    @property
    def dead_lettered(self):
        return self._totals["dead_lettered"] + self._seen["dead_lettered"]

    @property
    def last_error(self):
        if not self._linked and self.child.last_exit is not None and self.child.state != "stopped":
            return f"its process exited ({self.child.last_exit}); starting it again"
        return self._remote.get("last_error")

    @property
    def last_error_time(self):
        if not self._linked and self._exited_at is not None and self.child.state != "stopped":
            return self._exited_at
        return self._remote.get("last_error_time")

    @property
    def last_delivery_time(self):
        return self._remote.get("last_delivery_time")

    def as_dict(self):
        return {"state": self.state, "cursor": self.cursor.offset, "lag": self.lag,
                "delivered": self.delivered, "failed": self.failed,
                "dead_lettered": self.dead_lettered, "last_error": self.last_error,
                "last_error_time": self.last_error_time, "last_delivery_time": self.last_delivery_time,
                "pid": self.child.pid, "restarts": self.child.restarts}

    def start(self):
        """Start the child and wait until its sink is built; raise StartupError if it cannot be."""
        backoff = Backoff(0.1, 2.0, timeout=START_TIMEOUT_S)
        while True:
            try:
                greenlet = self.child.start()
                break
            except OSError as e:  # out of processes or descriptors (the machine's trouble): again
                delay = backoff.failed()
                if delay is None:
                    raise StartupError(f"cannot start the {self.name} forwarder's process: {e}") from None
                log.error("cannot start the %s forwarder's process, trying again in %.1fs: %s",
                          self.name, delay, e)
                backoff.wait(delay)
        self._feed = gevent.spawn(self._feed_loop)
        # A process that dies before it is ready is started again meanwhile (children.py).
        if not self._ready.wait(START_TIMEOUT_S) or self._start_error is not None:
            error = self._start_error or (f"its process was not ready within {START_TIMEOUT_S:.0f}s "
                                          f"(last exit: {self.child.last_exit or 'none'}; see the log)")
            self.stop(STOP_MARGIN_S)
            raise StartupError(f"forwarder {self.name}: {error}")
        return greenlet

    def stop(self, timeout=10.0):
        """Tell the child to stop (it finishes its batch in flight, up to `timeout` s, and saves
        its cursor), wait for it, kill it if it does not exit."""
        self.child.stop(timeout + STOP_MARGIN_S)
        if self._feed is not None:
            self._feed.kill()
        self._linked = False

    # -- the link ---------------------------------------------------------------------------

    def _serve(self, link):
        self._linked = False
        self._redirected = 0
        self._sent_end = None
        self._tell_durable(link)
        try:
            while True:
                header, _ = link.recv()
                handle = self._handlers.get(header["kind"])
                if handle is None:
                    raise LinkError(f"a message of kind {header['kind']!r}")
                try:
                    handle(self, header)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    raise LinkError(f"a malformed {header['kind']!r} message: {e!r}") from None
        finally:
            for key in COUNTERS:
                self._totals[key] += self._seen[key]
                self._seen[key] = 0
            self._linked = False
            self._exited_at = time.time()

    def _on_ready(self, header):
        self.sink.destination = str(header["destination"])
        cursor = header["forwarder"]["cursor"]
        if self._ready.is_set() and type(cursor) is int and cursor > self.cursor.offset:
            # Started again past where its last run's report left it: that run delivered these
            # records (and saved its cursor) but was killed before it said so.
            self._totals["delivered"] += cursor - self.cursor.offset
        self._update(header)
        self._linked = True
        self._ready.set()

    def _on_error(self, header):
        self._start_error = str(header["error"])
        self._ready.set()

    def _on_delivered(self, header):
        first, next_offset = header["first"], header["next"]
        if type(first) is not int or type(next_offset) is not int:
            raise ValueError("offsets that are not integers")
        counts = HourCounts.from_list(header.get("counts") or [])
        self._update(header)
        if self.on_delivered is not None:
            self.on_delivered(first, next_offset, counts)

    def _on_damage(self, header):
        damage = self.journal.damage
        message = str(header["message"])
        if header["what"] == "skipped":
            damage.skipped(tuple(header["key"]), int(header["nbytes"]), message)
        else:
            damage.missing(int(header["start"]), int(header["end"]), message)

    def _update(self, header):
        remote = header["forwarder"]
        counters = {key: remote[key] for key in COUNTERS}
        cursor = remote["cursor"]
        if not all(type(v) is int for v in (*counters.values(), cursor)) or type(remote["state"]) is not str:
            raise ValueError("counters that are not integers")
        self._seen.update(counters)
        self.cursor.offset = cursor
        self._remote = remote
        topics = header.get("topics")
        if topics is not None and self.topics is not None:
            redirected = int(topics["redirected"])
            more = redirected - self._redirected if redirected >= self._redirected else redirected
            self._redirected = redirected
            self.topics.absorb(list(topics["taken"]), more, topics.get("last_not_allowed"))

    _handlers = {"ready": _on_ready, "error": _on_error, "status": _update, "delivered": _on_delivered,
                 "damage": _on_damage}

    # -- the journal's durable end, told to the child ---------------------------------------

    def _feed_loop(self):
        journal = self.journal
        while True:
            end = journal.end_offset
            link = self.child.link
            if link is not None and end != self._sent_end:
                self._tell_durable(link)
            journal.wait_for_append(end, 1.0)
            if journal.end_offset == end:
                gevent.sleep(0.05)  # nothing new (a timeout, or the journal closed)

    def _tell_durable(self, link):
        journal = self.journal
        bases = journal.segment_bases()
        if not bases:
            return
        end = journal.end_offset
        try:
            link.send({"kind": "durable", "end": end, "segment": bases[-1],
                       "bytes": journal.durable_bytes(bases[-1])})
        except OSError:
            return  # the child is gone; its next run is told at its start
        self._sent_end = end
