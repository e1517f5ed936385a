"""The one loop every sink shares: read from a cursor, send a batch, wait for the destination to
confirm, and only then move the cursor.

A sink is any object with (the protocol of zspark/sinks/__init__.py, whose registry builds them)

    name                      used for the cursor file and in /status
    send(items) -> rejected   deliver `items` (a list of (offset, event)) and return only once the
                              destination confirmed them; return a list of (offset, event, reason)
                              the destination refused *for good*; raise TransientDeliveryError
                              for anything worth retrying (zspark/errors.py)
    describe() -> str         where it delivers, for the log and /status (no secrets)
    healthcheck(timeout)      return once the destination answers, else raise sinks.Unreachable
                              (used by `zcmd replay` before it sends)
    close(abandon=False)      release it; `abandon`: drop what is still queued instead of waiting
    on_destination            optional: a sink that has this attribute learns of outages on its
                              own (Kafka's error callback); the forwarder sets it to a callable,
                              called with a reason when the destination goes down (the forwarder
                              shows `backing_off` at once) and with None when it answers again
                              (the retry then comes at once, not after the backoff)

A transient failure (TransientDeliveryError, or an OSError: a socket, a full disk, descriptors
running out -- the machine's trouble, never a bug in the sink) is retried with the one retry
policy (zspark/retry.py: capped exponential backoff with jitter) for as long as it takes: the
journal holds the events meanwhile. A permanently refused record is written with its reason to
the dead-letter file next to the journal (`dead-letter/<sink>.jsonl`), counted, and passed over.
Anything else a sink raises -- PermanentDeliveryError (refused for good, no record named), or a
bug such as a TypeError -- stops this forwarder loudly: logged (a bug with its traceback), state
`failed` with the reason in /status, /metrics and `zcmd check`, the cursor where it was, so that
a restart after the fix sends the batch again; the server goes on journaling. Nothing is ever
skipped silently.
"""
import json
import logging
import os
import time

import gevent
from gevent.event import Event

from . import blocking
from .errors import RETRYABLE, PermanentDeliveryError, describe
from .journal import decode_records, event_to_json, files
from .hours import count_hours
from .metrics import RateLimitedLog
from .redact import redact
from .retry import Backoff
from .sinks import Sent

log = logging.getLogger("zspark.forwarder")

RUNNING, BACKING_OFF, STOPPED, FAILED = "running", "backing_off", "stopped", "failed"


