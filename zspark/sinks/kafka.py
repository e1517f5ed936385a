"""The Kafka sink (confluent-kafka / librdkafka): a batch is done only when every message of it
has been confirmed by the broker: the producer's queue has drained and no delivery report came
back with an error (only errors are reported, so confirming a batch costs no Python call per
message).

The topic is the TopicPolicy's (zspark/topics.py): a template over event fields (`{topic}`,
`events.{env}.{type}`), `default_topic` when the event lacks a field the template names or its
topic is not allowed (`topics_allowed`, `max_topics`); a new topic is saved as taken before the
first message goes to it. The key comes from `key_field`. The node's notices (source "notice")
go to `notice_topic`, keyed by the node id so that one node's notices stay in order on one
partition; nothing else goes there. Formats: `json` (default), `bson`, or `plain`
(Sparkngin's delimiter-separated field list). The producer is idempotent, and `message.timeout.ms` is finite so that a long outage comes back as
failed deliveries the forwarder retries, never as messages silently expired.

A broker outage is seen at once: librdkafka's error callback says "all brokers are down" as soon as
the connections close, and the sink tells the forwarder (`on_destination`, which then shows
`backing_off`) and starts probing the bootstrap brokers with a plain TCP connect every
PROBE_INTERVAL_S. Once one accepts, the forwarder retries at once; a batch still unconfirmed
RESUME_GRACE_S after that is resent on a new producer, because the old one may sit out its
reconnect backoff, or hold a producer id that a broker restarted empty no longer knows, until its
messages time out. Resending costs duplicates, never loss: the batch counts as delivered only
once every message of it is confirmed. librdkafka's FAIL log lines are the errors its error
callback reports: they are logged once, by the callback.

librdkafka blocks only in flush/poll with a timeout. A batch waits for its delivery reports by
calling poll(0), which never blocks, from the forwarder's greenlet, sleeping cooperatively between
calls, so the event loop keeps serving and the reports' callbacks run in the loop's own thread.
(Waiting in flush() in gevent's thread pool made that thread take the GIL back from a busy event
loop once per report: with the loop kept busy, 100,000 reports took 23 s instead of 1.4 s.) Only
close() still flushes in the thread pool.
"""
import dataclasses
import json
import logging
import time

import bson
import gevent
import gevent.socket
from confluent_kafka import KafkaError, KafkaException, Producer

from gevent.monkey import get_original

from .. import blocking, native
from ..errors import PermanentDeliveryError, TransientDeliveryError
from ..event import NOTICE_SOURCE
from ..hours import count_stamped, counted_time
from ..journal.codec import decode_event, decode_records, event_json_bytes, to_json_value
from ..metrics import RateLimitedLog
from ..redact import redact
from ..topics import LEGAL_TOPIC, TopicPolicy, legal_topic, state_path
from . import Sent, Unreachable, first_line

log = logging.getLogger("zspark.sinks.kafka")
_thread_id = get_original("_thread", "get_ident")  # the OS thread's (gevent's is the greenlet's)

# Delivery errors no retry can mend: the message itself is unacceptable.
PERMANENT_ERRORS = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.TOPIC_EXCEPTION,
}


# How often a batch waiting for its delivery reports looks for them: every millisecond at first,
# then every tenth of the time waited so far (at most every 50 ms, as while a broker is down).
REPORT_POLL_MIN_S = 0.001
RENEW_AFTER_TIMED_OUT_BATCHES = 2
REPORT_POLL_MAX_S = 0.05
# While all brokers are down: how often to try a TCP connect to them, and how long a batch may
# stay unconfirmed once one answers before it is resent on a new producer.
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 0.5
RESUME_GRACE_S = 1.0


