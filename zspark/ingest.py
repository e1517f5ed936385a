"""The one path from any source into the journal: normalize, then append.

Sources decode their wire format and call `Ingest`; it applies `event.normalize`, counts what was
accepted and rejected per source, and hands valid events to the journal with their stable ids.
With `kafka.topic_not_allowed: refuse` it also refuses events whose Kafka topic is not allowed
(zspark/topics.py: a rule from the config, which the Kafka sink applies too).
"""
import datetime
from itertools import repeat

from . import native
from .event import NOTICE_SOURCE, InvalidEvent, Limits, normalize, sender_fields
from .journal.codec import (FrameBurst, FrameEvent, encode_batch, encode_elements, encode_events, event_ids,
                            splice_frames)
from .native import PLAIN_FRAME_OMITS


class BatchRejected(InvalidEvent):
    """One item of a batch is invalid; `index` says which (the batch is refused whole)."""

    def __init__(self, index, reason):
        super().__init__(f"event {index}: {reason}")
        self.index = index
        self.reason = reason


class Received:
    """A batch of events received together and validated: their sender fields (each as
    `event.sender_fields` returns them), and the receive time and source they share. `topics`:
    each event's Kafka topic, where an HTTP worker process leaves the topic check to the
    journal's owner (zspark/httpworker.py); else None. `added`: None where `fields` are dicts;
    where they are BSON documents (Ingest.ndjson_frames), the BSON elements each event gets
    after its own."""

    __slots__ = ("fields", "timestamp", "source", "topics", "added")

    def __init__(self, fields, timestamp, source, added=None):
        self.fields = fields
        self.timestamp = timestamp
        self.source = source
        self.topics = None
        self.added = added

    def __len__(self):
        return len(self.fields)


