"""An HTTP worker process (`http.workers: N`, N > 1): `python -m zspark.httpworker INDEX PORT
PIXEL_PORT`, started and supervised by the journal's owner (zspark/httpworkers.py, over
zspark/children.py's link).

It runs the unchanged HTTP source (zspark/sources/http.py: the same routes, framing, timeouts,
budgets and refusals) on a listener of its own bound to the HTTP port with SO_REUSEPORT beside
the other workers' (the kernel spreads new connections among them). What differs is behind
`Ingest`: `RemoteIngest.append` BSON-encodes the batch's sender fields here and hands them to
the owner over the link, which journals them (assigning offsets, ids and the receive time's
fields by splicing them around these bytes: the records are byte for byte what one process
writes) and answers once they are durable. The 200 goes out only after that answer; a refusal
(journal full, too large, a topic not allowed) comes back as the exception the single process
raises, so the answer is the same. /status and /metrics are asked of the owner; /tail follows
the journal read-only up to the durable end the owner tells (as a forwarder process does).

The link's messages (JSON headers; the request ids multiplex many requests in flight):

    worker -> owner   ready       pid, port: listening
                      error       error: could not listen (the worker exits 3)
                      append      id, n, t (receive time, µs since the epoch), topics (refuse
                                  mode: each event's topic, which the owner checks and takes);
                                  blob: the n sender-field BSON documents, one after another
                      status / metrics   id: the owner's answer, for a request landing here
                      stats       id: this worker's counters (the answer to the owner's stats)
    owner -> worker   config      (children.py)
                      ok          r: [[id, first offset], ...]: those appends are durable
                      refused     id, error (the exception's name), reason, index
                      status / metrics   id; blob: the JSON status / the exposition body
                      stats       id: asks for this worker's counters
                      durable     end, segment, bytes: the journal's durable end (for /tail)
                      reload      blob: the reloaded Config (pickled), keys: those applied live
                      stop        stop accepting, finish the requests in flight, exit 0

It ignores SIGINT and SIGTERM (the owner stops it, after the requests in flight), reopens its
log files on SIGHUP, and dies with the owner (PDEATHSIG, and EOF on the link).
"""
from gevent import monkey

monkey.patch_all()  # before anything imports socket or threading

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import sys  # noqa: E402

import bson  # noqa: E402
import gevent  # noqa: E402
from gevent.event import AsyncResult, Event  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: E402

from . import accesslog, children, logsetup, metrics, reload  # noqa: E402
from .children import LinkError  # noqa: E402
from .errors import StartupError  # noqa: E402
from .event import Limits  # noqa: E402
from .ingest import BatchRejected, Ingest  # noqa: E402
from .journal import JournalError, JournalFull, TooLargeForJournal  # noqa: E402
from .journal.codec import event_ids, with_elements  # noqa: E402
from .journal.follow import FollowedJournal  # noqa: E402
from .metrics import Metrics  # noqa: E402
from .sources.http import HttpSource, TlsError  # noqa: E402
from .sources.httperrors import HttpError  # noqa: E402
from .topics import TopicPolicy  # noqa: E402
from .httpworkers import micros, reuseport_listener  # noqa: E402

log = logging.getLogger("zspark.httpworker")

EXIT_NO_LISTENER = 3
ANSWER_TIMEOUT_S = 30.0  # for /status and /metrics from the owner (once it has started)
# pymongo's C encoder without bson.encode's wrapper: each event's sender fields, as the owner's
# encode_batch would encode them (journal/codec.py).
_encode = bson._dict_to_bson
_OPTIONS = bson.DEFAULT_CODEC_OPTIONS
# The exceptions the owner's refusals stand for (their names are on the link).
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_FRAME = children.FRAME
REFUSALS = {cls.__name__: cls for cls in (TooLargeForJournal, JournalFull, JournalError)}


class OwnerLink:
    """The worker's side of the link: requests to the owner by id, answered by one reader.

    Requests are written by one writer greenlet, all those made since it last ran in one send:
    the requests of every connection the event loop found ready at once cost the owner one
    wakeup, not one each."""

    def __init__(self, link):
        self.link = link
        self._next = 0
        self._waiting = {}  # id -> AsyncResult
        self._out = []  # frames to send
        self._wake = Event()
        self._writer = gevent.spawn(self._write_loop)
        self.closed = False

    def ask(self, header, blob=b""):
        """Send a request (its id added) and return the AsyncResult of (header, blob)."""
        if self.closed:
            raise EOFError("the serving process is gone")
        self._next += 1
        header["id"] = ident = self._next
        result = self._waiting[ident] = AsyncResult()
        head = _dumps(header).encode()
        self._out.append(_FRAME.pack(len(head) + len(blob), len(head)) + head)
        if blob:
            self._out.append(blob)
        self._wake.set()
        return result

    def _write_loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            out, self._out = self._out, []
            try:
                self.link.send_frames(out)
            except OSError:
                self.close()
                return

    def answered(self, ident, value):
        result = self._waiting.pop(ident, None)
        if result is not None:
            result.set(value)

    def close(self):
        self.closed = True
        if self._writer is not gevent.getcurrent():
            self._writer.kill(block=False)
        waiting, self._waiting = self._waiting, {}
        for result in waiting.values():
            result.set_exception(EOFError("the serving process is gone"))