def build(section, context):
    """The Kafka sink for the registry (zspark/sinks/__init__.py): the server's TopicPolicy, or
    for a replay the live forwarder's rule and the topics it took (read, not written: the server
    owns that file; topics new to the replay count against kafka.max_topics too)."""
    topics = context.topics
    if context.replay:
        # librdkafka's own log prints every failed connection attempt (20 a second while a
        # broker is down); the sink's error callback reports the same, rate-limited.
        section = dataclasses.replace(section, producer={"log_level": 2, **section.producer})
        if topics is None:
            topics = TopicPolicy(section, state_path(context.config.journal.dir), persist=False)
    if context.timeout_ms is not None:
        section = dataclasses.replace(section, message_timeout_ms=min(
            section.message_timeout_ms or context.timeout_ms, context.timeout_ms))
    return KafkaSink(section, topics)


class KafkaSink:
    name = "kafka"
    on_destination = None  # set by the forwarder: called with a reason when down, None when back

    def __init__(self, config, topics=None):
        """`topics`: the process's TopicPolicy (else one of this sink's own, kept in memory)."""
        self.config = config
        self.topics = topics if topics is not None else TopicPolicy(config)
        settings = {
            "bootstrap.servers": config.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": config.compression,
            "message.timeout.ms": config.message_timeout_ms,
            "linger.ms": 2,
            "queue.buffering.max.messages": 1000000,
            "delivery.report.only.error": True,  # a batch is confirmed by the queue draining
            "error_cb": self._on_error,
            # librdkafka logs each failed connection attempt (many a second while a broker is
            # down); through a rate-limited logger they say it a few times a minute.
            "logger": _RateLimitedLogger(),
        }
        settings.update(config.producer)
        self._settings = settings
        self._fatal = None
        self._timed_out_batches = 0  # batches in a row whose every failure was a timeout
        self._down = None  # why, while all brokers are down (librdkafka said so; no answer since)
        self._back_at = None  # when a broker answered again after an outage (monotonic)
        self._probe = None  # the greenlet probing the brokers while they are down
        # Callbacks run in the thread that polls: this one, or the thread pool's while close()
        # or a replaced producer flushes; only this one may touch greenlets and the forwarder.
        self._loop_thread = _thread_id()
        self._warn = RateLimitedLog(log, burst=5)
        self.producer, self._failed = self._new_producer()
        self._legal_topics = set()  # topic names seen legal lately (the same few come again and again)
        self.encode = {"json": event_json_bytes, "bson": bson.encode, "plain": self._as_plain}[config.format]
        self.fast_fields = FastFields.of(config, self.topics)

    def describe(self):
        return f"Kafka {redact(self.config.brokers)}"

    def topic_for(self, event):
        """The topic `event` goes (went) to; None for an illegal name (dead-lettered)."""
        return self.topics.delivered_topic(event)

    def send(self, items):
        """Deliver (offset, event) items: the sink protocol's send (zspark/sinks/__init__.py)."""
        return self._deliver(_Messages.of_events(self, items)).rejected

    def send_records(self, records, hours=False):
        """Deliver journal records (offset, payload) as they were read: a Sent (sinks/__init__.py).
        Records of the common shape become messages without being decoded (native.json_fields,
        compiled: the same JSON bytes as event_json_bytes of the decoded event); the others are
        decoded and go the way `send` takes them. With `hours`, the Sent counts the delivered
        events by hour and topic for the hour tracker."""
        messages = _Messages.of_records(self, records)
        sent = self._deliver(messages)
        sent.undecodable = messages.undecodable
        if hours:
            sent.hours = messages.hour_counts(sent.rejected)
        return sent

    def _deliver(self, messages):
        """Produce `messages` (a _Messages) and wait until each is confirmed: a Sent, or raise."""
        if self._fatal is not None:
            # An idempotent producer that hit a fatal error refuses everything: start afresh.
            log.warning("Kafka: replacing the producer after a fatal error: %s", self._fatal)
            self._replace_producer()
        elif self._timed_out_batches >= RENEW_AFTER_TIMED_OUT_BATCHES:
            # A broker that lost this producer's id (restarted empty, or the id expired) refuses
            # its batches for ever (UNKNOWN_PRODUCER_ID), which librdkafka reports only as
            # timeouts and never mends; a new producer gets a new id. While the broker is really
            # down this costs a new producer every few attempts: cheap beside message.timeout.ms.
            log.warning("Kafka: %d batches in a row timed out; replacing the producer",
                        self._timed_out_batches)
            self._replace_producer()
        rejected = []  # indexes into messages, and why
        # Only failed messages come back (delivery.report.only.error, to the producer's
        # on_delivery: a Python call per message would cost as much as producing it). A message
        # has been confirmed once it has left the producer's queue with no error report; which
        # message a failed report was is worked out only for permanent errors.
        failed = self._failed
        failed.clear()
        if self.topics.unsaved:
            # A new topic is on disk before anything is produced to it, so that a restart does
            # not forget it and make room under kafka.max_topics for one more (raises OSError,
            # retried by the forwarder).
            self.topics.save()
        produce = self.producer.produce
        legal = self._legal_topics
        sent = 0
        try:
            for index, (topic, value, key) in enumerate(zip(messages.topics, messages.values, messages.keys)):
                if topic not in legal:
                    if not LEGAL_TOPIC.match(topic):
                        rejected.append((index, f"not a legal Kafka topic name: {topic[:60]!r}"))
                        continue
                    if len(legal) >= 1000:
                        legal.clear()
                    legal.add(topic)
                while True:
                    try:
                        produce(topic, value, key)
                        sent += 1
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        self.producer.poll(0)
                        gevent.sleep(0.05)
                    except KafkaException as e:
                        err = e.args[0]
                        if err.code() not in PERMANENT_ERRORS:
                            raise
                        rejected.append((index, f"Kafka refused it: {err.str()}"))
                        break
            self._wait_for_reports()
        except Exception as e:
            if len(self.producer):
                # Messages of this attempt still queued would report into the next attempt's
                # list (a refusal matched to no message of it would fail the forwarder): the
                # retry goes on a new producer, this one's messages purged.
                self._replace_producer()
            # A fatal error (the idempotent producer's state lost, e.g. a broker that restarted
            # empty) comes out of produce/flush as an exception, not through error_cb: this
            # producer refuses everything from now on, so the retry needs a new one.
            fatal = _fatal_error(e)
            if fatal is not None:
                self._fatal = fatal
                raise TransientDeliveryError(f"Kafka: producer fatal error (a new producer is made "
                                             f"for the retry): {fatal}") from e
            if isinstance(e, KafkaException):
                raise TransientDeliveryError(f"Kafka: {_reason(e)}") from e
            raise
        failures = []
        refused = {}  # (topic, key, value) -> permanent errors of the messages that were these
        for err, msg in failed:
            if err.code() in PERMANENT_ERRORS:
                refused.setdefault((msg.topic(), msg.key(), msg.value()), []).append(err)
            else:
                failures.append(err)
                if err.fatal() or err.code() == KafkaError._FATAL:
                    self._fatal = err.str()
        if refused:
            rejected += messages.matching(refused, {index for index, _ in rejected})
        timed_out = failures and all(err.code() == KafkaError._MSG_TIMED_OUT for err in failures)
        self._timed_out_batches = self._timed_out_batches + 1 if timed_out else 0
        if failures:
            # The ones that did arrive will arrive again on the retry: at-least-once, bounded by a batch.
            raise TransientDeliveryError(f"Kafka: {len(failures)} of {sent} message(s) not delivered: "
                                         f"{failures[0].str()}")
        if refused:
            unmatched = [err for errors in refused.values() for err in errors]
            if unmatched:  # refused for good, and which event it was cannot be told
                raise PermanentDeliveryError(f"Kafka: {len(unmatched)} of {sent} message(s) not delivered: "
                                             f"refused for good ({unmatched[0].str()}) but matched to "
                                             f"no event of the batch")
        if sent:  # a broker confirmed messages: it is up, whatever was said before
            self._back_at = None
            self._answered()
        if messages.redirected:
            self.topics.note_redirected(messages.redirected)
        return Sent(rejected=[(messages.offsets[index], messages.event(index), reason)
                              for index, reason in rejected],
                    delivered=len(messages.values) - len(rejected))

    def _new_producer(self):
        """A producer, and the list its delivery reports go to: only failures come
        (delivery.report.only.error). Each producer has a list of its own, so that a replaced
        one's reports (its purged messages, as it is flushed in the thread pool) never reach
        the batch in flight on its successor."""
        failed = []

        def on_delivery(err, msg):
            if err is not None:
                failed.append((err, msg))
        return Producer({**self._settings, "on_delivery": on_delivery}), failed

    def _replace_producer(self):
        old = self.producer
        self.producer, self._failed = self._new_producer()
        self._fatal = None
        self._timed_out_batches = 0
        # Drop what the old one still holds (the forwarder sends the batch again) and let it go
        # in the thread pool: destroying a producer waits for its threads.
        old.purge()
        blocking.spawn(old.flush, 1.0)

    def _wait_for_reports(self):
        """Wait until the producer's queue is empty: every message of the batch (the only one
        this producer has in flight) confirmed by the broker, or failed and reported, and every
        report served. That happens at the latest after message.timeout.ms."""
        deadline_s = self.config.message_timeout_ms / 1000.0 + 30
        started = time.monotonic()
        poll = self.producer.poll
        while True:
            poll(0)  # serves the reports already in, here in the event loop's thread; never blocks
            waiting = len(self.producer)  # messages unconfirmed, reports and callbacks unserved
            if not waiting:
                return
            waited = time.monotonic() - started
            if waited > deadline_s:
                raise TransientDeliveryError(f"Kafka: {waiting} message(s) or report(s) still waiting "
                                             f"after {deadline_s:.0f}s")
            if self._back_at is not None and time.monotonic() - self._back_at > RESUME_GRACE_S:
                self._back_at = None
                log.warning("Kafka: a broker answers again but %d message(s) of the batch are still "
                            "unconfirmed; resending the batch on a new producer", waiting)
                self._replace_producer()
                raise TransientDeliveryError("Kafka: the batch in flight during the outage is resent "
                                             "on a new producer")
            gevent.sleep(min(REPORT_POLL_MAX_S, max(REPORT_POLL_MIN_S, waited / 10)))

    def _key(self, event):
        if event.get("source") == NOTICE_SOURCE:
            return event["node"].encode("utf-8")  # one partition per node: its notices in order
        name = self.config.key_field
        if not name or event.get(name) is None:
            return None
        value = event[name]
        return value.encode("utf-8") if isinstance(value, str) else str(to_json_value(value)).encode()

    def _as_plain(self, event):
        parts = []
        for name in self.config.plain_fields:
            value = event.get(name)
            if value is None:
                text = ""
            elif isinstance(value, (dict, list)):
                text = json.dumps(value, default=to_json_value, separators=(",", ":"), ensure_ascii=False)
            elif isinstance(value, str):
                text = value
            else:
                text = str(to_json_value(value)) if not isinstance(value, (int, float, bool)) else json.dumps(value)
            parts.append(text.replace(self.config.plain_delimiter, " ").replace("\n", " "))
        return self.config.plain_delimiter.join(parts).encode("utf-8")

    def _on_error(self, err):
        # Connection trouble surfaces here first; deliveries fail (and are retried) after
        # message.timeout.ms. Fatal errors (idempotence broken) need a new producer.
        if err.fatal():
            self._fatal = err.str()
            log.error("Kafka producer fatal error: %s", err.str())
            return
        self._warn("Kafka: %s", err.str())
        if err.code() == KafkaError._ALL_BROKERS_DOWN and _thread_id() == self._loop_thread:
            self._destination_down(f"Kafka: {err.str()}")

    def _destination_down(self, reason):
        """All brokers are down: say so to the forwarder, probe them until one answers."""
        if self._down is None and self.on_destination is not None:
            self.on_destination(reason)
        self._down = reason
        self._back_at = None
        if self._probe is None or self._probe.dead:
            self._probe = gevent.spawn(self._probe_brokers)

    def _probe_brokers(self):
        addresses = _addresses(self.config.brokers)
        while self._down is not None:
            if any(_accepts(address, PROBE_TIMEOUT_S) for address in addresses):
                log.info("Kafka: %s accepts connections again", redact(self.config.brokers))
                self._back_at = time.monotonic()
                self._answered()
                return
            gevent.sleep(PROBE_INTERVAL_S)

    def _answered(self):
        """A broker answers (a probe connected, or messages were confirmed)."""
        if self._down is not None:
            self._down = None
            if self.on_destination is not None:
                self.on_destination(None)

    def healthcheck(self, timeout):
        def metadata():  # returns the exception: the thread pool would print its traceback
            try:
                self.producer.list_topics(timeout=timeout)
            except Exception as e:
                return e
        e = blocking.call(metadata)
        if e is not None:
            raise Unreachable(f"cannot reach Kafka at {self.config.brokers} (config kafka.brokers) "
                              f"within {timeout:g}s: {_reason(e)}")

    def close(self, abandon=False):
        self._down = None
        if self._probe is not None:
            self._probe.kill()
        if abandon:  # giving up: drop what librdkafka still holds rather than wait for it
            self.producer.purge()
        remaining = blocking.call(self.producer.flush, 5.0)
        if remaining:
            log.warning("Kafka: %d message(s) still unconfirmed at close; they are sent again at the "
                        "next start", remaining)


