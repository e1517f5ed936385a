"""Hour-complete notices (Sparkngin's "all data of hour H is sent"): for each Kafka topic, once an
hour is over, plus `notices.hour_grace_s` for late events, and the Kafka forwarder has delivered
every event of that hour from this node, publish one `hour_complete` notice saying so, with the
count of events delivered. A downstream batch job waits for one notice per node and topic.

How it knows, across crashes and restarts, without repeating or skipping an hour:

- Counting. After each batch Kafka confirmed, the forwarder hands over the delivered events; they
  are counted per (hour of `timestamp`, Kafka topic), and `counted_to` becomes the next offset.
  What the forwarder delivered while counting was not running (or before a crash let counting
  save its state) is counted afterwards from the journal, from `counted_to` to the forwarder's
  cursor: every delivered event is counted once. A Kafka forwarder in a process of its own
  (`forward.own_process`) counts its batch there (`count_hours`) and sends the HourCounts only;
  which hours are late is still decided here.
- The boundary. `timestamp` is the time zspark received the event, so when the clock passes the
  hour's end plus the grace, every event of the hour has been journaled: the journal's end offset
  then is the hour's boundary. Once `counted_to` reaches it, the hour is complete.
- Saying it once. The state (counted_to, counts, boundaries, the next hour to announce) is saved
  atomically in `<journal>/notices/hours.json`. The notices are journaled first and the hour is
  marked done after; if the process dies between the two, the next start finds the notices in
  the journal after the boundary and does not send them again.

Topics: every topic with events in the hour, and, with a count of 0, those seen in the 24 hours
before it, so a downstream job also hears from a node that had nothing for it. An event counts
under the topic the Kafka sink delivered it to (zspark/topics.py: one whose own topic was not
allowed, under the default topic), so only topics the node writes to are followed: at most
`kafka.max_topics` taken from events, beside the default topic and those named in
`kafka.topics_allowed`. A topic saved here that the node no longer writes to (the config
changed) is dropped. An event stamped
in an hour already announced (one held longer than the grace) is counted as late and logged.

The clock (`clock`, time.time by default) is the tracker's own: tests move it past an hour's end
(tests/shifted_clock.py).
"""
import datetime
import json
import logging
import os
import time

import gevent

from . import blocking
from .event import NOTICE_SOURCE
from .journal import JournalError, decode_records, files
from .journal.cursor import write_atomically
from .metrics import RateLimitedLog

log = logging.getLogger("zspark.hours")

HOUR = 3600
KEEP_TOPICS_S = 24 * HOUR
SAVE_EVERY_S = 5.0  # counting progress is saved this often (it is recounted after a crash)


def hour_text(hour):
    return time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour))


class HourCounts(dict):
    """Delivered events counted by (hour of `timestamp`, Kafka topic); topic None: dead-lettered.
    Notices and events without a timestamp are not in it."""

    def as_list(self):
        return [[hour, topic, n] for (hour, topic), n in self.items()]

    @classmethod
    def from_list(cls, items):
        """From as_list()'s form, as a forwarder process sends it; raises ValueError if malformed."""
        counts = cls()
        for hour, topic, n in items:
            if type(hour) is not int or type(n) is not int or not (topic is None or type(topic) is str):
                raise ValueError(f"not an hour count: {[hour, topic, n]!r}")
            counts[hour, topic] = counts.get((hour, topic), 0) + n
        return counts


def count_hours(events, topic_for):
    """HourCounts of `events`, each under `topic_for(event)`, the topic it was delivered to."""
    return count_stamped((stamp, topic_for(event)) for event in events if (stamp := counted_time(event)) is not None)


def counted_time(event):
    """The time an event is counted under: its timestamp, if it is a time (zspark's ingest always
    writes one; a record written otherwise may hold anything there); None for a notice or
    anything else, which are not counted."""
    value = event.get("timestamp")
    return value if isinstance(value, datetime.datetime) and event.get("source") != NOTICE_SOURCE else None


def count_stamped(pairs):
    """HourCounts of (timestamp, topic) pairs, a timestamp being a datetime, BSON's milliseconds
    since the epoch (an int), or None (not counted)."""
    counts = HourCounts()
    last_ts = last_hour = None
    for ts, topic in pairs:
        if ts is None:
            continue
        if ts != last_ts:  # a request's events share one timestamp (equal once read back, not the same object)
            seconds = ts / 1000 if type(ts) is int else ts.timestamp()
            last_ts, last_hour = ts, int(seconds) // HOUR * HOUR
        key = (last_hour, topic)
        counts[key] = counts.get(key, 0) + 1
    return counts


