"""HTTP worker processes (`http.workers: N`, N > 1), seen from the journal's owner.

With one worker (the default) the serving process serves HTTP itself (sources/http.py) and none
of this runs. With N > 1, `HttpWorkers` takes the HTTP source's place in the server: it holds
the HTTP port (and http.pixel.bind's) with a socket bound with SO_REUSEPORT that never listens
(so that the port is this server's while a worker restarts, and port 0 gets one port for all),
and starts N supervised children (zspark/children.py) running zspark/httpworker.py, each with a
listener of its own on that port: the kernel spreads connections among them. The owner serves
no HTTP; it is the journal's one writer (offsets, ids, cursors and notices as with one process).

A worker parses, validates and BSON-encodes a request's events and sends them here ("append");
each one is journaled as a FrameBurst (the assigned fields spliced around the worker's bytes:
byte for byte what one process writes), gathered with every other append into the journal's
group commit, and answered, one message per worker per group commit, once durable. A refusal
(journal full, too large, stopping, a topic not allowed in refuse mode) is answered with the
exception's name and reason, and the worker raises the same: the HTTP answer is the same as in
one process. A batch journaled for a worker that died before its answer is simply journaled
(its client saw no 200: at least once).

A worker that exits is logged and started again with the children's backoff; the others serve
meanwhile. If the owner dies the workers die with it (PDEATHSIG, EOF on the link). /status and
/metrics landing on a worker are answered here: the owner first asks every worker for its
counters (`refresh`), which make up sources.http (accepted is the owner's own count of events
journaled; rejected, refused and the connection counters are the workers' sums, counted on
across restarts) and sources.http.workers; `processes` lists each worker (pid, state, restarts,
last exit). SIGHUP (reload.py) reaches the workers as a "reload" message. A clean stop stops the
workers first: each stops accepting and answers its requests in flight, whose appends are still
journaled, within http.stop_timeout_s.
"""
import datetime
import logging
import pickle
import socket
import struct
import time

import gevent
from gevent.event import AsyncResult, Event

from .children import Child, LinkError
from .config import pixel_address
from .errors import StartupError
from .journal import JournalError
from .journal.codec import FrameBurst, encode_events
from .metrics import numbers_flat
from .sources.httperrors import dumps
from .topics import TopicNotAllowed

log = logging.getLogger("zspark.httpworkers")

MODULE = "zspark.httpworker"
START_TIMEOUT_S = 60.0
STOP_MARGIN_S = 5.0  # beyond http.stop_timeout_s: the worker closes what is left and exits
STATS_TIMEOUT_S = 1.0  # a worker that does not answer within this keeps its last counts
FEED_INTERVAL_S = 0.05  # the durable end told to the workers (/tail) at most this often
REFRESH_S = 2.0  # the workers' counters asked for in the background (heartbeats, rates)
SOURCE = "http"
# Gauges of a worker's details: not summed over its earlier runs (they end with the run).
GAUGES = ("connections.open", "inflight_bytes", "inflight_peak_bytes")
BACKLOG = 1024  # a worker's listen backlog
_INT32 = struct.Struct("<i")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_ONE_US = datetime.timedelta(microseconds=1)


def micros(timestamp):
    """A receive time (aware datetime) as whole microseconds since the epoch, and back: exact."""
    return (timestamp - _EPOCH) // _ONE_US


def from_micros(us):
    return _EPOCH + datetime.timedelta(microseconds=us)