class _RateLimitedLogger:
    """What confluent-kafka calls for librdkafka's own log lines (`logger.log(level, msg, *args)`)."""

    def __init__(self):
        self._limited = RateLimitedLog(logging.getLogger("zspark.sinks.kafka.librdkafka"), burst=5)

    def log(self, level, msg, *args):
        if args and args[0] == "FAIL":
            return  # a broker connection failed: the error callback logs that same error
        self._limited(msg, *args)


def _reason(exc):
    """What a KafkaException says, in one line."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else first_line(exc)


def _addresses(brokers):
    """(host, port) of each bootstrap broker in a `bootstrap.servers` list (port 9092 if none)."""
    out = []
    for entry in brokers.split(","):
        entry = entry.strip().rpartition("://")[2]  # SSL://host:port
        host, _, port = entry.rpartition(":")
        if not port.isdigit():  # no port: "host", "[::1]"
            host, port = entry, "9092"
        if host:
            out.append((host.strip("[]"), int(port)))
    return out


def _accepts(address, timeout):
    """Whether a TCP connection to `address` succeeds within `timeout` (cooperative)."""
    try:
        gevent.socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def _fatal_error(exc):
    """The message of a fatal librdkafka error behind `exc` (itself, or its cause), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            err = exc.args[0]
            if err.fatal() or err.code() == KafkaError._FATAL:
                return err.str()
        exc = exc.__cause__ or exc.__context__
    return None



