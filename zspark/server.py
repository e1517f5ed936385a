"""One zspark process: wires config, journal, sources, forwarders and notices together.
(With `forward.own_process` the forwarders run in child processes of this one, the journal's
owner, behind stand-ins with the same interface: zspark/forwarders.py.)

`Server.start()` opens the journal and starts the sources, the forwarders and the node's notices
(node_online, heartbeats, hour_complete); `run()` serves until `request_stop` (SIGTERM/SIGINT)
and then shuts down in order: refuse new work, let requests in flight finish, journal what the
ZeroMQ sockets already hold, journal node_offline, give the forwarders `forward.drain_on_stop_s`
to deliver what is left, stop them (cursors saved), sync and close the journal. A long-running greenlet
that dies unexpectedly stops the process loudly (exit code 1), never silently.
"""
import logging
import os
import socket
import time

import gevent
import zmq.green as zmq_green
from gevent.event import Event

from . import __version__, accesslog, descriptors, forwarders, native, sinks
from .config import config_warnings, pixel_address
from .errors import StartupError  # noqa: F401 (importable from here too)
from .event import Limits
from .forwarders import build_sinks  # noqa: F401 (importable from here too)
from .hours import HourTracker
from .httpworkers import HttpWorkers
from .ingest import Ingest
from .journal import Journal, JournalError
from .metrics import Metrics
from .notices import Notices
from .prometheus import Exposition
from .sources.http import HttpSource, TlsError
from .sources.httpserver import OVERFLOW_CONNECTIONS
from .sources.curve import CurveError, ZapHandler, load_secret_key
from .sources.zmq import ZmqSource, decode_bson, decode_json
from .topics import TopicPolicy
from .topics import state_path as topics_state_path

log = logging.getLogger("zspark.server")