class Forwarder:
    def __init__(self, journal, sink, batch_size=1000, batch_wait=0.005, backoff_initial=0.1,
                 backoff_max=30.0):
        self.journal = journal
        self.sink = sink
        self.name = sink.name
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self._backoff = Backoff(backoff_initial, backoff_max)
        self.cursor = journal.cursor(self.name)
        self.state = STOPPED
        self.delivered = 0
        self.failed = 0  # failed attempts (each retried)
        self.dead_lettered = 0
        self.last_error = None
        self.last_error_time = None
        self.last_delivery_time = None  # when the destination last confirmed a batch
        self._stopping = False
        self._stop_requested = Event()  # set by stop(): ends a failed forwarder's wait
        self._greenlet = None
        # Called after each confirmed batch as on_delivered(first_offset, next_offset, hours):
        # `hours` the hours.HourCounts of the events delivered (not those dead-lettered) when
        # `counts_hours` is set (the hour tracker sets both), else None; see hours.py.
        self.on_delivered = None
        self.counts_hours = False
        self.dead_letter_path = os.path.join(journal.directory, "dead-letter", f"{self.name}.jsonl")
        self._warn = RateLimitedLog(log, logging.ERROR)
        if hasattr(sink, "on_destination"):
            sink.on_destination = self._on_destination

    @property
    def lag(self):
        """Records durable in the journal that this forwarder has not yet delivered."""
        return max(0, self.journal.end_offset - self.cursor.offset)

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self._greenlet

    def drain(self, timeout):
        """Wait up to `timeout` seconds for everything journaled so far to be delivered; give up
        at once while the destination is failing. True if all of it was."""
        target = self.journal.end_offset
        deadline = time.monotonic() + timeout
        while self.cursor.offset < target and self.state == RUNNING and time.monotonic() < deadline:
            gevent.sleep(0.02)
        return self.cursor.offset >= target

    def stop(self, timeout=10.0):
        """Finish the batch in flight (up to `timeout` seconds), save the cursor, stop."""
        self._stopping = True
        self._stop_requested.set()
        self._backoff.stop()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                log.warning("forwarder %s: batch still in flight after %.0fs; stopping without it "
                            "(it is sent again at the next start)", self.name, timeout)
                self._greenlet.kill()
        self.state = STOPPED
        try:
            self.cursor.close()
        except OSError as e:
            log.warning("forwarder %s: closing its cursor file failed: %s", self.name, e)
        try:
            self.sink.close()
        except Exception as e:  # a sink that cannot close cleanly must not block the shutdown
            log.warning("forwarder %s: closing the sink failed: %s", self.name, e)

    def status(self):
        """The forwarder's part of `/status`: as_dict() and where it delivers (URIs redacted)."""
        return {**self.as_dict(), "destination": self.sink.describe()}

    def as_dict(self):
        return {"state": self.state, "cursor": self.cursor.offset, "lag": self.lag,
                "delivered": self.delivered, "failed": self.failed,
                "dead_lettered": self.dead_lettered, "last_error": self.last_error,
                "last_error_time": self.last_error_time, "last_delivery_time": self.last_delivery_time}

    def _run(self):
        self.state = RUNNING
        log.info("forwarder %s: starting at offset %d (lag %d)", self.name, self.cursor.offset, self.lag)
        reader = None
        reading_failed = False
        try:
            while not self._stopping and self.state != FAILED:
                try:
                    if reader is None:
                        reader = self.journal.reader(self.cursor.offset)
                    records = self._next_batch(reader)
                except OSError as e:
                    # Out of descriptors (EMFILE), an I/O error: the records are still on disk.
                    # Read them again from the cursor once the error has passed.
                    if reader is not None:
                        reader.close()
                        reader = None
                    reading_failed = True
                    delay = self._failed_attempt(f"cannot read the journal: {e}")
                    self._say_retry("forwarder %s: reading the journal at offset %d failed (attempt %d), "
                                    "retrying in %.1fs: %s", self.name, self.cursor.offset,
                                    self._backoff.attempt, delay, e)
                    self._backoff.wait()
                    continue
                if reading_failed:
                    reading_failed = False
                    self._backoff.reset()
                    self.state = RUNNING
                    log.info("forwarder %s: reading the journal again", self.name)
                if records:
                    self._deliver(records)
            # Failed (or stopping): wait for the stop. The greenlet must not end before, since
            # the server stops when one of its forwarders' greenlets ends.
            self._stop_requested.wait()
        finally:
            if reader is not None:
                reader.close()
            self.state = STOPPED

    def _next_batch(self, reader):
        records = reader.read(max_records=self.batch_size)
        if not records:
            reader.wait(0.5)
            return []
        if len(records) < self.batch_size and self.batch_wait:
            # A short wait lets a trickle of events go out in one batch instead of many.
            gevent.sleep(self.batch_wait)
            records += reader.read(max_records=self.batch_size - len(records))
        return records

    def _deliver(self, records):
        send = self._sender(records)
        while True:
            try:
                sent = send()
                break
            except RETRYABLE as e:
                if self._stopping:
                    return  # cursor unchanged: the batch goes again at the next start
                delay = self._failed_attempt(describe(e))
                self._say_retry("forwarder %s: delivering offsets %d..%d failed (attempt %d), retrying in "
                                "%.1fs: %s", self.name, records[0][0], records[-1][0],
                                self._backoff.attempt, delay, self.last_error)
                if not self._backoff.wait():
                    return  # stopping: the cursor is unchanged, the batch goes again at the next start
            except PermanentDeliveryError as e:
                self._fail(records, describe(e))
                return
            except Exception as e:  # a bug in the sink: no retry mends it
                if self._stopping:
                    return
                log.exception("forwarder %s: the sink raised %s delivering offsets %d..%d (a bug, not "
                              "the destination's trouble)", self.name, type(e).__name__,
                              records[0][0], records[-1][0])
                self._fail(records, describe(e))
                return
        if self._backoff.attempt:
            log.info("forwarder %s: delivered after %d failed attempt(s)", self.name, self._backoff.attempt)
            self._backoff.reset()
        dead = [(offset, {"payload_hex": payload[:4096].hex()}, f"undecodable: {e}")
                for offset, payload, e in sent.undecodable] + list(sent.rejected)
        if dead and not self._dead_letter(dead):
            return  # stopping: the cursor is unchanged, the batch goes again at the next start
        self.state = RUNNING
        self._save_cursor(records[-1][0] + 1)
        self.delivered += sent.delivered
        self.last_delivery_time = time.time()
        if self.on_delivered is not None:
            self.on_delivered(records[0][0], records[-1][0] + 1, sent.hours)

    def _sender(self, records):
        """A call that delivers `records` and returns a sinks.Sent: the sink's send_records where
        it has one, else its send of the events decoded from them (decoded once, for every
        attempt). The Sent counts the delivered events by hour and topic when counts_hours is set."""
        hours = self.counts_hours
        if hasattr(self.sink, "send_records"):
            return lambda: self.sink.send_records(records, hours=hours)
        undecodable = []  # intact records that are not events: set aside (dead-lettered)
        items = decode_records(records, lambda offset, payload, e: undecodable.append((offset, payload, e)))

        def send():
            rejected = self.sink.send(items) if items else []
            sent = Sent(list(rejected), len(items) - len(rejected), undecodable)
            if hours:
                refused = {offset for offset, _, _ in rejected}
                sent.hours = count_hours((event for offset, event in items if offset not in refused),
                                         self.sink.topic_for)
            return sent
        return send

    def _fail(self, records, reason):
        """Stop delivering for good (until a restart), loudly; the cursor stays where it is."""
        self.failed += 1
        self.last_error = redact(reason)
        self.last_error_time = time.time()
        self.state = FAILED
        log.critical("forwarder %s: FAILED, its delivery stopped until a restart: %s; offsets %d.. "
                     "wait in the journal (the cursor stays at %d); the server goes on journaling",
                     self.name, self.last_error, records[0][0], self.cursor.offset)

    def _on_destination(self, reason):
        """The sink's word on its destination: down (`reason`) or answering again (None)."""
        if reason is None:
            if self.state == BACKING_OFF and not self._backoff.attempt:
                self.state = RUNNING  # said down while no attempt failed (idle): nothing else would say it is back
            self._backoff.wake()  # retry now rather than at the end of a long backoff
        elif self.state == RUNNING:
            self.state = BACKING_OFF
            self.last_error = redact(reason)
            self.last_error_time = time.time()

    def _save_cursor(self, offset):
        """Move the cursor past a delivered batch. If the file cannot be written (a full disk),
        go on from the offset in memory and save it with a later batch: a restart before then
        sends the batches since the last save again (at least once; MongoDB keeps one copy)."""
        try:
            self.cursor.commit(offset)
        except OSError as e:
            self.cursor.offset = offset
            self.last_error = f"cannot save the cursor: {e}"
            self.last_error_time = time.time()
            self._warn("forwarder %s: cannot save its cursor in %s (%s); delivering on and saving "
                       "it with a later batch", self.name, self.cursor.path, e)

    def _dead_letter(self, dead):
        """Write refused records to the dead-letter file, retrying while it cannot be written
        (a full disk): a record is passed over only once it is there. False if stopping first."""
        lines = []
        for offset, event, reason in dead:
            lines.append(json.dumps({"offset": offset, "sink": self.name, "reason": reason,
                                     "time": time.time(), "event": json.loads(event_to_json(event))}))
        while True:
            try:
                blocking.call(_append_lines, self.dead_letter_path, lines)
                break
            except OSError as e:
                self._failed_attempt(f"cannot write the dead-letter file: {e}")
                self._warn("forwarder %s: cannot write %d refused record(s) to %s (%s); retrying",
                           self.name, len(dead), self.dead_letter_path, e)
                if not self._backoff.wait():
                    return False
        self._backoff.reset()
        for offset, _, reason in dead:
            log.error("forwarder %s: offset %d refused for good, written to %s: %s",
                      self.name, offset, self.dead_letter_path, reason)
        self.dead_lettered += len(dead)
        return True

    def _failed_attempt(self, error):
        """Note a failed attempt in /status; return how long to back off before the next."""
        self.failed += 1
        self.last_error = redact(error)  # a driver may quote its URI, password and all
        self.last_error_time = time.time()
        self.state = BACKING_OFF
        return self._backoff.failed()

    def _say_retry(self, msg, *args):
        """A failed attempt: a warning for the first and every tenth, the others at debug level."""
        attempt = self._backoff.attempt
        (log.warning if attempt == 1 or attempt % 10 == 0 else log.debug)(msg, *args)


def _append_lines(path, lines):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = files.open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # never through a link
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