class _Messages:
    """A batch as the messages to produce, in journal order: parallel lists of each message's
    offset, topic, value and key, what it was made from (the event, or the record's payload
    when it was never decoded) and its event's timestamp (for the hour counts; None for a
    notice)."""

    def __init__(self, sink):
        self.sink = sink
        self.offsets, self.topics, self.values, self.keys = [], [], [], []
        self.origins, self.stamps = [], []
        self.redirected = []  # why each event sent to the default topic instead of its own was
        self.undecodable = []  # (offset, payload, error): intact records that are not events

    @classmethod
    def of_events(cls, sink, items):
        messages = cls(sink)
        for offset, event in items:
            messages.add_event(offset, event)
        return messages

    @classmethod
    def of_records(cls, sink, records):
        messages = cls(sink)
        fast = sink.fast_fields
        # Only the timestamp may be a time: a record whose source, topic or key field is not
        # text (a sender's stimestamp, anything in an event_noval record) is left to Python.
        results = native.json_fields([payload for _, payload in records], fast.names, 1) if fast else None
        if results is None:
            results = [None] * len(records)
        else:  # also left to Python: a notice (its key is the node)
            results = [None if result is None or result[2] == NOTICE_SOURCE else result for result in results]
        # The records the compiled path left to Python (all of them when it is not compiled),
        # decoded in one call.
        slow = [record for record, result in zip(records, results) if result is None]
        decoded = dict(decode_records(slow, lambda offset, payload, e: messages.undecodable.append(
            (offset, payload, e)))) if slow else {}
        routes = {}  # the template fields' values -> (topic, why it was redirected or None)
        first, end = (fast.first_template, fast.end_template) if fast else (0, 0)
        for (offset, payload), result in zip(records, results):
            if result is None:
                event = decoded.get(offset)
                if event is not None:
                    messages.add_event(offset, event)
                continue
            fields = result[first:end]
            routed = routes.get(fields)
            if routed is None:
                reasons = []
                view = dict(zip(fast.template, fields), source=result[2])
                topic = sink.topics.route(view, reasons)
                routed = (topic, reasons[0] if reasons else None)
                if legal_topic(topic):  # an illegal name is not taken: the next may find the cap full
                    routes[fields] = routed
            if routed[1] is not None:
                messages.redirected.append(routed[1])
            key = result[fast.key] if fast.key else None
            messages.offsets.append(offset)
            messages.topics.append(routed[0])
            messages.values.append(result[0])
            messages.keys.append(key.encode("utf-8") if key is not None else None)
            messages.origins.append(payload)
            messages.stamps.append(result[1])
        return messages

    def add_event(self, offset, event):
        sink = self.sink
        self.offsets.append(offset)
        self.topics.append(sink.topics.route(event, self.redirected))
        self.values.append(sink.encode(event))
        self.keys.append(sink._key(event))
        self.origins.append(event)
        self.stamps.append(counted_time(event))

    def event(self, index):
        origin = self.origins[index]
        return decode_event(origin) if type(origin) is bytes else origin

    def matching(self, refused, skip):
        """(index, reason) of the messages, but those in `skip`, that came back with a permanent
        error: `refused` maps (topic, key, value) to those errors, and an error is taken from it
        for each message matched (identical messages are matched by count)."""
        out = []
        for index, message in enumerate(zip(self.topics, self.keys, self.values)):
            errors = refused.get(message) if index not in skip else None
            if errors:
                out.append((index, f"Kafka refused it: {errors.pop().str()}"))
        return out

    def hour_counts(self, rejected):
        """HourCounts of the messages delivered: all but `rejected` (offset, event, reason)."""
        stamps, topics = self.stamps, self.topics
        if rejected:
            refused = {offset for offset, _, _ in rejected}
            kept = [i for i, offset in enumerate(self.offsets) if offset not in refused]
            stamps, topics = [stamps[i] for i in kept], [topics[i] for i in kept]
        return count_stamped(zip(stamps, topics))


@dataclasses.dataclass(frozen=True)
class FastFields:
    """Which top-level fields native.json_fields hands back for a record, and where: the
    timestamp, the source, the topic template's fields, the key field."""
    names: tuple
    template: tuple
    key: int  # the key field's place in a json_fields result, 0 for none

    # json_fields results: (json, timestamp, source, template fields..., key)
    first_template = 3

    @property
    def end_template(self):
        return self.first_template + len(self.template)

    @classmethod
    def of(cls, config, topics):
        """The fields, or None where messages need the decoded event: a format other than JSON,
        a topic template or key made of the timestamp or the id (not strings), or more fields
        than json_fields hands back."""
        template = topics.template_fields
        if config.format != "json" or {"timestamp", "_id"} & {*template, config.key_field}:
            return None
        names = ("timestamp", "source") + template
        key = 0
        if config.key_field:
            key, names = len(names) + 1, names + (config.key_field,)
        return cls(names, template, key) if len(names) <= native.JSON_FIELDS_MAX_NAMES else None