class HourTracker:
    def __init__(self, journal, forwarder, topic_for, publish, grace_s=300.0, check_s=1.0,
                 clock=time.time, follows=None):
        """`forwarder` is the Kafka forwarder (its cursor and its on_delivered hook);
        `topic_for(event)` the Kafka topic an event was delivered to (None: not delivered);
        `follows(topic)` whether events still go to a topic (TopicPolicy.follows; default: all);
        `publish(notices)` journals notices."""
        self.journal = journal
        self.forwarder = forwarder
        self.topic_for = topic_for
        self.follows = follows or (lambda topic: True)
        self.publish = publish
        self.grace_s = grace_s
        self.check_s = check_s
        self.clock = clock
        self.path = os.path.join(journal.directory, "notices", "hours.json")
        self._warn_late = RateLimitedLog(log)
        self._warn_io = RateLimitedLog(log)
        self._saved_at = 0.0
        self._dirty = False
        self._already_sent = {}  # hour -> topics found in the journal at start (see recover)
        self._load()
        forwarder.on_delivered = self.delivered
        forwarder.counts_hours = True

    # -- state ------------------------------------------------------------------------------

    def _load(self):
        try:
            with os.fdopen(files.open_file(self.path, os.O_RDONLY), encoding="utf-8") as f:
                state = json.load(f)
            self.counted_to = int(state["counted_to"])
            self.next_hour = int(state["next_hour"])
            self.counts = {int(h): dict(t) for h, t in state["counts"].items()}
            self.boundaries = {int(h): int(b) for h, b in state["boundaries"].items()}
            self.topics = {t: int(h) for t, h in dict(state["topics"]).items() if self.follows(t)}
            self.late = int(state.get("late", 0))
            log.info("hour-complete: next hour to announce %s, counted to offset %d",
                     hour_text(self.next_hour), self.counted_to)
            return
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("hour-complete state %s unreadable (%s): starting afresh from the current hour "
                      "(earlier hours are not announced)", self.path, e)
        self.counted_to = self.forwarder.cursor.offset
        self.next_hour = int(self.clock()) // HOUR * HOUR
        self.counts, self.boundaries, self.topics, self.late = {}, {}, {}, 0
        self._dirty = True

    def _save(self):
        state = {"counted_to": self.counted_to, "next_hour": self.next_hour,
                 "next_hour_text": hour_text(self.next_hour),
                 "counts": {str(h): t for h, t in self.counts.items()},
                 "boundaries": {str(h): b for h, b in self.boundaries.items()},
                 "topics": self.topics, "late": self.late}
        data = json.dumps(state, indent=1, sort_keys=True).encode("utf-8")
        blocking.call(write_atomically, self.path, data)
        self._saved_at = time.monotonic()
        self._dirty = False

    def as_dict(self):
        return {"next_hour": hour_text(self.next_hour), "counted_to": self.counted_to,
                "hours_waiting": sorted(hour_text(h) for h in self.boundaries), "late_events": self.late}

    # -- counting ---------------------------------------------------------------------------

    def delivered(self, first_offset, next_offset, counts):
        """The forwarder's hook: the events of offsets first_offset..next_offset-1, less any it
        dead-lettered, are confirmed by Kafka; `counts`, their HourCounts, made by the forwarder
        (in a process of its own: there, zspark/fwdproxy.py)."""
        if first_offset != self.counted_to:
            return  # a gap: catch_up() counts from the journal
        self._count(counts)
        self.counted_to = next_offset
        self._dirty = True

    def _count(self, events):
        counts = events if isinstance(events, HourCounts) else count_hours(events, self.topic_for)
        for (hour, topic), n in counts.items():
            if hour < self.next_hour:
                self.late += n
                self._warn_late("hour-complete: an event of %s was delivered after that hour was "
                                "announced (held longer than the %.0fs grace); counted as late",
                                hour_text(hour), self.grace_s)
                continue
            if topic is None:
                continue  # dead-lettered (an illegal topic name), not delivered
            per_topic = self.counts.setdefault(hour, {})
            per_topic[topic] = per_topic.get(topic, 0) + n

    def catch_up(self):
        """Count, from the journal, what the forwarder delivered beyond counted_to."""
        target = self.forwarder.cursor.offset
        if self.counted_to >= target:
            return
        reader = self.journal.reader(self.counted_to)
        try:
            while self.counted_to < target:
                records = reader.read(max_records=min(1000, target - self.counted_to))
                if not records:
                    break  # the rest is gone (retention, damage): nothing left to count there
                # What is not an event the forwarder dead-lettered: not counted.
                self._count(event for offset, event in decode_records([r for r in records if r[0] < target]))
                self.counted_to = min(target, records[-1][0] + 1)
                self._dirty = True
                gevent.sleep(0)
        finally:
            reader.close()
        self.counted_to = max(self.counted_to, target)

    # -- hours ------------------------------------------------------------------------------

    def close_hours(self):
        """Record the boundary of every hour whose end plus grace has passed."""
        now = self.clock()
        hour = self.next_hour
        closed = False
        while hour + HOUR + self.grace_s <= now:
            if hour not in self.boundaries:
                self.boundaries[hour] = self.journal.end_offset
                closed = True
            hour += HOUR
        if closed:
            self._save()

    def announce_ready(self):
        """Publish the notices of each hour, in order, whose events are all delivered."""
        while self.next_hour in self.boundaries and self.counted_to >= self.boundaries[self.next_hour]:
            hour = self.next_hour
            counts = dict(self.counts.get(hour, {}))
            for topic, seen in self.topics.items():
                if seen >= hour - KEEP_TOPICS_S and self.follows(topic):
                    counts.setdefault(topic, 0)
            sent = self._already_sent.pop(hour, set())
            notices = [("hour_complete", topic, {"topic": topic, "hour": hour_text(hour),
                                                 "hour_start": hour, "count": count,
                                                 "grace_s": self.grace_s})
                       for topic, count in sorted(counts.items()) if topic not in sent]
            if notices:
                try:
                    self.publish(notices)
                except JournalError as e:
                    self._already_sent[hour] = sent
                    log.warning("hour-complete: cannot journal the notices of %s yet: %s",
                                hour_text(hour), e)
                    return
            log.info("hour-complete: %s announced for %d topic(s), %d event(s)", hour_text(hour),
                     len(counts), sum(counts.values()))
            for topic in self.counts.pop(hour, {}):
                self.topics[topic] = hour
            self.topics = {t: h for t, h in self.topics.items() if h >= hour - KEEP_TOPICS_S}
            del self.boundaries[hour]
            self.next_hour = hour + HOUR
            self._save()

    def recover(self):
        """After a crash between journaling an hour's notices and saving that the hour is done:
        find the notices already in the journal so they are not sent twice."""
        boundary = self.boundaries.get(self.next_hour)
        if boundary is None:
            return
        wanted = hour_text(self.next_hour)
        found = set()
        reader = self.journal.reader(boundary)
        try:
            while True:
                records = reader.read()
                if not records:
                    break
                for _, event in decode_records([r for r in records if b"hour_complete" in r[1]]):
                    context = event.get("context") or {}
                    if (event.get("source") == NOTICE_SOURCE and event.get("type") == "hour_complete"
                            and context.get("hour") == wanted):
                        found.add(context.get("topic"))
                gevent.sleep(0)
        finally:
            reader.close()
        if found:
            log.info("hour-complete: %d notice(s) of %s were already journaled before the last "
                     "stop; not sending them again", len(found), wanted)
            self._already_sent[self.next_hour] = found

    def run(self):
        """The tracker's greenlet. A disk that is full or a process out of descriptors (the
        state file cannot be written, the journal not read) does not stop it: what it could not
        do is done at a later check, and its state is saved once it can be."""
        recovered = False
        while True:
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                self.catch_up()
                self.close_hours()
                self.announce_ready()
                if self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                    self._save()
            except OSError as e:
                self._dirty = True  # whatever was not saved is saved at a later check
                self._warn_io("hour-complete: %s; trying again in %gs", e, self.check_s)
            gevent.sleep(self.check_s)

    def stop(self):
        """Save counting progress (at a clean stop, after the forwarder stopped)."""
        if self._dirty:
            self._save()
