"""Which Kafka topic an event goes to, and which topics senders may make zspark write to: one
rule, built from the `kafka` config section, that the Kafka sink applies to every event it
sends, the hour tracker to every event it counts, and the ingest path to every event it accepts
when `kafka.topic_not_allowed` is `refuse`. (It is config, not the sink: sources know nothing of
sinks.)

The topic is `kafka.topic`, a template over event fields; an event without a field the template
names goes to `kafka.default_topic`. Then:

- The node's notices (`source: "notice"`, which no sender can set) go to `kafka.notice_topic`,
  and nothing else ever does: a sender's event whose topic is the notice topic is not allowed,
  whatever `kafka.topics_allowed` says.
- A topic must match one of `kafka.topics_allowed` (fnmatch globs, case-sensitive: `web.*`,
  `app-[0-9]`; default `["*"]`).
- At most `kafka.max_topics` distinct topics are taken from senders. The default topic and names
  listed in `topics_allowed` without wildcards are the operator's own and do not count. A topic
  once taken stays taken: they are kept in `<journal>/kafka/topics.json`, saved before the first
  message goes to a new one, so a restart never makes room for more. (Every topic a message was
  produced to is in that file; one taken at ingest and lost in a crash before its first message
  was produced created nothing on the broker, and is taken again, room permitting.) Lower the
  cap, narrow the patterns, or delete the file while zspark is stopped, to change what is taken.
- An event whose topic is not allowed goes to the default topic (`topic_not_allowed: default`,
  counted as redirected and shown in /status) or, with `refuse`, is refused when it arrives (400
  naming the topic over HTTP, a counted rejection over ZeroMQ). An event already journaled whose
  topic is no longer allowed (config changed, or the cap filled meanwhile) is redirected in
  either mode: it was acknowledged, so it is delivered.
- A topic that is allowed but not a legal Kafka topic name goes to the dead-letter file as
  before (or is refused at ingest with `refuse`).

One writer of topics.json: the process that routes events to Kafka. With `forward.own_process`
that is the Kafka forwarder's process (zspark/fwdchild.py), whose policy loads the file at each
start and saves it before producing to a new topic; the serving process's policy is made with
`persist=False`: it loads the file once at start, never writes it, and learns the topics the
child takes (and its redirected count) from the child's reports (`absorb`). In `refuse` mode the
serving process still checks and takes topics at ingest, against the cap, in memory: every event
journaled then has a topic it took, and the child, whose taken topics are only ever ones it
routed to (so a subset of those), never finds the cap full for one of them. The hour tracker,
in the serving process, counts what it reads back from the journal with the serving process's
policy, which holds every topic the child reported taking.
"""
import json
import logging
import os
import re
import string

from . import blocking
from .event import NOTICE_SOURCE, InvalidEvent
from .journal import files
from .journal.cursor import write_atomically
from .recordfilter import Patterns
from .metrics import RateLimitedLog
from .safetext import shorten

log = logging.getLogger("zspark.topics")

# \Z, not $: $ also matches before a final newline, and "web\n" is no topic name.
LEGAL_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}\Z")
# Fields the appliance assigns: a template naming one needs them beside the sender's fields.
_ASSIGNED_FIELDS = frozenset(("timestamp", "source", "node", "_id"))
_RENDER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def legal_topic(name):
    return type(name) is str and LEGAL_TOPIC.match(name) is not None


def quoted(text, limit=60):
    """A sender's text in quotes for a log line, a reason or a terminal (safetext.shorten)."""
    return f"'{shorten(text, limit)}'"


class TopicNotAllowed(InvalidEvent):
    """An event's topic is not allowed (`refuse` mode); str() is the reason, naming the topic;
    `index` is the event's place in the batch checked."""

    def __init__(self, reason, index=0):
        super().__init__(reason)
        self.index = index


