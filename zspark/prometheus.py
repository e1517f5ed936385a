"""`GET /metrics`: the process's live state in the Prometheus text format.

Nothing here counts anything. `ZsparkCollector` reads, at scrape time, the counters the process
already keeps (the sources' `SourceStats`, the journal's `Stats`, each `Forwarder`) and turns them
into metric families; `Exposition` renders it, with prometheus_client's process collector (RSS,
open fds, CPU seconds under their standard `process_` names), from a registry of its own.
"""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__, blocking
from .forwarder import BACKING_OFF, FAILED, RUNNING, STOPPED
from .journal.journal import SYNC_BUCKETS
from .metrics import numbers_flat

FORWARDER_STATES = (RUNNING, BACKING_OFF, STOPPED, FAILED)

# What the sources count of their connections (SourceStats.details: the HTTP server's counters
# and in-flight budget, ZeroMQ's under "connections"), as metric families labelled by source:
# key (nested keys joined by ".") -> (name, counter or gauge, help).
SOURCE_DETAILS = {
    "connections.open": ("zspark_connections_open", GaugeMetricFamily, "Connections open now."),
    "connections.accepted": ("zspark_connections_accepted", CounterMetricFamily, "Connections accepted."),
    "connections.refused": ("zspark_connections_refused", CounterMetricFamily,
                            "Connections refused beyond http.max_connections."),
    "connections.evicted": ("zspark_connections_evicted", CounterMetricFamily,
                            "Idle or unfinished connections closed to make room under http.max_connections."),
    "connections.idle_closed": ("zspark_connections_idle_closed", CounterMetricFamily,
                                "Keep-alive connections closed after http.idle_timeout_s."),
    "connections.timeouts": ("zspark_request_timeouts", CounterMetricFamily,
                             "Request heads and TLS handshakes that did not finish in time."),
    "connections.tls_errors": ("zspark_tls_handshake_errors", CounterMetricFamily, "TLS handshakes that failed."),
    "connections.accept_errors": ("zspark_accept_errors", CounterMetricFamily,
                                  "Connections that could not be accepted for want of descriptors."),
    "connections.failed_handshakes": ("zspark_handshakes_failed", CounterMetricFamily,
                                      "ZeroMQ handshakes that failed or timed out."),
    "connections.refused_handshakes": ("zspark_handshakes_refused", CounterMetricFamily,
                                       "ZeroMQ CURVE handshakes refused."),
    "inflight_bytes": ("zspark_http_inflight_body_bytes", GaugeMetricFamily,
                       "Request body bytes held in memory now (http.max_inflight_bytes)."),
    "cors_refused": ("zspark_http_cors_refused", CounterMetricFamily,
                     "CORS preflights refused (http.cors.allowed_origins)."),
}


