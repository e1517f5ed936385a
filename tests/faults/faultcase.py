"""What every fault test shares: the seed and the long-run switch, mixed HTTP and ZeroMQ load
against one server run, RSS sampling, and the one-line summary of counts."""
import http.client
import json
import os
import random
import sys

import gevent

from ..appliance import ApplianceCase
from ..support import HttpFeeder, ZmqFeeder, request, wait_until

LONG = os.environ.get("ZSPARK_FAULTS_LONG", "") not in ("", "0")
SEED = int(os.environ.get("ZSPARK_FAULT_SEED") or random.SystemRandom().randrange(1, 10**9))

MiB = 1024 * 1024


def scaled(short, long):
    """`long` under ZSPARK_FAULTS_LONG=1, else `short`."""
    return long if LONG else short


def report(line):
    print(f"[faults] {line}", file=sys.stderr, flush=True)


class FaultCase(ApplianceCase):
    def setUp(self):
        super().setUp()
        self.name = ".".join(self.id().split(".")[-2:])
        self.rng = random.Random(f"{SEED}:{self.name}")  # each test replays on its own
        report(f"{self.name}: seed {SEED}{', long run' if LONG else ''} "
               f"(replay: ZSPARK_FAULT_SEED={SEED})")

    def summary(self, sent, acknowledged, delivered, duplicated, rejected, **more):
        """Print the test's figures on one line; dict values print as name:count pairs."""
        def show(value):
            if isinstance(value, dict):
                return "/".join(f"{k}:{v}" for k, v in value.items())
            return str(value)

        figures = dict(sent=sent, acknowledged=acknowledged, delivered=delivered,
                       duplicated=duplicated, rejected=rejected, **more)
        report(f"{self.name}: " + " ".join(f"{k}={show(v)}" for k, v in figures.items()) + f" seed={SEED}")

    def assert_no_damage(self, status):
        """Nothing skipped or found missing in the journal (a torn tail cut at open is no damage:
        its record was never acknowledged)."""
        damage = status["journal"]["damage"]
        self.assertEqual((damage["regions"], damage["missing_offsets"]), (0, 0),
                         f"the journal reports damage: {damage}")

    def refused_probe(self, timeout=30):
        """POST a batch of padded events until the server refuses one (room for small requests
        may be left: the last bytes under a cap, the last page of a file on a full disk); return
        that answer's headers and error, {uid: id} of the probe events it took meanwhile, and
        how many probe events were sent in all."""
        taken, answer, sent = {}, [], [0]

        def refused():
            uids = [f"probe-{self.uid}-{len(taken)}-{i}" for i in range(8)]
            batch = [{"type": "probe", "topic": self.topic, "context": {"uid": u, "pad": "p" * 1000}}
                     for u in uids]
            status, headers, body = request(self.port, "POST", "/log", batch)
            sent[0] += len(batch)
            if status == 200:
                taken.update(zip(uids, json.loads(body)["ids"]))
                return False
            answer[:] = [status, headers, body]
            return True

        wait_until(refused, timeout=timeout, interval=0.05, message="a probe refused")
        status, headers, body = answer
        self.assertEqual(status, 503, body)
        return headers, json.loads(body)["error"], taken, sent[0]

    def rss_watch(self, server):
        """An RssWatch (started) on `server`; stopped at cleanup if not before."""
        watch = RssWatch(server).start()
        self.addCleanup(watch.stop)
        return watch

    def load(self, tag, workers=3, pad=0, http_pause=0.0, zmq_pause=0.01):
        """Mixed load (started) on the running server; stopped at cleanup if not before."""
        load = MixedLoad(self, f"{tag}-{self.uid}", self.rng, workers, pad, http_pause, zmq_pause)
        self.addCleanup(load.stop)
        return load.start()


class MixedLoad:
    """HTTP producers (single objects, arrays, NDJSON and GET /log, in turn) and one ZeroMQ
    producer per socket (BSON and JSON), sending to the case's topic (GET /log to its default
    topic), with a /status poller
    that remembers how many events each ZeroMQ socket had accepted: after a SIGKILL that is the
    last figure the server gave, and those events must survive (see ZmqFeeder)."""

    ZMQ = ("zmq_bson", "zmq_json")

    def __init__(self, case, tag, rng, workers, pad, http_pause, zmq_pause):
        self.port = case.port
        padding = {"pad": "p" * pad} if pad else {}

        def make(uid, n=None):
            return {"type": "load", "topic": case.topic, "context": {"uid": uid, **padding}}

        self.http = HttpFeeder(case.port, f"{tag}-h", make=make, workers=workers, pause=http_pause,
                               forms=("single", "array", "ndjson", "get"), rng=rng)
        self.zmq = {name: ZmqFeeder(case.data["zmq"]["bson_bind" if name == "zmq_bson" else "json_bind"],
                                    f"{tag}-{name}", "bson" if name == "zmq_bson" else "json", make,
                                    pause=zmq_pause, context=case.zctx)
                    for name in self.ZMQ}
        self.accepted = dict.fromkeys(self.ZMQ, 0)  # by this load's producers
        self._earlier = dict.fromkeys(self.ZMQ, 0)  # accepted from others before it started
        self.rejected = 0  # as /status last said, all sources
        self._poller = None

    def start(self):
        if self.poll():
            self._earlier, self.accepted = self.accepted, dict.fromkeys(self.ZMQ, 0)
        self.http.start()
        for feeder in self.zmq.values():
            feeder.start()
        self._poller = gevent.spawn(self._poll)
        return self

    def stop(self):
        """Stop at once (the server may be gone): ZeroMQ frames still queued are dropped."""
        if self._poller is None:
            return
        self._poller.kill()
        self._poller = None
        self.http.stop()
        for feeder in self.zmq.values():
            feeder.close()

    def finish(self, timeout=30):
        """Stop sending, wait until the (running) server accepted every ZeroMQ frame sent, stop."""
        self.http.stop()
        for feeder in self.zmq.values():
            feeder.stop()
        wait_until(lambda: self.poll() and all(self.accepted[n] >= len(f.sent) for n, f in self.zmq.items()),
                   timeout=timeout, message="the server to accept every ZeroMQ event sent")
        self.stop()

    def poll(self):
        """Read /status once; False if the server did not answer."""
        try:
            status, _, body = request(self.port, "GET", "/status", timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        if status != 200:
            return False
        sources = json.loads(body)["sources"]
        for name in self.ZMQ:
            accepted = sources.get(name, {}).get("accepted", 0) - self._earlier[name]
            self.accepted[name] = max(self.accepted[name], accepted)
        self.rejected = sum(s.get("rejected", 0) for s in sources.values())
        return True

    def _poll(self):
        while True:
            self.poll()
            gevent.sleep(0.03)

    def sent_uids(self):
        """Every uid put on the wire."""
        return set(self.http.sent).union(*(f.sent for f in self.zmq.values()))

    def acknowledged(self):
        """The uids the server acknowledged: HTTP answered 200, ZeroMQ counted as accepted."""
        uids = set(self.http.acked)
        for name, feeder in self.zmq.items():
            uids.update(feeder.acknowledged(self.accepted[name]))
        return uids


class RssWatch:
    """Samples a server process's RSS in a greenlet; `peak` is the highest seen."""

    def __init__(self, server, interval=0.05):
        self.server = server
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        return self.peak

    def _run(self):
        while True:
            self.peak = max(self.peak, self.server.rss_bytes())
            self.samples += 1
            gevent.sleep(self.interval)