class TopicPolicy:
    def __init__(self, config, state_path=None, persist=True, load=True):
        """`config` is the `kafka` section; `state_path` the file the taken topics are kept in
        (None: in memory only, as for a sink made by hand), read now unless `load` is False
        (then by `load()`: the server reads it once the journal directory has been checked).
        With `persist` False the file is read but never written (`zcmd replay`, beside a running
        server that owns it)."""
        self.template = config.topic
        self.default_topic = config.default_topic
        self.notice_topic = config.notice_topic
        self.patterns = list(config.topics_allowed)
        self.max_topics = config.max_topics
        self.refuse = config.topic_not_allowed == "refuse"
        self.path = state_path
        self._persist = bool(state_path) and persist
        self._fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        # A template that is one field, as the default "{topic}": that field's text is the topic.
        only = self._fields[0] if len(self._fields) == 1 else ""
        self._field = only if only.isidentifier() and self.template == "{" + only + "}" else None
        self.needs_assigned = bool(_ASSIGNED_FIELDS.intersection(self._fields))
        allowed = Patterns(self.patterns)
        self._matches = allowed.match
        # Topics always allowed, outside the cap: the default one and those named literally.
        self._own = {p for p in allowed.exact if legal_topic(p)}
        self._own.add(self.default_topic)
        self._own.discard(self.notice_topic)
        self._taken = set()  # sender-derived topics taken, at most max_topics (more if loaded so)
        self._changes = self._saved = 0  # changes to _taken made, and saved (one may come mid-save)
        self.redirected = 0  # events delivered to the default topic instead of theirs
        self.refused = 0  # events refused at ingest (refuse mode)
        self.last_not_allowed = None  # the reason, naming the topic (escaped)
        self._warn = RateLimitedLog(log, burst=5)
        if state_path and load:
            self.load()

    # -- the decision -------------------------------------------------------------------------

    @property
    def template_fields(self):
        """The event fields the topic template reads."""
        return tuple(self._fields)

    def topic_of(self, event):
        """The topic the template gives `event` (a mapping with .get), before any policy."""
        if self._field is not None:
            value = event.get(self._field)
            if type(value) is str and value:
                return value
        values = {}
        for name in self._fields:
            value = event.get(name)
            if value is None or value == "":
                return self.default_topic
            values[name] = value
        try:
            return self.template.format_map(values)
        except _RENDER_ERRORS:  # a field's value the template cannot format (`{level:d}` of text)
            return self.default_topic

    def _refusal(self, topic, room=0):
        """Why `topic` (from the template, not the default or an own topic) is not allowed, or
        None. With `room` the cap counts that many topics about to be taken as well."""
        if topic == self.notice_topic:
            return (f"topic {quoted(topic)} is not allowed: it is kafka.notice_topic, which "
                    f"carries only this node's notices")
        if not self._matches(topic):
            return f"topic {quoted(topic)} is not allowed: it matches none of kafka.topics_allowed"
        if topic not in self._taken and len(self._taken) + room >= self.max_topics:
            return (f"topic {quoted(topic)} is not allowed: this node already writes to "
                    f"kafka.max_topics ({self.max_topics}) topics taken from events")
        return None

    def route(self, event, redirected=None):
        """The Kafka sink's topic for `event`, taking a new topic when allowed (remember to
        `save()` before producing to it). A topic not allowed gives the default topic, and its
        reason is appended to the list `redirected`; an illegal name is returned as it is (the
        sink dead-letters it)."""
        return self._decide(event, True, redirected)

    def delivered_topic(self, event):
        """The topic `route` gives `event`, without taking anything: where the Kafka sink sent
        it (for counting it). None for an illegal name: dead-lettered, not delivered."""
        return self._decide(event, False, None)

    def _decide(self, event, take, redirected):
        if event.get("source") == NOTICE_SOURCE:
            return self.notice_topic
        topic = self.topic_of(event)
        if topic in self._taken or topic in self._own:
            return topic
        reason = self._refusal(topic)
        if reason is not None:
            if redirected is not None:
                redirected.append(reason)
            return self.default_topic
        if not legal_topic(topic):
            return topic if take else None
        if take:
            self._take(topic)
        return topic

    def follows(self, topic):
        """True if events are delivered to `topic` (a topic saved by the hour tracker)."""
        return topic in self._taken or topic in self._own

    def check(self, events, view=None):
        """At ingest, in refuse mode: raise TopicNotAllowed (with `.index`, the event at fault)
        unless every one of `events` may go to its topic; then take the new topics, all or none.
        `view(event)` gives the mapping the template reads (the event itself by default)."""
        self.check_topics([None if event.get("source") == NOTICE_SOURCE
                           else self.topic_of(event if view is None else view(event)) for event in events])

    def check_topics(self, topics):
        """`check` of events given as their topics (`topic_of`; None for a notice): what the
        journal's owner checks of a batch an HTTP worker process sends (zspark/httpworkers.py)."""
        new = {}  # topics to take, in order
        for index, topic in enumerate(topics):
            if topic is None:
                continue
            if topic in self._taken or topic in self._own or topic in new:
                continue
            reason = self._refusal(topic, len(new))
            if reason is None and not legal_topic(topic):
                reason = (f"topic {quoted(topic)} is not a legal Kafka topic name (1-249 letters, "
                          f"digits, '.', '_', '-')")
            if reason is not None:
                self.refused += len(topics)
                self.last_not_allowed = reason
                raise TopicNotAllowed(reason, index)
            new[topic] = None
        for topic in new:
            self._take(topic)

    def note_redirected(self, reasons):
        """The Kafka sink delivered len(reasons) events to the default topic instead of theirs."""
        self.redirected += len(reasons)
        self.last_not_allowed = reasons[-1]
        self._warn("Kafka: %d event(s) sent to kafka.default_topic %s instead: %s", len(reasons),
                   quoted(self.default_topic), reasons[-1])

    def absorb(self, taken, redirected=0, last_not_allowed=None):
        """What the routing process reported (forward.own_process): the topics it has taken, and
        `redirected` more events it sent to the default topic, the last for `last_not_allowed`."""
        for topic in taken:
            if type(topic) is str and legal_topic(topic) and topic not in self._own:
                self._taken.add(topic)
        if redirected:
            self.redirected += redirected
            self.last_not_allowed = last_not_allowed

    def routing_report(self):
        """What `absorb` takes, from the routing process's policy."""
        return {"taken": sorted(self._taken), "redirected": self.redirected,
                "last_not_allowed": self.last_not_allowed}

    def _take(self, topic):
        self._taken.add(topic)
        self._changes += 1
        log.info("Kafka: topic %s taken from events (%d of kafka.max_topics %d)", quoted(topic),
                 len(self._taken), self.max_topics)

    # -- state --------------------------------------------------------------------------------

    def load(self):
        """Read the topics taken before from the state file (not following a link, not waiting
        on a FIFO planted there)."""
        try:
            fd = os.open(self.path, files.READ_FLAGS)
            with os.fdopen(fd, "rb") as f:
                state = json.loads(f.read())
            topics = state["topics"]
            if not isinstance(topics, list):
                raise TypeError("'topics' is not a list")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("Kafka topics state %s unreadable (%s): starting with no topics taken", self.path, e)
            return
        # Those the patterns no longer allow, or that are now the operator's own, are dropped
        # (and so do not count against the cap).
        self._taken = {t for t in topics if legal_topic(t) and t != self.notice_topic
                       and self._matches(t) and t not in self._own}
        log.info("Kafka: %d topic(s) taken from events before (kafka.max_topics %d)",
                 len(self._taken), self.max_topics)

    def save(self):
        """Write the taken topics (atomically, owner-only); raises OSError. Blocking in gevent's
        thread pool: call it from a greenlet."""
        changes = self._changes
        if self._persist:
            data = json.dumps({"topics": sorted(self._taken)}, indent=1).encode("utf-8")
            blocking.call(write_atomically, self.path, data)
        self._saved = max(self._saved, changes)

    @property
    def unsaved(self):
        return self._changes != self._saved

    def as_dict(self):
        return {"allowed": self.patterns, "max_topics": self.max_topics,
                "taken": len(self._taken), "not_allowed": "refuse" if self.refuse else "default",
                "redirected": self.redirected, "refused": self.refused,
                "last_not_allowed": self.last_not_allowed}


def state_path(journal_dir):
    return os.path.join(journal_dir, "kafka", "topics.json")
