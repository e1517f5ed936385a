"""The ZeroMQ source: PULL sockets taking one event per frame, BSON on one socket, JSON on another.

A frame is a document; its `$command` key selects what to do with it:

    (none) or "event"   validate and journal the event
    "event_noval"       Zarkov's pre-validated event: journal it with its fields as they are

Frames are received in bursts (up to `receive_batch` at a time), normalized one by one and
journaled together; while bursts wait for their fsync the next are being received (at most
MAX_BURSTS_IN_FLIGHT of them, MAX_BYTES_IN_FLIGHT of frames). An
undecodable or invalid frame is counted and logged (rate-limited) and the socket keeps serving.

Limits on what a peer can hold (see `apply_limits`): a frame over `max_message_bytes` is a counted
rejection like any bad frame, and the frames behind it on the same connection are taken. libzmq
itself (ZMQ_MAXMSGSIZE) drops a connection only for a frame over HARD_LIMIT_FACTOR times that, so
that a sender announcing a 2 GiB frame cannot make it allocate one; the sender's PUSH socket
reconnects, the frames it had queued on that connection are lost, and the drop is seen only as
a closed connection (sources/zmqwatch.py). A connection that does not complete the ZMTP handshake
within `handshake_timeout_s` is closed; heartbeats close one whose peer went silent; each peer's
queue holds at most `receive_hwm` frames (then ZeroMQ stops reading it: TCP pushes back).

PUSH has no acknowledgement, so when the journal cannot take events (full disk or size cap) this
source holds its burst and stops receiving until it can: senders queue up to their high-water
mark and then block, instead of events being dropped.
"""
import collections
import datetime
import json
import logging
import time

import bson
import gevent
import zmq.green as zmq

from .. import native
from ..event import InvalidEvent
from ..journal import JournalClosed, JournalError, JournalFull, TooLargeForJournal
from ..journal.codec import DECODE_OPTIONS, decode_events
from ..metrics import RateLimitedLog
from ..retry import Backoff
from . import fastjson
from .curve import make_server
from .zmqwatch import ConnectionCounts, ConnectionWatch

log = logging.getLogger("zspark.zmq")

COMMANDS = ("event", "event_noval")
_NO_COMMAND = object()
_UNDECODED = object()
# Fields normalize keeps exactly as sent (a timestamp or stimestamp may be converted).
SPLICEABLE_FIELDS = frozenset(("type", "level", "topic", "env", "version", "ip", "referrer",
                               "user_agent", "cookies", "context", "extra"))
# The hard limit, as a multiple of max_message_bytes: frames a little too big (the usual mistake)
# are counted and skipped, while what one frame can make libzmq allocate stays a few MiB.
HARD_LIMIT_FACTOR = 4
RETRY_SECONDS = 1.0  # while the journal refuses events: a full disk empties at its own pace
DRAIN_SECONDS = 2.0  # at stop, frames still arriving this long after it are no longer taken
# Bursts handed to the journal and not yet durable while the next are received: at most this
# many, and beyond the oldest one at most this many bytes of frames.
MAX_BURSTS_IN_FLIGHT = 8
MAX_BYTES_IN_FLIGHT = 32 * 1024**2


def decode_bson(frame):
    return bson.decode(frame, codec_options=DECODE_OPTIONS)


def decode_json(frame):
    """A JSON frame: UTF-8 text without a byte order mark, as over HTTP. (json.loads of bytes
    would also take UTF-16 and UTF-32, and read a BSON frame sent to the wrong socket as one.)"""
    value = fastjson.decode(frame)  # orjson, where it gives exactly what json gives
    if value is not fastjson.NOT_DECODED:
        return value
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {frame[e.start]:#04x} at {e.start})") from None
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark before the JSON text (send UTF-8 without one)")
    return json.loads(text)


def apply_limits(sock, zc):
    """Bound what one peer of `sock` can hold (config `zc`, a ZmqConfig); before bind."""
    sock.setsockopt(zmq.MAXMSGSIZE, HARD_LIMIT_FACTOR * zc.max_message_bytes)
    sock.setsockopt(zmq.RCVHWM, zc.receive_hwm)
    sock.setsockopt(zmq.HANDSHAKE_IVL, _ms(zc.handshake_timeout_s))
    if zc.heartbeat_s:
        sock.setsockopt(zmq.HEARTBEAT_IVL, _ms(zc.heartbeat_s))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(zc.heartbeat_timeout_s))
        # What the peer is told: drop the connection if this side goes silent (deciseconds, 16 bits).
        sock.setsockopt(zmq.HEARTBEAT_TTL, min(_ms(zc.heartbeat_timeout_s), 6553500))


def _ms(seconds):
    return max(1, round(seconds * 1000))