class RemoteIngest(Ingest):
    """Ingest whose journal is the owner's: normalize here, journal there."""

    def __init__(self, owner, tail_journal, node, metrics, limits, topics):
        super().__init__(tail_journal, node, metrics, limits, topics)
        self.owner = owner

    def _check_topics(self, received, count):
        # The owner checks (and takes) the topics: here only what each event's topic is.
        view = self._view(received.timestamp, received.source)
        topic_of = self.topics.topic_of
        received.topics = [topic_of(f if view is None else view(f)) for f in received.fields]

    def append(self, received, ids=True):
        fields = received.fields
        header = {"kind": "append", "n": len(fields), "t": micros(received.timestamp)}
        if received.topics is not None:
            header["topics"] = received.topics
        if received.added is not None:  # BSON documents already (Ingest.ndjson_frames)
            blob = b"".join(with_elements(fields, received.added))
        elif len(fields) == 1:
            blob = _encode(fields[0], False, _OPTIONS)
        else:
            blob = b"".join([_encode(f, False, _OPTIONS) for f in fields])
        try:
            reply, _ = self.owner.ask(header, blob).get()
        except EOFError as e:
            raise JournalError(str(e)) from None
        if reply["kind"] == "refused":
            error, reason = reply["error"], reply["reason"]
            if error == "TopicNotAllowed":
                self.metrics.source(received.source).reject(reason, len(fields))
                raise BatchRejected(reply.get("index", 0), reason)
            raise REFUSALS.get(error, JournalError)(reason)
        first = reply["first"]
        self.metrics.source(received.source).accepted += len(fields)
        offsets = range(first, first + len(fields))
        return event_ids(received.timestamp, self.node, offsets) if ids else len(fields)


class TailJournal(FollowedJournal):
    """The journal as /tail reads it here: up to the durable end the owner tells."""

    @property
    def first_offset(self):
        bases = self.segment_bases()
        return bases[0] if bases else 0


class _LinkedDamage:
    """Damage /tail's readers find, reported to the owner's journal status."""

    def __init__(self, link):
        self.link = link

    def skipped(self, key, nbytes, message):
        self.link.send({"kind": "damage", "what": "skipped", "key": list(key), "nbytes": nbytes,
                        "message": message})

    def missing(self, start, end, message):
        self.link.send({"kind": "damage", "what": "missing", "start": start, "end": end, "message": message})