def reuseport_listener(host, port, listen=True):
    """A TCP socket bound to (host, port) with SO_REUSEPORT (and SO_REUSEADDR), listening unless
    `listen` is False (the owner's, which only holds the port: zspark/httpworkers.py)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def split_documents(blob, count):
    """The `count` BSON documents laid one after another in `blob`; LinkError unless it is
    exactly that."""
    end = len(blob)
    if count == 1 and end >= 5 and _INT32.unpack_from(blob, 0)[0] == end and blob[-1] == 0:
        return [blob]
    docs = []
    pos = 0
    for _ in range(count):
        if pos + 5 > end:
            raise LinkError(f"an append of {count} documents holds fewer")
        size = _INT32.unpack_from(blob, pos)[0]
        if size < 5 or pos + size > end or blob[pos + size - 1] != 0:
            raise LinkError("an append whose documents are not BSON documents")
        docs.append(blob[pos:pos + size])
        pos += size
    if pos != end:
        raise LinkError(f"an append of {count} documents holds more")
    return docs


def _nested(flat):
    out = {}
    for key, value in flat.items():
        *path, name = key.split(".")
        target = out
        for part in path:
            target = target.setdefault(part, {})
        target[name] = value
    return out


class _Worker:
    """One worker process: its Child, and what the owner knows of its runs."""

    def __init__(self, pool, index, child_args):
        self.pool = pool
        self.index = index
        self.name = f"http-worker {index}"
        config = pool.server.config
        self.child = _WorkerChild(self, MODULE, config, child_args)
        self.link = None  # while it listens
        self.ready = Event()
        self.start_error = None
        self.current = {}  # this run's last stats
        self.totals = {"accepted": 0, "rejected": 0, "refused": 0, "details": {}}  # earlier runs'
        self.last_rejection = None
        self._stats = {}  # id -> AsyncResult
        self._next = 0
        self.sent_end = None
        self.tails = 0  # /tail streams of this run open now
        self.rejection_time = 0.0  # when its last_rejection happened (its clock: time.time())

    # -- the link ---------------------------------------------------------------------------

    def serve(self, link):
        pool = self.pool
        self.current = {}
        self.sent_end = None
        try:
            while True:
                header, blob = link.recv()
                kind = header["kind"]
                try:
                    if kind == "append":
                        pool.append(link, header, blob)
                    elif kind == "stats":
                        self._on_stats(header)
                    elif kind in ("status", "metrics"):
                        gevent.spawn(pool.answer, link, kind, header["id"])
                    elif kind == "durable_now":
                        pool.answer_durable(link, header["id"])
                    elif kind == "tail":
                        pool.take_tail(self, link, header["id"])
                    elif kind == "untail":
                        pool.release_tail(self)
                    elif kind == "damage":
                        self._on_damage(header)
                    elif kind == "ready":
                        self.link = link
                        pool.tell_durable(self, force=True)
                        self.ready.set()
                    elif kind == "error":
                        self.start_error = str(header["error"])
                        self.ready.set()
                    else:
                        raise LinkError(f"a message of kind {kind!r}")
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    raise LinkError(f"a malformed {kind!r} message: {e!r}") from None
        finally:
            if self.link is link:
                self.link = None
            pool.tail_clients -= self.tails
            self.tails = 0
            self._fold()
            for result in self._stats.values():
                result.set(None)
            self._stats.clear()

    def _fold(self):
        """The run that ended: its counters go on in the totals."""
        current, self.current = self.current, {}
        if not current:
            return
        totals = self.totals
        for key in ("accepted", "rejected", "refused"):
            totals[key] += int(current.get(key) or 0)
        details = dict(numbers_flat(totals["details"]))
        for key, value in numbers_flat(current.get("details") or {}):
            if key not in GAUGES:
                details[key] = details.get(key, 0) + value
        totals["details"] = _nested(details)

    def _on_stats(self, header):
        stats = header["stats"]
        if type(stats) is not dict:
            raise ValueError("stats that are not a mapping")
        self.current = stats
        rejection = stats.get("last_rejection")
        if rejection is not None:
            self.last_rejection = str(rejection)
            self.rejection_time = float(stats.get("last_rejection_time") or 0.0)
        result = self._stats.pop(header["id"], None)
        if result is not None:
            result.set(stats)

    def _on_damage(self, header):
        damage = self.pool.server.journal.damage
        message = str(header["message"])
        if header["what"] == "skipped":
            damage.skipped(tuple(header["key"]), int(header["nbytes"]), message)
        else:
            damage.missing(int(header["start"]), int(header["end"]), message)

    def ask_stats(self):
        """An AsyncResult of this run's counters (None if it ends first), or None if not running."""
        link = self.link
        if link is None:
            return None
        self._next += 1
        result = self._stats[self._next] = AsyncResult()
        try:
            link.send({"kind": "stats", "id": self._next})
        except OSError:
            self._stats.pop(self._next, None)
            return None
        return result

    def counts(self):
        """accepted, rejected, refused (this run's and the earlier ones') and the details."""
        current, totals = self.current, self.totals
        out = {key: totals[key] + int(current.get(key) or 0) for key in ("accepted", "rejected", "refused")}
        details = dict(numbers_flat(totals["details"]))
        for key, value in numbers_flat(current.get("details") or {}):
            details[key] = details.get(key, 0) + value
        out["details"] = details
        return out


class _WorkerChild(Child):
    """A worker's Child: "starting" in /status from its spawn until it listens."""

    def __init__(self, worker, module, config, args):
        super().__init__(worker.name, module, config, worker.serve, args=args)
        self.worker = worker

    def status(self):
        status = super().status()
        if status["state"] == "running" and self.worker.link is None:
            status["state"] = "starting"
        return status


