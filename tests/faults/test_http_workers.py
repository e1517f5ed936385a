"""HTTP worker processes (`http.workers`) under faults, seen from outside as a sender and an
operator see them: a worker SIGKILLed mid-request under load gives its clients no 200 for
anything not journaled (every event answered 200 is in the journal under the id answered), is
logged and started again and serves again; a SIGKILL of the owner takes the workers with it and
a new `zcmd serve` has the port; SIGTERM stops the workers first, answering their requests in
flight, and exits 0. The journal is read from its files (no broker or database needed)."""
import collections
import json
import os
import random
import signal
import time
import unittest

import gevent

from ..support import (HttpFeeder, ServeProcess, TempDir, config_data, journal_events, request,
                       wait_until, write_config)
from .faultcase import SEED, report, scaled

KILLS = scaled(3, 12)
WORKERS = 2


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not reaped) is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


class HttpWorkerFaults(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.name = ".".join(self.id().split(".")[-2:])
        report(f"{self.name}: seed {SEED}")
        self.rng = random.Random(f"{SEED}:{self.name}")
        workers = max(WORKERS, int(config_data(self.tmp.path)["http"].get("workers", 1)))
        self.data = config_data(self.tmp.path, http={"workers": workers, "stop_timeout_s": 10},
                                zmq={"bson_bind": "", "json_bind": ""})
        self.workers = workers
        self.port = self.data["http"]["port"]
        self.config = write_config(self.tmp.path, self.data)
        self.journal_dir = self.data["journal"]["dir"]

    def serve(self):
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        self.addCleanup(server.kill)
        return server.start(timeout=60)

    def status(self):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def worker_pid(self, index, other_than=None):
        """The pid of HTTP worker `index` once it runs (and is not `other_than`)."""
        def running():
            try:
                process = self.status()["processes"][f"http-worker {index}"]
            except OSError:  # a connection the killed worker's listener held, reset
                return False
            return process["state"] == "running" and process["pid"] != other_than and process["pid"]
        return wait_until(running, timeout=30, message=f"HTTP worker {index} running")

    def check_journaled(self, feeder):
        """Every event answered 200 is in the journal under the id answered; nothing journaled
        was not sent; returns (journaled uids, events journaled but never answered)."""
        events = journal_events(self.journal_dir)
        journaled = collections.defaultdict(list)
        for event in events:
            journaled[event["context"]["uid"]].append(str(event["_id"]))
        missing = set(feeder.acked) - set(journaled)
        self.assertFalse(missing, f"{len(missing)} of {len(feeder.acked)} events answered 200 are not in "
                                  f"the journal, e.g. {sorted(missing)[:5]}")
        wrong = {uid: i for uid, i in feeder.acked.items() if i not in journaled[uid]}
        self.assertEqual(wrong, {}, "events journaled under another id than the one answered")
        self.assertFalse(set(journaled) - feeder.sent, "the journal holds events nobody sent")
        offsets = [int(str(e["_id"])[-10:], 16) for e in events]
        self.assertEqual(offsets, list(range(len(events))), "offsets not assigned by one writer")
        return journaled, len(set(journaled) - set(feeder.acked))

    def test_a_worker_killed_mid_request_is_restarted_and_every_acknowledged_event_is_journaled(self):
        server = self.serve()
        feeder = HttpFeeder(self.port, "kill", workers=8, forms=("single", "array", "ndjson", "get"),
                            rng=self.rng).start()
        kills = collections.Counter()
        for _ in range(KILLS):
            index = self.rng.randint(1, self.workers)
            before = len(feeder.acked)
            wait_until(lambda: len(feeder.acked) > before + 20, timeout=30, message="events acknowledged")
            time.sleep(self.rng.uniform(0.05, 0.4))
            pid = self.worker_pid(index)
            os.kill(pid, signal.SIGKILL)
            kills[index] += 1
            wait_until(lambda: not alive(pid), timeout=10, message="the killed worker gone")
            self.worker_pid(index, other_than=pid)
            process = self.status()["processes"][f"http-worker {index}"]
            self.assertEqual((process["restarts"], process["last_exit"]), (kills[index], "killed by SIGKILL"))
        gevent.sleep(0.5)
        feeder.stop()
        self.assertEqual(feeder.bad, [], "answers other than 200 and 503")
        # Each worker serves again: new connections reach every one of them.
        status = self.status()
        served = {name: w["accepted"] for name, w in status["sources"]["http"]["workers"].items()}
        for n in range(200):
            feeder.sent.add(f"after-{n}")
            status, _, body = request(self.port, "GET", f"/log?type=after&uid=after-{n}")
            self.assertEqual(status, 200, body)
            feeder.acked[f"after-{n}"] = json.loads(body)["ids"][0]
        after = self.status()["sources"]["http"]["workers"]
        self.assertTrue(all(after[name]["accepted"] > served[name] for name in served),
                        f"a worker does not serve: {served} -> {after}")
        self.assertEqual(server.stop(), 0)
        self.assertNotIn("Traceback", server.log())
        self.assertEqual(server.log().count("exited (killed by SIGKILL); starting it again"), KILLS)
        journaled, unanswered = self.check_journaled(feeder)
        report(f"{self.name}: sent={len(feeder.sent)} acknowledged={len(feeder.acked)} "
               f"journaled={len(journaled)} journaled_unanswered={unanswered} no_answer={feeder.errors} "
               f"refused={feeder.refused} kills={dict(kills)} seed={SEED}")

    def test_the_owner_killed_takes_the_workers_and_a_new_serve_gets_the_port(self):
        server = self.serve()
        feeder = HttpFeeder(self.port, "owner", workers=4).start()
        wait_until(lambda: len(feeder.acked) > 50, timeout=30, message="events acknowledged")
        pids = [self.worker_pid(i) for i in range(1, self.workers + 1)]
        server.proc.kill()
        server.proc.wait()
        wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5, message="the workers gone with the owner")
        feeder.stop()
        journaled, _ = self.check_journaled(feeder)
        again = self.serve()
        self.assertEqual(request(self.port, "GET", "/log?type=again&uid=again")[0], 200)
        self.assertEqual(again.stop(), 0)
        report(f"{self.name}: acknowledged={len(feeder.acked)} journaled={len(journaled)} seed={SEED}")

    def test_sigterm_stops_the_workers_first_and_answers_requests_in_flight(self):
        server = self.serve()
        feeder = HttpFeeder(self.port, "term", workers=6, forms=("single", "array")).start()
        wait_until(lambda: len(feeder.acked) > 100, timeout=30, message="events acknowledged")
        pids = [self.worker_pid(i) for i in range(1, self.workers + 1)]
        self.assertEqual(server.stop(signal.SIGTERM), 0, server.log())
        feeder.stop()
        self.assertFalse([pid for pid in pids if alive(pid)], "workers left behind")
        self.assertEqual(feeder.bad, [])
        journaled, unanswered = self.check_journaled(feeder)
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("exited (", log)  # no worker ended but by its stop
        report(f"{self.name}: acknowledged={len(feeder.acked)} journaled={len(journaled)} "
               f"unanswered={unanswered} refused={feeder.refused} seed={SEED}")
