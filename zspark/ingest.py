"""The one path from any source into the journal: normalize, then append.

Sources decode their wire format and call `Ingest`; it applies `event.normalize`, counts what was
accepted and rejected per source, and hands valid events to the journal with their stable ids.
"""
import datetime

from .event import InvalidEvent, Limits, normalize
from .journal import encode_event


class BatchRejected(InvalidEvent):
    """One item of a batch is invalid; `index` says which (the batch is refused whole)."""

    def __init__(self, index, reason):
        super().__init__(f"event {index}: {reason}")
        self.index = index
        self.reason = reason


class Ingest:
    def __init__(self, journal, node, metrics, limits=None):
        self.journal = journal
        self.node = node
        self.metrics = metrics
        self.limits = limits or Limits()

    def normalize_all(self, raws, source, trusted=False):
        """Normalize a batch that is accepted whole or not at all; raise BatchRejected."""
        events = []
        now = datetime.datetime.now(datetime.timezone.utc)  # one request, one receive time
        for index, raw in enumerate(raws):
            try:
                events.append(normalize(raw, source, self.node, now, self.limits, trusted))
            except InvalidEvent as e:
                self.metrics.source(source).reject(str(e), len(raws))
                raise BatchRejected(index, str(e)) from None
        return events

    def normalize_one(self, raw, source, trusted=False, now=None):
        """Normalize one event; on bad input count the rejection and re-raise InvalidEvent."""
        try:
            return normalize(raw, source, self.node, now, self.limits, trusted)
        except InvalidEvent as e:
            self.metrics.source(source).reject(str(e))
            raise

    def append_nowait(self, events, source):
        """Hand normalized events to the journal; `.wait()` on the result for durability.

        Raises JournalError (JournalFull included) if the journal refuses them now; the caller
        decides whether that is a 503 or a retry.
        """
        pending = self.journal.append_nowait(events, encode_event)
        return _Counted(pending, self.metrics.source(source), len(events))

    def append(self, events, source):
        """Append and wait until durable; return the events' ids."""
        self.append_nowait(events, source).wait()
        return [e["_id"] for e in events]


class _Counted:
    """A pending append that counts its events as accepted once durable."""

    __slots__ = ("pending", "stats", "count")

    def __init__(self, pending, stats, count):
        self.pending = pending
        self.stats = stats
        self.count = count

    def wait(self):
        offsets = self.pending.wait()
        self.stats.accepted += self.count
        return offsets