class ZmqSource:
    def __init__(self, name, address, decode, ingest, config, context=None, curve=None):
        self.name = name  # also the source name recorded in events: zmq_bson / zmq_json
        self.address = address
        self.decode = decode
        self.ingest = ingest
        self.zmq_config = config.zmq
        self.max_message_bytes = config.zmq.max_message_bytes
        self.receive_batch = max(1, config.zmq.receive_batch)
        self._receive_frames = native.frame_receiver()
        self.stats = ingest.metrics.source(name)
        self.splice = decode is decode_bson
        self.curve = curve  # (public, secret): a CURVE server socket (sources/curve.py)
        self._context = context or zmq.Context.instance()
        self._socket = None
        self._greenlet = None
        self._stopping = False
        self._drain_seconds = self._drain_deadline = None
        self._unbound = False
        self._warn = RateLimitedLog(log)
        self._retry = Backoff(RETRY_SECONDS, RETRY_SECONDS, jitter=0.0)
        self._watch = None
        self.connections = ConnectionCounts()
        self.stats.details = lambda: {"connections": self.connections.as_dict()}

    def start(self):
        sock = self._context.socket(zmq.PULL)
        apply_limits(sock, self.zmq_config)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            make_server(sock, *self.curve, domain=self.name)
        self._watch = ConnectionWatch(self.name, sock, self.connections)
        try:
            sock.bind(self.address)
        except zmq.ZMQError:
            self._watch.stop()
            sock.close()
            raise
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._watch.start()
        self._greenlet = gevent.spawn(self._run)
        log.info("ZeroMQ %s listening on %s", self.name, self.endpoint)
        return self._greenlet

    def stop(self, drain_seconds=DRAIN_SECONDS):
        """Journal what has been received (and what is queued in the socket), then close.

        Senders that keep sending would keep the queue from ever draining: after `drain_seconds`
        the socket unbinds (takes no new frames) and journals only what it already holds.
        """
        self._drain_seconds = drain_seconds
        self._drain_deadline = time.monotonic() + drain_seconds
        self._stopping = True
        self._retry.stop()  # a burst waiting for the journal gets one last try now
        if self._greenlet is not None:
            self._greenlet.join()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _run(self):
        # Bursts handed over and not yet known durable, oldest first: (their parts as
        # _hand_over gives them, their frames' bytes). Receiving goes on meanwhile: the journal
        # syncs at most every journal.sync_interval_ms, and one burst at a time in flight would
        # cap the rate at receive_batch frames per sync.
        in_flight = collections.deque()
        in_flight_bytes = 0
        while True:
            frames = self._receive(wait=not in_flight)
            if frames is None:
                break
            if not frames:
                # Nothing more to receive now: finish the bursts in flight before waiting for
                # frames, so they are counted (and retried if a write failed) without delay.
                while in_flight:
                    self._wait_durable(in_flight.popleft()[0])
                in_flight_bytes = 0
                continue
            nbytes = sum(map(len, frames))
            events = self._normalize(frames)
            if events:
                in_flight.append((self._hand_over(events), nbytes))
                in_flight_bytes += nbytes
            while len(in_flight) > 1 and (len(in_flight) > MAX_BURSTS_IN_FLIGHT or
                                          in_flight_bytes > MAX_BYTES_IN_FLIGHT):
                parts, nbytes = in_flight.popleft()
                self._wait_durable(parts)
                in_flight_bytes -= nbytes
        while in_flight:
            self._wait_durable(in_flight.popleft()[0])

    def _receive(self, wait):
        """A burst of frames: [] if none is there and not `wait`; None once stopping and the
        socket's queue is drained."""
        sock = self._socket
        if self._stopping and not self._unbound and time.monotonic() >= self._drain_deadline:
            if not self._stop_taking_frames():
                return None
        if wait:
            while not sock.poll(200, zmq.POLLIN):
                if self._stopping:
                    return None
        # Never blocking, and always polling before waiting again (see native.receive_frames_python).
        return self._receive_frames(sock, self.receive_batch)

    def _stop_taking_frames(self):
        """Unbind so no new frames arrive; False if that failed (then stop receiving now)."""
        self._unbound = True
        try:
            self._socket.unbind(self.endpoint)
        except zmq.ZMQError as e:
            log.error("ZeroMQ %s: senders are still sending %gs after the stop and the socket could "
                      "not be unbound (%s): closing it with what is queued unread", self.name,
                      self._drain_seconds, e)
            return False
        log.warning("ZeroMQ %s: senders are still sending %gs after the stop: no longer taking new "
                    "frames, journaling those already queued", self.name, self._drain_seconds)
        return True

    def _normalize(self, frames):
        frames = self._within_limit(frames)
        events = []
        now = datetime.datetime.now(datetime.timezone.utc)  # one burst, one receive time
        # Frames the compiled check finds valid as they are need no decoding (native.py); the
        # rest are decoded and validated here in Python, which words every rejection.
        plain = self.ingest.plain_bson_frames(frames) if self.splice else None
        if plain is not None and None not in plain:  # the usual burst: every frame as it came
            burst = self.ingest.frame_burst(frames, self.name, now)
            if burst is not None:
                return burst
        slow = frames if plain is None else [frame for frame, fields in zip(frames, plain) if fields is None]
        docs = iter(self._decode_burst(slow) or ()) if self.splice and slow else None
        for index, frame in enumerate(frames):
            if plain is not None and plain[index] is not None:
                try:
                    events.append(self.ingest.frame_event(plain[index], frame, self.name, now))
                except InvalidEvent as e:  # a topic refused: counted by frame_event
                    self._warn("ZeroMQ %s: rejected an event: %s", self.name, e)
                continue
            doc = next(docs, _UNDECODED) if docs is not None else _UNDECODED
            if doc is _UNDECODED:
                try:
                    doc = self.decode(frame)
                except Exception as e:  # any decoder error (RecursionError included) is bad input
                    self._reject(f"undecodable frame of {len(frame)} bytes: {type(e).__name__}: {e}")
                    continue
            if not isinstance(doc, dict):
                self._reject(f"a frame must hold one document, got {type(doc).__name__}")
                continue
            command = doc.pop("$command", _NO_COMMAND)
            if command not in COMMANDS and command is not _NO_COMMAND:
                self._reject(f"unknown $command {str(command)[:40]!r} (known: {', '.join(COMMANDS)})")
                continue
            # A BSON frame holding only sender fields in their final form is journaled as it
            # came (see journal.codec.FrameEvent): no re-encoding.
            spliceable = (self.splice and command is _NO_COMMAND and doc.keys() <= SPLICEABLE_FIELDS
                          and None not in doc.values())
            try:
                if spliceable:
                    event = self.ingest.normalize_frame(doc, frame, self.name, now)
                else:
                    event = self.ingest.normalize_one(doc, self.name, command == "event_noval", now)
            except InvalidEvent as e:  # counted by normalize_frame / normalize_one
                self._warn("ZeroMQ %s: rejected an event: %s", self.name, e)
                continue
            except Exception:  # a bug in validation: refuse this frame, not stop the appliance
                log.exception("ZeroMQ %s: validating a frame of %d bytes failed; it is rejected",
                              self.name, len(frame))
                self.stats.reject("internal error while validating the frame")
                continue
            events.append(event)
        return events

    def _within_limit(self, frames):
        """The frames of at most max_message_bytes; each larger one is a counted rejection."""
        limit = self.max_message_bytes
        if not frames or max(map(len, frames)) <= limit:
            return frames
        kept = []
        for frame in frames:
            if len(frame) <= limit:
                kept.append(frame)
            else:
                self._reject(f"a frame of {len(frame)} bytes is over zmq.max_message_bytes ({limit})")
        return kept

    @staticmethod
    def _decode_burst(frames):
        """The BSON frames' documents from one decoder call (a fifth cheaper per frame than a
        call each), or None if any frame is not exactly one whole document: then each is decoded
        alone, so a bad one is rejected by itself (codec.decode_events checks that every frame's
        size field is its length, so a frame journaled as it came is the document validated)."""
        try:
            return decode_events(frames)
        except Exception:
            return None

    def _reject(self, reason):
        self.stats.reject(reason)
        self._warn("ZeroMQ %s: rejected a frame: %s", self.name, reason)

    def _hand_over(self, events):
        """Give events to the journal, in order; return the parts handed over as
        [(pending append, its events)]. While the journal refuses them, hold on to them and
        retry. A burst the journal has no room for goes in parts, each as soon as it fits: whole,
        it might not fit even in an empty journal."""
        while True:
            try:
                return [(self.ingest.append_nowait(events, self.name), events)]
            except TooLargeForJournal as e:
                if len(events) == 1:
                    self._reject(str(e))
                    return []
                half = len(events) // 2
                return self._hand_over(events[:half]) + self._hand_over(events[half:])
            except JournalFull as e:
                if len(events) > 1 and not self._stopping:
                    half = len(events) // 2
                    return self._hand_over(events[:half]) + self._hand_over(events[half:])
                if not self._refused(events, e):
                    return []
            except JournalError as e:
                if not self._refused(events, e):
                    return []

    def _wait_durable(self, handed):
        """Wait for the parts handed over to be durable; a part whose write failed is handed
        over again."""
        handed = list(handed)
        while handed:
            pending, events = handed.pop(0)
            try:
                pending.wait()
            except JournalError as e:
                if self._refused(events, e):
                    handed[:0] = self._hand_over(events)

    def _refused(self, events, error):
        """Wait a moment before trying again; False if there is no point (shutting down)."""
        if self._stopping or isinstance(error, JournalClosed):
            log.error("ZeroMQ %s: %d received event(s) could not be journaled before shutdown and "
                      "are lost: %s", self.name, len(events), error)
            return False
        self.stats.refused += len(events)
        delay = self._retry.failed()
        self._warn("ZeroMQ %s: the journal refused %d event(s); holding them and retrying in %gs: %s",
                   self.name, len(events), delay, error)
        self._retry.wait()
        return True