class Ingest:
    def __init__(self, journal, node, metrics, limits=None, topics=None):
        """`topics`: the TopicPolicy, checked here only when it refuses (else the sink redirects)."""
        self.journal = journal
        self.node = node
        self.metrics = metrics
        self.limits = limits or Limits()
        self.topics = topics if topics is not None and topics.refuse else None
        # The compiled frame check hands over a frame's string fields, not context or extra: enough
        # unless the topic policy reads those.
        self.plain_frames = self.topics is None or not set(self.topics.template_fields) & set(PLAIN_FRAME_OMITS)

    def normalize_all(self, raws, source, trusted=False, added=None):
        """Normalize a batch that is accepted whole or not at all: a `Received`; raise
        BatchRejected. `added`: fields every event gets where it has none (a POST's ip,
        referrer and user_agent, from the request: http.post_request_fields)."""
        plain = None if trusted else native.plain_events(raws, self.limits)
        if added:
            # Checked once for the whole request, not once per event: an event valid as it came
            # stays valid as it is with fields added that are valid as they are. Else (a
            # User-Agent too long...) every event goes the full way, which says which and why.
            if plain is not None and not self._valid_as_they_are(added):
                plain = None
            for raw in raws:
                if type(raw) is dict:  # anything else is refused below
                    for name, value in added.items():
                        if name not in raw:
                            raw[name] = value
        try:
            if plain is None:
                fields = list(map(sender_fields, raws, repeat(self.limits), repeat(trusted)))
            else:  # the compiled check found these valid as they are: sender_fields(raw) is raw
                fields = [raw if ok else sender_fields(raw, self.limits) for raw, ok in zip(raws, plain)]
        except InvalidEvent:
            for index, raw in enumerate(raws):  # which one, and why (map does not say)
                try:
                    sender_fields(raw, self.limits, trusted)
                except InvalidEvent as e:
                    self.metrics.source(source).reject(str(e), len(raws))
                    raise BatchRejected(index, str(e)) from None
            raise
        # One request, one receive time.
        received = Received(fields, datetime.datetime.now(datetime.timezone.utc), source)
        if self.topics is not None and source != NOTICE_SOURCE:
            self._check_topics(received, len(raws))
        return received

    def ndjson_frames(self, body, source, added=None):
        """normalize_all of the events of an NDJSON `body` (bytes) with `added` as there, taken
        with no dict built: a Received of each line's BSON document, where compiled code writes
        every line (native.ndjson_frames) and finds every event valid as it is, and `added` too.
        Else None: normalize_all of the decoded lines decides."""
        if self.topics is not None or (added and not self._valid_as_they_are(added)):
            return None
        frames = native.ndjson_frames(body, tuple(name.encode() for name in added) if added else ())
        if frames is None:
            return None
        plain = native.plain_bson_frames(frames, self.limits, fields=False)
        if plain is None or None in plain:
            return None
        return Received(frames, datetime.datetime.now(datetime.timezone.utc), source,
                        encode_elements(added) if added else b"")

    def _check_topics(self, received, count):
        """The topic policy's verdict on a batch (refuse mode): BatchRejected, counted."""
        try:
            self.topics.check(received.fields, self._view(received.timestamp, received.source))
        except InvalidEvent as e:  # TopicNotAllowed
            self.metrics.source(received.source).reject(str(e), count)
            raise BatchRejected(e.index, str(e)) from None

    def _valid_as_they_are(self, fields):
        """True if sender_fields keeps `fields` (beside a type) exactly as they are."""
        event = {"type": "x", **fields}
        try:
            return sender_fields(event, self.limits) == event
        except InvalidEvent:
            return False

    def _view(self, timestamp, source):
        """What the topic template reads of an event's sender fields: those, or with a template
        naming an assigned field, those and the fields assigned (all but `_id`, not known yet)."""
        if not self.topics.needs_assigned:
            return None
        return lambda fields: {**fields, "timestamp": timestamp, "source": source, "node": self.node}

    def _check_topic(self, fields, source, now):
        if self.topics is not None and source != NOTICE_SOURCE:
            try:
                self.topics.check((fields,), self._view(now, source))
            except InvalidEvent as e:
                self.metrics.source(source).reject(str(e))
                raise

    def normalize_one(self, raw, source, trusted=False, now=None):
        """Normalize one event; on bad input count the rejection and re-raise InvalidEvent."""
        try:
            event = normalize(raw, source, self.node, now, self.limits, trusted)
        except InvalidEvent as e:
            self.metrics.source(source).reject(str(e))
            raise
        self._check_topic(event, source, event["timestamp"])
        return event

    def normalize_frame(self, doc, frame, source, now):
        """Validate `doc`, decoded from the BSON `frame`, to be journaled as that frame: a
        FrameEvent. Only for a document whose fields normalize keeps as they are (no timestamp,
        stimestamp, $command, nulls, or fields the appliance assigns). On bad input count the
        rejection and re-raise InvalidEvent."""
        try:
            sender_fields(doc, self.limits)
        except InvalidEvent as e:
            self.metrics.source(source).reject(str(e))
            raise
        return self.frame_event(doc, frame, source, now)

    def frame_event(self, fields, frame, source, now):
        """The FrameEvent of a BSON `frame` known valid as it is, given its top-level fields (at
        least those the topic policy reads); raise InvalidEvent (counted) for a topic refused."""
        self._check_topic(fields, source, now)
        return FrameEvent(frame, now, source, self.node)

    def frame_burst(self, frames, source, now):
        """The frames of a burst, all known valid as they are, as one FrameBurst; None where the
        topic policy must see each one (kafka.topic_not_allowed: refuse): then frame_event."""
        return FrameBurst(frames, now, source, self.node) if self.topics is None else None

    def plain_bson_frames(self, frames):
        """native.plain_bson_frames under this ingest's limits, or None where it cannot serve;
        the fields only where the topic policy reads them (else True for a plain frame)."""
        if not self.plain_frames:
            return None
        return native.plain_bson_frames(frames, self.limits, fields=self.topics is not None)

    def append_nowait(self, events, source):
        """Hand normalized events (dicts and FrameEvents, or a FrameBurst) to the journal; `.wait()` on the result
        for durability.

        Raises JournalError (JournalFull included) if the journal refuses them now; the caller
        decides whether that is a 503 or a retry.
        """
        pending = self.journal.append_nowait(events, encode_all=encode_events)
        return _Counted(pending, self.metrics.source(source), len(events))

    def append(self, received, ids=True):
        """Append a `Received` batch and wait until durable; return the events' ids (hex), or
        with `ids=False` only how many there were."""
        pending = self.journal.append_nowait(received.fields, encode_all=self._encoder(received))
        offsets = _Counted(pending, self.metrics.source(received.source), len(received)).wait()
        return event_ids(received.timestamp, self.node, offsets) if ids else len(offsets)

    def _encoder(self, received):
        if received.added is not None:
            def encode_all(frames, offset):
                return splice_frames(frames, received.timestamp, received.source, self.node, offset,
                                     received.added)
            return encode_all

        def encode_all(fields, offset):
            return encode_batch(fields, received.timestamp, received.source, self.node, offset)
        return encode_all


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