class HttpWorkers:
    """The HTTP source's stand-in in the owner (server.http) when http.workers > 1."""

    def __init__(self, server):
        self.server = server
        self.config = server.config.http
        self.journal = server.journal
        self.node = server.config.node.id
        self.stats = server.metrics.source(SOURCE)
        self.stats.details = self.details
        self.workers = []
        self.pixel_server = None  # (the single process's attribute; the workers have theirs)
        self.address = None
        self.pixel_address = None
        self._holders = []
        self._groups = {}  # a group commit -> [(link, id, first offset, count)] to answer
        self._stopping = False
        self._greenlets = []
        self.tail_clients = 0  # /tail streams open in all the workers
        self.started = Event()  # the server has started: /status shows all of it

    @property
    def children(self):
        return [w.child for w in self.workers]

    # -- start and stop ---------------------------------------------------------------------

    def start(self):
        """Hold the port(s), start the workers, wait until each listens; raise OSError (the
        port) or StartupError (a worker could not listen: its reason)."""
        hc = self.config
        holder = reuseport_listener(hc.host, hc.port, listen=False)
        self._holders.append(holder)
        self.address = holder.getsockname()[:2]
        pixel_port = 0
        pixel = pixel_address(self.server.config)
        if pixel is not None:
            pixel_holder = reuseport_listener(pixel[0], pixel[1], listen=False)
            self._holders.append(pixel_holder)
            self.pixel_address = pixel_holder.getsockname()[:2]
            pixel_port = self.pixel_address[1]
        for index in range(1, hc.workers + 1):
            self.workers.append(_Worker(self, index, [str(index), str(self.address[1]), str(pixel_port)]))
        # In /status from the first request a worker answers (while the rest start).
        self.server.children[:0] = self.children
        try:
            for worker in self.workers:
                worker.child.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            for worker in self.workers:
                if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                    raise StartupError(f"{worker.name} was not listening within {START_TIMEOUT_S:.0f}s "
                                       f"(last exit: {worker.child.last_exit or 'none'}; see the log)")
                if worker.start_error is not None:
                    raise StartupError(worker.start_error)
        except BaseException:
            self.stop(0)
            raise
        self._greenlets = [gevent.spawn(self._feed_loop), gevent.spawn(self._refresh_loop)]
        log.info("HTTP listening on %s://%s:%d%s/log in %d worker processes (http.workers)",
                 "https" if hc.certfile else "http", hc.host, self.address[1], hc.root, len(self.workers))

    def stop(self, timeout):
        """Stop the workers (each stops accepting and answers its requests in flight, up to
        `timeout` s), then release the port."""
        self._stopping = True
        stops = [gevent.spawn(w.child.stop, timeout + STOP_MARGIN_S) for w in self.workers]
        gevent.joinall(stops)
        gevent.killall(self._greenlets)
        for holder in self._holders:
            holder.close()
        self._holders = []

    # -- appends -----------------------------------------------------------------------------

    def append(self, link, header, blob):
        """A worker's batch: journal it, answer once the group commit holding it is durable."""
        ident, count = header["id"], header["n"]
        if type(count) is not int or count < 1:
            raise ValueError("an append without events")
        docs = split_documents(blob, count)
        timestamp = from_micros(header["t"])
        topics = header.get("topics")
        try:
            if topics is not None and self.server.ingest.topics is not None:
                if type(topics) is not list or len(topics) != count:
                    raise ValueError("topics that are not one per event")
                self.server.ingest.topics.check_topics(topics)
            pending = self.journal.append_nowait(FrameBurst(docs, timestamp, SOURCE, self.node),
                                                 encode_all=encode_events)
        except TopicNotAllowed as e:
            self._refuse(link, ident, e, e.index)
            return
        except JournalError as e:
            self._refuse(link, ident, e)
            return
        group = pending.group
        waiting = self._groups.get(group)
        if waiting is None:
            waiting = self._groups[group] = []
            gevent.spawn(self._answer_group, group, waiting)
        waiting.append((link, ident, pending.offsets[0], count))

    def _answer_group(self, group, waiting):
        group.done.wait()
        del self._groups[group]
        error = group.error
        if error is None:
            self.stats.accepted += sum(count for _, _, _, count in waiting)
        answers = {}  # link -> [[id, first], ...]: one message per worker
        for link, ident, first, _ in waiting:
            if error is not None:
                self._refuse(link, ident, error)
            else:
                answers.setdefault(link, []).append([ident, first])
        for link, answered in answers.items():
            try:
                link.send({"kind": "ok", "r": answered})
            except OSError:
                pass  # the worker died: its clients got no answer; the events are journaled

    @staticmethod
    def _refuse(link, ident, error, index=None):
        header = {"kind": "refused", "id": ident, "error": type(error).__name__, "reason": str(error)}
        if index is not None:
            header["index"] = index
        try:
            link.send(header)
        except OSError:
            pass

    # -- /status and /metrics, asked by a worker --------------------------------------------

    def answer(self, link, kind, ident):
        self.started.wait(START_TIMEOUT_S / 2)  # not half-started (forwarders missing)
        self.refresh()
        if kind == "status":
            body = dumps(self.server.status())
        else:
            body = self.server.exposition.render()[0]
        try:
            link.send({"kind": kind, "id": ident}, body)
        except OSError:
            pass

    def answer_durable(self, link, ident):
        """The journal's durable end now (a /tail starting in a worker)."""
        journal = self.journal
        bases = journal.segment_bases()
        header = {"kind": "durable_now", "id": ident, "end": journal.end_offset}
        if bases:
            header.update(segment=bases[-1], bytes=journal.durable_bytes(bases[-1]))
        link.send(header)

    def take_tail(self, worker, link, ident):
        """A /tail client's place under http.tail_max_clients, counted over every worker."""
        cap = self.config.tail_max_clients
        if self.tail_clients >= cap:
            link.send({"kind": "tail", "id": ident, "ok": False,
                       "reason": f"{self.tail_clients} /tail clients already, as many as may be "
                                 f"(http.tail_max_clients); try again later"})
            return
        self.tail_clients += 1
        worker.tails += 1
        link.send({"kind": "tail", "id": ident, "ok": True})

    def release_tail(self, worker):
        if worker.tails > 0:
            worker.tails -= 1
            self.tail_clients -= 1

    def refresh(self, timeout=STATS_TIMEOUT_S):
        """Ask every running worker for its counters (up to `timeout` s) and sum them up."""
        results = [r for r in (w.ask_stats() for w in self.workers) if r is not None]
        deadline = time.monotonic() + timeout
        for result in results:
            result.wait(max(0.0, deadline - time.monotonic()))
        self._sum()

    def _sum(self):
        counts = [w.counts() for w in self.workers]
        self.stats.rejected = sum(c["rejected"] for c in counts)
        self.stats.refused = sum(c["refused"] for c in counts)
        latest = max(self.workers, key=lambda w: w.rejection_time, default=None)
        if latest is not None and latest.last_rejection is not None:
            self.stats.last_rejection = latest.last_rejection

    def details(self):
        """sources.http's connection counters and in-flight bytes (all the workers'), and each
        worker's own under `workers`."""
        summed = {}
        workers = {}
        for w in self.workers:
            c = w.counts()
            for key, value in c["details"].items():
                if key == "inflight_peak_bytes":
                    summed[key] = max(summed.get(key, 0), value)
                else:
                    summed[key] = summed.get(key, 0) + value
            workers[w.name] = {**w.child.status(),
                               "accepted": c["accepted"], "rejected": c["rejected"], "refused": c["refused"],
                               "connections_open": int(c["details"].get("connections.open", 0))}
        if "connections.open" not in summed:
            summed["connections.open"] = 0
        return {**_nested(summed), "workers": workers}

    # -- SIGHUP -----------------------------------------------------------------------------

    def reload(self, config, keys):
        """Tell every worker: reopen the log files, apply `keys` (reload.LIVE) from `config`."""
        blob = pickle.dumps(config)
        for w in self.workers:
            w.child.send({"kind": "reload", "keys": list(keys)}, blob)

    def set_tokens(self, tokens, status_tokens):
        pass  # the workers' own, by reload()

    # -- the journal's durable end, for /tail in the workers --------------------------------

    def tell_durable(self, worker, force=False):
        link = worker.link
        journal = self.journal
        end = journal.end_offset
        if link is None or (end == worker.sent_end and not force):
            return
        bases = journal.segment_bases()
        if not bases:
            return
        try:
            link.send({"kind": "durable", "end": end, "segment": bases[-1],
                       "bytes": journal.durable_bytes(bases[-1])})
        except OSError:
            return
        worker.sent_end = end

    def _feed_loop(self):
        journal = self.journal
        while True:
            end = journal.end_offset
            for worker in self.workers:
                self.tell_durable(worker)
            journal.wait_for_append(end, 1.0)
            gevent.sleep(FEED_INTERVAL_S)

    def _refresh_loop(self):
        while True:
            gevent.sleep(REFRESH_S)
            self.refresh()