class ZsparkCollector(Collector):
    """Metric families read from the live objects. `forwarders` is the server's own list: the
    forwarders started after this collector was made are seen too."""

    def __init__(self, metrics, journal, forwarders, node, topics=None, processes=None):
        self.metrics = metrics
        self.journal = journal
        self.forwarders = forwarders
        self.node = node
        self.topics = topics  # the Kafka TopicPolicy, or None
        self.processes = processes  # () -> {name: {pid, state, restarts, last_exit}}, or None

    def collect(self):
        yield InfoMetricFamily("zspark_build", "The zspark version and this node's id.",
                               value={"version": __version__, "node": self.node})
        yield GaugeMetricFamily("zspark_start_time_seconds", "When the server started, Unix time.",
                                value=self.metrics.started)
        yield GaugeMetricFamily("zspark_uptime_seconds", "Seconds since the server started.",
                                value=self.metrics.uptime())
        yield from self._sources()
        yield from self._source_details()
        yield from self._journal()
        yield from self._forwarders()
        if self.topics is not None:
            yield from self._topics()
        if self.processes is not None:
            yield from self._processes()

    def _processes(self):
        up = GaugeMetricFamily("zspark_process_up", "1 while the process runs, 0 while it is being "
                               "started again; the owner holds the journal, its children forward "
                               "(forward.own_process).", labels=["process", "pid"])
        restarts = CounterMetricFamily("zspark_process_restarts", "Times the process was started "
                                       "again after it exited.", labels=["process"])
        for name, p in self.processes().items():
            up.add_metric([name, str(p["pid"] or "")], 1 if p["state"] in ("running", "stopping") else 0)
            restarts.add_metric([name], p["restarts"])
        return up, restarts

    def _sources(self):
        families = {
            "accepted": CounterMetricFamily(
                "zspark_events_accepted", "Events journaled (durable), per source.", labels=["source"]),
            "rejected": CounterMetricFamily(
                "zspark_events_rejected", "Events refused as invalid, per source (HTTP: a request "
                "refused before its events were read counts one).", labels=["source"]),
            "refused": CounterMetricFamily(
                "zspark_events_refused", "Valid events the journal could not take (full, a write "
                "error, stopping), per source (HTTP: requests answered 503).", labels=["source"]),
        }
        for name, stats in list(self.metrics.sources.items()):
            for field, family in families.items():
                family.add_metric([name], getattr(stats, field))
        return families.values()

    def _source_details(self):
        families = {}
        for name, stats in list(self.metrics.sources.items()):
            for key, value in numbers_flat(stats.details() if stats.details else {}):
                known = SOURCE_DETAILS.get(key)
                if known is None:
                    continue
                metric, kind, doc = known
                family = families.get(metric)
                if family is None:
                    family = families[metric] = kind(metric, doc, labels=["source"])
                family.add_metric([name], value)
        return families.values()

    def _topics(self):
        t = self.topics
        yield GaugeMetricFamily("zspark_kafka_topics_taken", "Kafka topics taken from events "
                                "(kafka.max_topics at most).", value=t.as_dict()["taken"])
        yield CounterMetricFamily("zspark_kafka_topic_redirected", "Events whose topic was not "
                                  "allowed, delivered to kafka.default_topic.", value=t.redirected)
        yield CounterMetricFamily("zspark_kafka_topic_refused", "Events refused at ingest for their "
                                  "topic (kafka.topic_not_allowed: refuse).", value=t.refused)

    def _journal(self):
        j = self.journal
        stats = j.stats
        for name, doc, value in (
                ("zspark_journal_bytes", "Bytes of journal segments on disk.", j.size_bytes),
                ("zspark_journal_max_bytes", "The size cap (journal.max_bytes): past it new events are "
                 "refused.", j.max_bytes),
                ("zspark_journal_first_offset", "Offset of the first record kept.", j.first_offset),
                ("zspark_journal_end_offset", "One past the last durable record.", j.end_offset),
                ("zspark_journal_segments", "Segment files in the journal.", len(j.segment_bases()))):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("zspark_journal_fsyncs", "Group commits written and fsynced.",
                                  value=stats.syncs)
        yield CounterMetricFamily("zspark_journal_write_errors", "Journal writes or fsyncs that failed "
                                  "(their events were refused).", value=stats.write_errors)
        damage = j.damage
        for name, doc, value in (
                ("zspark_journal_damaged_regions", "Damaged places in the journal readers skipped.", damage.regions),
                ("zspark_journal_damaged_bytes", "Bytes of damaged journal records readers skipped.", damage.bytes),
                ("zspark_journal_cut_bytes", "Bytes of a torn record cut off the journal's end at start.",
                 damage.cut_bytes),
                ("zspark_journal_missing_records", "Offsets whose records are gone (damaged or in a deleted "
                 "segment): events lost to damage.", damage.missing_offsets)):
            yield CounterMetricFamily(name, doc, value=value)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, SYNC_BUCKETS), "+Inf"), stats.sync_bucket_counts):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("zspark_journal_sync_duration_seconds",
                                    "Time to write and fsync one group commit.",
                                    buckets=buckets, sum_value=stats.sync_seconds_total)

    def _forwarders(self):
        label = ["forwarder"]
        delivered = CounterMetricFamily("zspark_forwarder_delivered", "Events the destination "
                                        "confirmed.", labels=label)
        failed = CounterMetricFamily("zspark_forwarder_failed", "Delivery attempts that failed (each "
                                     "was retried).", labels=label)
        dead = CounterMetricFamily("zspark_forwarder_dead_lettered", "Events the destination refused "
                                   "for good, written to the dead-letter file.", labels=label)
        lag = GaugeMetricFamily("zspark_forwarder_lag_records", "Durable journal records not yet "
                                "confirmed by the destination.", labels=label)
        cursor = GaugeMetricFamily("zspark_forwarder_cursor_offset", "The next journal offset to "
                                   "deliver.", labels=label)
        state = GaugeMetricFamily("zspark_forwarder_state", "1 for the forwarder's current state, 0 "
                                  "for the others.", labels=["forwarder", "state"])
        last_ok = GaugeMetricFamily("zspark_forwarder_last_delivery_time_seconds", "When the "
                                    "destination last confirmed a batch, Unix time (absent before "
                                    "the first).", labels=label)
        last_error = GaugeMetricFamily("zspark_forwarder_last_failure_time_seconds", "When a delivery "
                                       "attempt last failed, Unix time (absent before the first).",
                                       labels=label)
        for f in list(self.forwarders):
            name = [f.name]
            delivered.add_metric(name, f.delivered)
            failed.add_metric(name, f.failed)
            dead.add_metric(name, f.dead_lettered)
            lag.add_metric(name, f.lag)
            cursor.add_metric(name, f.cursor.offset)
            for s in FORWARDER_STATES:
                state.add_metric([f.name, s], 1 if f.state == s else 0)
            if f.last_delivery_time is not None:
                last_ok.add_metric(name, f.last_delivery_time)
            if f.last_error_time is not None:
                last_error.add_metric(name, f.last_error_time)
        return delivered, failed, dead, lag, cursor, state, last_ok, last_error


class _InThreadpool(Collector):
    """Runs another collector in gevent's thread pool: the process collector reads files under
    /proc, which must not happen on the event loop."""

    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        return blocking.call(lambda: list(self.collector.collect()))


class Exposition:
    """The /metrics answer: `render()` -> (body bytes, content type)."""

    def __init__(self, metrics, journal, forwarders, node, topics=None, processes=None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ZsparkCollector(metrics, journal, forwarders, node, topics, processes))
        self.registry.register(_InThreadpool(ProcessCollector(registry=None)))

    def render(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