class Server:
    def __init__(self, config):
        self.config = config
        self.metrics = Metrics()
        jc = config.journal
        self.journal = Journal(jc.dir, sync=jc.sync, sync_interval=jc.sync_interval_ms / 1000.0,
                               segment_bytes=jc.segment_bytes, max_bytes=jc.max_bytes,
                               retain_hours=jc.retain_hours, on_fatal=self.fatal,
                               allow_shared_dir=jc.allow_shared_dir)
        # Which Kafka topics events may choose: the ingest path (refuse mode), the Kafka sink and
        # the hour tracker share this one rule and its record of the topics taken, which the
        # Kafka forwarder's process writes when it has one (topics.py).
        self.topics = (TopicPolicy(config.kafka, topics_state_path(jc.dir), load=False,
                                   persist=not config.forward.own_process)
                       if config.kafka.enabled else None)
        self.ingest = Ingest(self.journal, config.node.id, self.metrics, Limits.from_config(config.event),
                             topics=self.topics)
        self.http = None
        self.zap = None
        self.zmq_sources = []
        self.forwarders = []
        self.children = []  # child processes (children.Child): forwarders with forward.own_process
        nc = config.notices
        self.notices = Notices(self.ingest, config.node.id, self._counters, nc.heartbeat_s) if nc.enabled else None
        self.hours = None
        self._heartbeats = None
        self.exit_code = 0
        self._stopping = False
        self._stop_requested = Event()
        self._greenlets = []

    # -- start ----------------------------------------------------------------------------------

    def start(self):
        limit = descriptors.raise_limit()
        hc = self.config.http
        listeners = 2 if hc.enabled and pixel_address(self.config) else 1  # http.pixel.bind has its own
        hc.max_connections = descriptors.connection_cap(hc.max_connections, limit, also_held=OVERFLOW_CONNECTIONS,
                                                        listeners=listeners)
        for warning in config_warnings(self.config):
            log.warning("%s", warning)
        try:
            self.journal.open()
        except (OSError, JournalError) as e:
            raise StartupError(f"cannot open the journal in {self.config.journal.dir}: {e}") from None
        if self.topics is not None:
            self.topics.load()  # its state file is in the journal directory, checked by now
        try:
            self._start_sources()
        except BaseException:
            self._stop_sources()
            self.journal.close()
            raise
        # Sampling the sources' counts from now: they take events while the forwarders start.
        self._watch(gevent.spawn(self._sample_loop), "metrics sampler")
        try:
            self._start_forwarders()
        except BaseException:
            self._stop_sources()
            for forwarder in self.forwarders:  # those started already (their processes)
                forwarder.stop(0)
            gevent.killall(self._greenlets)
            self.journal.close()
            raise
        self._watch(gevent.spawn(self._retention_loop), "retention")
        if self.notices is not None:
            self.notices.node_notice("node_online")
            if self.config.notices.heartbeat_s:
                self._heartbeats = gevent.spawn(self.notices.run_heartbeats)
                self._watch(self._heartbeats, "heartbeats")
        if self.hours is not None:
            self._watch(gevent.spawn(self.hours.run), "hour-complete notices")
        if isinstance(self.http, HttpWorkers):
            self.http.started.set()
        log.info("zspark %s serving as node %r (pid %d)", __version__, self.config.node.id, os.getpid())
        (log.info if native.COMPILED or native.PURE else log.warning)("%s", native.describe())

    def _start_sources(self):
        cfg = self.config
        self.exposition = Exposition(self.metrics, self.journal, self.forwarders, cfg.node.id, self.topics,
                                     processes=self.processes)
        if cfg.http.enabled and cfg.http.workers > 1:
            self._start_http_workers()
        elif cfg.http.enabled:
            self.http = HttpSource(cfg, self.ingest, self.status, lambda: self._stopping,
                                   metrics_provider=self.exposition.render)
            try:
                self.http.start()
            except TlsError as e:
                raise StartupError(str(e)) from None
            except OSError as e:
                raise StartupError(f"cannot listen for HTTP on {cfg.http.host}:{cfg.http.port} "
                                   f"(config key http.port): {e.strerror or e}") from None
            try:  # before any request is served: nothing yields since start()
                self.http.server.access_log = accesslog.build(cfg.http)
                if self.http.pixel_server is not None:
                    self.http.pixel_server.access_log = self.http.server.access_log
            except OSError as e:
                raise StartupError(f"cannot open the access log {cfg.http.access_log_file} "
                                   f"(config key http.access_log_file): {e.strerror or e}") from None
        curve = self._start_curve()
        for name, address, decode in (("zmq_bson", cfg.zmq.bson_bind, decode_bson),
                                      ("zmq_json", cfg.zmq.json_bind, decode_json)):
            if not address:
                continue
            source = ZmqSource(name, address, decode, self.ingest, cfg, curve=curve)
            try:
                greenlet = source.start()
            except Exception as e:  # zmq.ZMQError: address in use, bad interface
                key = "zmq.bson_bind" if name == "zmq_bson" else "zmq.json_bind"
                raise StartupError(f"cannot bind ZeroMQ {name} socket to {address} (config key "
                                   f"{key}): {e}") from None
            self.zmq_sources.append(source)
            self._watch(greenlet, f"ZeroMQ source {name}")

    def _start_http_workers(self):
        """http.workers > 1: HTTP served by worker processes, this one journaling (httpworkers.py)."""
        cfg = self.config
        self.http = HttpWorkers(self)
        try:
            self.http.start()
        except OSError as e:
            raise StartupError(f"cannot listen for HTTP on {cfg.http.host}:{cfg.http.port} "
                               f"(config key http.port): {e.strerror or e}") from None

    def _start_curve(self):
        """The server's CURVE key pair, with the ZAP handler running; None without CURVE."""
        zc = self.config.zmq
        if not zc.curve_secret_key or not (zc.bson_bind or zc.json_bind):
            return None
        try:
            keys = load_secret_key(zc.curve_secret_key)
            self.zap = ZapHandler(zmq_green.Context.instance(), zc.curve_authorized_keys)
        except CurveError as e:
            raise StartupError(str(e)) from None
        self._watch(self.zap.start(), "ZeroMQ ZAP handler")
        log.info("ZeroMQ: CURVE on, admitting the client keys in %s", zc.curve_authorized_keys)
        return keys

    def _start_forwarders(self):
        self.forwarders.extend(forwarders.build(self.config, self.journal, self.topics))
        self.children.extend(forwarders.processes(self.forwarders))
        nc = self.config.notices
        tracked = next((f for f in self.forwarders if sinks.get(f.name).tracks_hours), None)
        if self.notices is not None and nc.hour_complete and tracked is not None:
            # Before the forwarder starts, so that it counts every batch from the first.
            self.hours = HourTracker(self.journal, tracked, tracked.sink.topic_for, self.notices.publish,
                                     grace_s=nc.hour_grace_s, check_s=nc.check_s, follows=self.topics.follows)
        for forwarder in self.forwarders:
            self._watch(forwarder.start(), f"forwarder {forwarder.name}")
            log.info("forwarding to %s from offset %d", forwarder.sink.describe(), forwarder.cursor.offset)

    def _watch(self, greenlet, what):
        """A greenlet that should run for ever: if it dies, stop the process loudly."""
        self._greenlets.append(greenlet)

        def died(g):
            if not self._stopping:
                self.fatal(f"{what} died unexpectedly: {g.exception!r}")
        greenlet.link_exception(died)
        greenlet.link_value(died)

    # -- run and stop -------------------------------------------------------------------------

    def run(self):
        """Serve until asked to stop; shut down cleanly; return the exit code."""
        self._stop_requested.wait()
        self.shutdown()
        return self.exit_code

    def request_stop(self, reason="requested"):
        if not self._stop_requested.is_set():
            log.info("stopping (%s): finishing requests in flight and syncing the journal", reason)
        self._stop_requested.set()

    def fatal(self, reason):
        log.critical("%s; stopping", reason)
        self.exit_code = 1
        self._stop_requested.set()

    def shutdown(self):
        if self._stopping:
            return
        self._stopping = True
        self._stop_sources()
        if self.notices is not None:
            if self._heartbeats is not None:
                self._heartbeats.kill()  # node_offline is the node's last word
            self.notices.node_notice("node_offline")
        self._drain_forwarders()
        for forwarder in self.forwarders:
            forwarder.stop(self.config.forward.stop_timeout_s)
        gevent.killall(self._greenlets)  # heartbeats, hour-complete, retention; forwarders are done
        if self.hours is not None:
            self.hours.stop()
        self.journal.close()
        log.info("stopped: %s", ", ".join(f"{name} accepted {s.accepted}, rejected {s.rejected}"
                                          for name, s in self.metrics.sources.items()) or "no events")

    def _drain_forwarders(self):
        """Give the forwarders a moment to deliver what the sources left (and node_offline)."""
        timeout = self.config.forward.drain_on_stop_s
        if not self.forwarders or not timeout:
            return
        drains = [gevent.spawn(f.drain, timeout) for f in self.forwarders]
        gevent.joinall(drains)
        behind = [f"{f.name} ({f.lag} left, {f.state})" for f in self.forwarders if f.lag]
        if behind:
            log.info("stopping with undelivered events, sent at the next start: %s", ", ".join(behind))

    def _stop_sources(self):
        self._stopping = True
        if self.http is not None:
            self.http.stop(self.config.http.stop_timeout_s)
        for source in self.zmq_sources:
            source.stop()
        if self.zap is not None:
            self.zap.stop()
            self.zap = None

    # -- housekeeping -------------------------------------------------------------------------

    def _retention_loop(self):
        while True:
            gevent.sleep(self.config.journal.retention_check_s)
            try:
                self.journal.apply_retention({f.name: f.cursor.offset for f in self.forwarders})
            except OSError as e:
                log.error("journal retention failed, will retry: %s", e)

    def _counters(self):
        """What a heartbeat notice carries."""
        return {
            "uptime_s": round(self.metrics.uptime(), 3),
            "sources": {name: {"accepted": s.accepted, "rejected": s.rejected, "refused": s.refused}
                        for name, s in self.metrics.sources.items()},
            "forwarders": {f.name: {"state": f.state, "lag": f.lag, "delivered": f.delivered,
                                    "failed": f.failed} for f in self.forwarders},
            "journal": {"bytes": self.journal.size_bytes, "end_offset": self.journal.end_offset},
        }

    def _sample_loop(self):
        while True:
            self.metrics.sample()  # for the per-source rates in /status
            gevent.sleep(1.0)

    def processes(self):
        """Every process of this server: this one (the journal's owner) and its children."""
        owner = {"pid": os.getpid(), "state": "stopping" if self._stopping else "running",
                 "restarts": 0, "last_exit": None}
        return {"owner": owner, **{child.name: child.status() for child in self.children}}

    def status(self):
        """`/status`: each part's own status() under its name."""
        return {
            "ok": True,
            "node": self.config.node.id,
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uptime_s": round(self.metrics.uptime(), 3),
            "time": time.time(),
            "stopping": self._stopping,
            "sources": {name: s.status() for name, s in self.metrics.sources.items()},
            "forwarders": {f.name: f.status() for f in self.forwarders},
            "processes": self.processes(),
            "hour_complete": self.hours.as_dict() if self.hours is not None else None,
            "kafka_topics": self.topics.as_dict() if self.topics is not None else None,
            "journal": self.journal.status(),
        }