class HttpWorker:
    def __init__(self, link, config, index, ports):
        self.link = link
        self.config = config
        self.index = index
        self.ports = ports  # {"main": port, "pixel": port or 0}: the ports the owner holds
        self.owner = OwnerLink(link)
        self.metrics = Metrics()
        self._stopping = False
        self._stopped = Event()
        hc = config.http
        workers = max(1, hc.workers)
        # The limits on what all connections hold together are shared among the workers.
        hc.max_connections = max(1, math.ceil(hc.max_connections / workers))
        hc.max_inflight_bytes = max(hc.max_body_bytes, hc.max_inflight_bytes // workers)
        self.tail_journal = TailJournal(config.journal.dir, damage=_LinkedDamage(link))
        stats = self.metrics.source("http")
        reject = stats.reject

        def rejected(reason, count=1):  # when: the owner shows the latest of all the workers'
            reject(reason, count)
            stats.last_rejection_time = time.time()
        stats.reject = rejected
        stats.last_rejection_time = 0.0
        topics = (TopicPolicy(config.kafka, None, persist=False, load=False)
                  if config.kafka.enabled and config.kafka.topic_not_allowed == "refuse" else None)
        self.ingest = RemoteIngest(self.owner, self.tail_journal, config.node.id, self.metrics,
                                   Limits.from_config(config.event), topics)
        self.http = HttpSource(config, self.ingest, self._status, lambda: self._stopping,
                               metrics_provider=self._metrics, listen=self._listen)
        self.http.tail.max_clients = hc.tail_max_clients * workers  # the owner counts them all
        self.http.admin.tail = self
        self._tail_answer = self.http.tail.answer

    def answer(self, environ):
        """/tail: a client place from the owner (http.tail_max_clients counts every worker's),
        and the journal's durable end as of now, then the stream as in one process."""
        header, _ = self._ask("tail")
        if not header.get("ok"):
            raise HttpError(503, header["reason"], {"Retry-After": str(self.config.http.retry_after_s)})
        try:
            header, _ = self._ask("durable_now")
            if header.get("segment") is not None:
                self.tail_journal.advance(header["end"], header["segment"], header["bytes"])
            status, headers, stream = self._tail_answer(environ)
        except BaseException:
            self._release_tail()
            raise
        close = stream.close

        def closed():
            close()
            self._release_tail()
        stream.close = closed
        return status, headers, stream

    def _release_tail(self):
        try:
            self.link.send({"kind": "untail"})
        except OSError:
            pass

    def _listen(self, which, address):
        return reuseport_listener(address[0], self.ports[which])

    def start(self):
        """Listen; raise StartupError saying why it cannot, as the single process would."""
        hc = self.config.http
        try:
            self.http.start()
        except TlsError as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"cannot listen for HTTP on {hc.host}:{self.ports['main']} "
                               f"(config key http.port): {e.strerror or e}") from None
        try:
            self.http.server.access_log = accesslog.build(hc)
        except OSError as e:
            raise StartupError(f"cannot open the access log {hc.access_log_file} "
                               f"(config key http.access_log_file): {e.strerror or e}") from None
        if self.http.pixel_server is not None:
            self.http.pixel_server.access_log = self.http.server.access_log

    # -- what the admin routes ask of the owner --------------------------------------------

    def _ask(self, kind):
        try:
            return self.owner.ask({"kind": kind}).get(timeout=ANSWER_TIMEOUT_S)
        except (EOFError, gevent.Timeout) as e:
            raise HttpError(503, f"the serving process did not answer: {e or 'timed out'}",
                            {"Retry-After": str(self.config.http.retry_after_s)}) from None

    def _ask_owner(self, kind):
        return self._ask(kind)[1]

    def _status(self):
        return json.loads(self._ask_owner("status"))

    def _metrics(self):
        return self._ask_owner("metrics"), CONTENT_TYPE_LATEST

    def stats(self):
        """This worker's counters, for the owner's /status (sources.http and processes)."""
        s = self.metrics.source("http")
        details = s.details() if s.details else {}
        return {"accepted": s.accepted, "rejected": s.rejected, "refused": s.refused,
                "last_rejection": s.last_rejection, "last_rejection_time": s.last_rejection_time,
                "details": details,
                "tail_clients": self.http.tail.clients}

    # -- the link ---------------------------------------------------------------------------

    def run(self):
        """Serve the owner's messages until "stop" (exit 0) or the owner is gone (exit 1)."""
        try:
            while True:
                header, blob = self.link.recv()
                kind = header["kind"]
                if kind == "ok":
                    for ident, first in header["r"]:
                        self.owner.answered(ident, ({"kind": "ok", "first": first}, b""))
                elif kind in ("refused", "status", "metrics", "durable_now", "tail"):
                    self.owner.answered(header["id"], (header, blob))
                elif kind == "durable":
                    self.tail_journal.advance(header["end"], header["segment"], header["bytes"])
                elif kind == "stats":
                    self.link.send({"kind": "stats", "id": header["id"], "stats": self.stats()})
                elif kind == "reload":
                    self._reload(pickle.loads(blob), header["keys"])
                elif kind == "stop":
                    gevent.spawn(self._stop)
                else:
                    raise LinkError(f"a message of kind {kind!r}")
        except (EOFError, ConnectionError):
            if self._stopping:
                self._stopped.wait()
                return 0
            log.critical("HTTP worker %d (pid %d): the serving process is gone; exiting", self.index, os.getpid())
            return 1
        finally:
            self.owner.close()
            self.tail_journal.close()

    def _stop(self):
        self._stopping = True
        self.http.stop(self.config.http.stop_timeout_s)
        self._stopped.set()
        # Every answer is out: the owner sees this process exit.
        logging.shutdown()
        os._exit(0)

    def _reload(self, new, keys):
        """SIGHUP, as the owner got it (reload.py): log files reopened, live settings applied."""
        logsetup.reopen()
        reload._copy_settings(new, self.config, keys)
        if "log.level" in keys:
            logsetup.set_level(self.config.log.level)
        if "http.tokens" in keys or "http.status_tokens" in keys:
            self.http.set_tokens(self.config.http.tokens, self.config.http.status_tokens)
        if any(key.startswith("http.cors.") for key in keys):
            self.http.web.reload_cors(self.config.http.cors)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    link, config = children.attach()
    logsetup.setup(config.log.level, format=config.log.format, path=config.log.file)
    gevent.signal_handler(signal.SIGHUP, logsetup.reopen)  # log rotation: SIGHUP to the process group
    index, port, pixel_port = (int(a) for a in argv[:3])
    metrics.share_log_limits(config.http.workers)  # each worker logs its share of every kind of line
    try:
        worker = HttpWorker(link, config, index, {"main": port, "pixel": pixel_port})
        worker.start()
    except StartupError as e:
        log.error("HTTP worker %d (pid %d): %s", index, os.getpid(), e)
        link.send({"kind": "error", "error": str(e)})
        return EXIT_NO_LISTENER
    link.send({"kind": "ready", "pid": os.getpid(), "port": worker.http.address[1]})
    try:
        return worker.run()
    except LinkError as e:
        log.critical("HTTP worker %d (pid %d): bad message from the serving process: %s", index, os.getpid(), e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
