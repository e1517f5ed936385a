"""Notices: what this node tells downstream systems about itself, written as events to the journal.

    node_online     at start
    heartbeat       every notices.heartbeat_s, with the node's counters in `context`
    node_offline    at a clean stop
    hour_complete   once an hour's events are all in Kafka (zspark/hours.py)

A notice is an ordinary event with `source` "notice" (which no sender can set), so it travels
the same path with the same guarantees as every other event: the forwarders deliver it to Kafka's
`kafka.notice_topic` (default `zspark.notify`) and MongoDB's `mongo.notice_collection` (default
`notice`). A heartbeat the journal refuses (full, stopping) is logged and skipped: the next one
says the same and more.
"""
import logging
import os
import socket

import gevent

from . import __version__
from .event import NOTICE_SOURCE
from .journal import JournalError

log = logging.getLogger("zspark.notices")


class Notices:
    def __init__(self, ingest, node, counters, heartbeat_s=60.0):
        """`counters()` returns the dict a heartbeat carries (sources, forwarders, journal)."""
        self.ingest = ingest
        self.node = node
        self.counters = counters
        self.heartbeat_s = heartbeat_s
        self.host = socket.gethostname()

    def publish(self, notices):
        """Journal `notices` (a list of (type, topic or None, context)); wait until durable.

        Raises JournalError when the journal refuses them."""
        raws = [{"type": type_, "context": context, **({"topic": topic} if topic else {})}
                for type_, topic, context in notices]
        return self.ingest.append(self.ingest.normalize_all(raws, NOTICE_SOURCE))

    def node_notice(self, type_):
        """Publish node_online / heartbeat / node_offline; False (logged) if the journal refused."""
        context = {"host": self.host, "pid": os.getpid(), "version": __version__, **self.counters()}
        try:
            self.publish([(type_, None, context)])
            return True
        except JournalError as e:
            log.warning("could not journal the %s notice: %s", type_, e)
            return False

    def run_heartbeats(self):
        """The heartbeat greenlet: one notice every heartbeat_s, for ever."""
        while True:
            gevent.sleep(self.heartbeat_s)
            self.node_notice("heartbeat")
