"""`zcmd serve` as a separate process, seen from outside: fed over HTTP and ZeroMQ, stopped with
SIGTERM or killed with SIGKILL mid-feed, restarted on the same journal, and checked with
`zcmd tail`. Also the refusals at start (journal locked, port in use) and `zcmd tail` itself."""
import json
import os
import random
import signal
import socket
import time
import unittest

import gevent
import zmq.green as zmq_green

from zspark.client import ZSparkClient

from .support import HttpFeeder, ServeProcess, TempDir, config_data, free_port, request, write_config, zcmd

RNG = random.Random(int(os.environ.get("ZSPARK_TEST_SEED", time.time_ns())))


def wait_for(predicate, timeout=15.0, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def Feeder(port, tag, workers=4):
    """HTTP load in every request form: singles, arrays, NDJSON and GET /log, in turn."""
    return HttpFeeder(port, tag, workers=workers, rng=RNG, forms=("single", "array", "ndjson", "get"),
                      make=lambda uid: {"type": "load", "level": "info", "context": {"uid": uid}})


class ServeCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.data = config_data(self.tmp.path)
        self.config = write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        self.journal_dir = self.data["journal"]["dir"]
        self.zctx = zmq_green.Context()
        self.addCleanup(self.zctx.term)

    def serve(self):
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        self.addCleanup(server.kill)
        return server.start()

    def stop(self, server, sig=signal.SIGTERM):
        code = server.stop(sig, timeout=30)
        expected = 0 if sig == signal.SIGTERM else -sig
        self.assertEqual(code, expected, f"zcmd serve exit code after {signal.Signals(sig).name}; "
                                         f"its log:\n{server.log()[-3000:]}")

    def client(self, fmt="bson"):
        address = self.data["zmq"]["bson_bind" if fmt == "bson" else "json_bind"]
        client = ZSparkClient(address, context=self.zctx, format=fmt, linger_ms=0)
        self.addCleanup(client.close, 0)
        return client

    def status(self):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200)
        return json.loads(body)

    def post(self, body, headers=None):
        status, _, answer = request(self.port, "POST", "/log", body, headers)
        self.assertEqual(status, 200, answer)
        return json.loads(answer)["ids"]

    def tail(self, *args):
        """Events printed by `zcmd tail ARGS` (JSON lines), checking the exit code."""
        result = zcmd("-y", self.config, "tail", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def all_events(self):
        events = self.tail("--from-offset", "0", "--offsets")
        offsets = [e["_offset"] for e in events]
        self.assertEqual(offsets, list(range(len(offsets))),
                         "tail must show offsets from 0 without gaps or duplicates")
        ids = [e["_id"] for e in events]
        self.assertEqual(len(ids), len(set(ids)), "an event id appears twice in the journal")
        uids = [e.get("context", {}).get("uid") for e in events]
        uids = [u for u in uids if u is not None]
        self.assertEqual(len(uids), len(set(uids)), "an event was journaled twice")
        return events

    def assert_acknowledged_present(self, events, acked, what):
        by_id = {e["_id"]: e for e in events}
        missing = sorted(uid for uid, id_ in acked.items()
                         if by_id.get(id_, {}).get("context", {}).get("uid") != uid)
        if missing:
            self.fail(f"{len(missing)} of {len(acked)} events acknowledged ({what}) are not in "
                      f"`zcmd tail` under the id they were given, e.g. {missing[:5]}")

    def wait_accepted(self, source, count):
        wait_for(lambda: self.status()["sources"].get(source, {}).get("accepted", 0) >= count,
                 message=f"{count} events accepted from {source}")


class StopAndRestart(ServeCase):
    def test_sigterm_mid_feed_then_restart_on_the_same_journal(self):
        server = self.serve()
        # ZeroMQ, both sockets: no acknowledgement, so wait until /status counts them.
        bson_client, json_client = self.client("bson"), self.client("json")
        for i in range(200):
            bson_client.event("zmq", {"uid": f"zb-{i}"}, topic="t")
            json_client.event("zmq", {"uid": f"zj-{i}"}, extra={"i": i})
        # HTTP: a single event, an array, NDJSON and the GET form, each answered with ids.
        acked = {}
        acked.update(zip(["h-single"], self.post({"type": "one", "context": {"uid": "h-single"}})))
        batch = [{"type": "batch", "context": {"uid": f"h-arr-{i}"}} for i in range(5)]
        acked.update(zip([f"h-arr-{i}" for i in range(5)], self.post(batch)))
        ndjson = "\n".join(json.dumps({"type": "nd", "context": {"uid": f"h-nd-{i}"}}) for i in range(3))
        acked.update(zip([f"h-nd-{i}" for i in range(3)],
                         self.post(ndjson.encode(), {"Content-Type": "application/x-ndjson"})))
        status, _, body = request(self.port, "GET", "/log?type=get&level=warn&uid=h-get")
        self.assertEqual(status, 200, body)
        acked["h-get"] = json.loads(body)["ids"][0]
        self.assertEqual(len(set(acked.values())), len(acked), "two events got the same id")
        self.wait_accepted("zmq_bson", 200)
        self.wait_accepted("zmq_json", 200)

        # Then SIGTERM while several producers keep posting.
        feeder = Feeder(self.port, "load").start()
        wait_for(lambda: len(feeder.acked) >= 300, message="300 acknowledged events under load")
        self.stop(server, signal.SIGTERM)
        feeder.stop()
        self.assertEqual(feeder.bad, [], "answers other than 200/503 during the stop")

        events = self.all_events()
        self.assert_acknowledged_present(events, acked, "before the stop")
        self.assert_acknowledged_present(events, feeder.acked, "under load while stopping")
        uids = {e["context"]["uid"] for e in events}
        for prefix in ("zb", "zj"):
            missing = [i for i in range(200) if f"{prefix}-{i}" not in uids]
            self.assertEqual(missing, [], f"ZeroMQ events {prefix}-* counted as accepted but not journaled")
        sent = feeder.sent | set(acked) | {f"z{p}-{i}" for p in "bj" for i in range(200)}
        self.assertEqual(uids - sent, set(), "the journal holds events nobody sent")
        get_event = next(e for e in events if e["context"]["uid"] == "h-get")
        self.assertEqual((get_event["type"], get_event["level"], get_event["source"]), ("get", "warn", "http"))
        zj = next(e for e in events if e["context"]["uid"] == "zj-7")
        self.assertEqual((zj["extra"], zj["source"]), ({"i": 7}, "zmq_json"))
        zb = next(e for e in events if e["context"]["uid"] == "zb-7")
        self.assertEqual((zb["topic"], zb["source"]), ("t", "zmq_bson"))

        # Restart on the same journal: old events are still there, offsets continue.
        count = len(events)
        server = self.serve()
        self.assertEqual(self.status()["journal"]["end_offset"], count)
        (new_id,) = self.post({"type": "after", "context": {"uid": "after-restart"}})
        self.client("bson").event("after", {"uid": "after-restart-zmq"})
        self.wait_accepted("zmq_bson", 1)
        self.stop(server, signal.SIGTERM)
        after = self.all_events()
        self.assertEqual(after[:count], events, "events from before the restart changed")
        self.assertEqual(len(after), count + 2)
        new = {e["context"]["uid"]: e for e in after[count:]}
        self.assertEqual(new["after-restart"]["_offset"], count)
        self.assertEqual(new["after-restart"]["_id"], new_id)
        self.assertIn("after-restart-zmq", new)
        self.assertNotIn(new_id, {e["_id"] for e in events}, "an id was given out again after restart")

    def test_sigkill_under_concurrent_http_load_loses_no_acknowledged_event(self):
        acked = {}
        sent = set()
        count = 0
        for round_, sync in enumerate(("batch", "always")):
            self.data["journal"]["sync"] = sync
            write_config(self.tmp.path, self.data)
            server = self.serve()
            self.assertEqual(self.status()["journal"]["end_offset"], count,
                             "after SIGKILL the server must reopen at the end of the journal")
            feeder = Feeder(self.port, f"k{round_}", workers=6).start()
            target = RNG.randint(600, 1200)
            wait_for(lambda: len(feeder.acked) >= target, message=f"{target} acknowledged events")
            time.sleep(RNG.uniform(0, 0.05))
            self.stop(server, signal.SIGKILL)
            feeder.stop()
            self.assertEqual(feeder.bad, [])
            acked.update(feeder.acked)
            sent |= feeder.sent
            events = self.all_events()
            self.assert_acknowledged_present(events, acked, f"before SIGKILL, sync={sync}")
            uids = {e["context"]["uid"] for e in events}
            self.assertEqual(uids - sent, set(), "the journal holds events nobody sent")
            self.assertGreaterEqual(len(events), len(acked))
            count = len(events)

        # After the last kill: restart, appending continues after everything there.
        server = self.serve()
        (new_id,) = self.post({"type": "after", "context": {"uid": "after-kill"}})
        self.stop(server, signal.SIGTERM)
        events = self.all_events()
        self.assertEqual(len(events), count + 1)
        self.assertEqual((events[-1]["_id"], events[-1]["_offset"]), (new_id, count))

    def test_sigterm_while_a_zmq_producer_keeps_sending(self):
        server = self.serve()
        client = self.client("bson")
        sent = [0]

        def produce():
            while True:
                client.event("flood", {"uid": f"f-{sent[0]}", "n": sent[0]})
                sent[0] += 1
                if sent[0] % 200 == 0:
                    gevent.sleep(0)

        producer = gevent.spawn(produce)
        self.addCleanup(producer.kill)
        self.wait_accepted("zmq_bson", 2000)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(20)
        except Exception:
            self.fail(f"zcmd serve did not stop within 20 s of SIGTERM while a ZeroMQ producer kept "
                      f"sending ({sent[0]} sent so far)")
        finally:
            producer.kill()
        self.assertEqual(code, 0, server.log()[-3000:])
        self.assertLess(time.monotonic() - started, 20)
        events = self.all_events()
        ns = [e["context"]["n"] for e in events]
        self.assertGreaterEqual(len(ns), 2000)
        self.assertEqual(ns, list(range(len(ns))),
                         "events from one PUSH socket must be journaled in order, none skipped")


class RefusedStarts(ServeCase):
    def test_a_second_server_on_the_same_journal_is_refused(self):
        first = self.serve()
        (first_id,) = self.post({"type": "x", "context": {"uid": "first"}})
        other = dict(self.data, http={"host": "127.0.0.1", "port": free_port()},
                     zmq={"bson_bind": f"tcp://127.0.0.1:{free_port()}",
                          "json_bind": f"tcp://127.0.0.1:{free_port()}"})
        other_config = write_config(self.tmp.path, other, "second.yaml")
        result = zcmd("-y", other_config, "serve", timeout=30)
        self.assertNotEqual(result.returncode, 0)
        message = result.stderr.lower()
        self.assertTrue("in use" in message or "lock" in message, result.stderr)
        self.assertIn(os.path.abspath(self.journal_dir).lower(), message,
                      "the message must name the journal")
        self.assertNotIn("traceback", message)
        # The first server is unaffected and its journal intact.
        (second_id,) = self.post({"type": "x", "context": {"uid": "second"}})
        self.stop(first)
        events = self.all_events()
        self.assertEqual([e["_id"] for e in events], [first_id, second_id])

    def test_a_port_in_use_is_refused_with_a_clear_message(self):
        for key in ("http", "zmq"):
            with self.subTest(listener=key):
                blocker = socket.socket()
                blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                blocker.bind(("127.0.0.1", 0))
                blocker.listen(1)
                port = blocker.getsockname()[1]
                data = config_data(self.tmp.path)
                data["journal"]["dir"] = self.tmp.join(f"journal-{key}")
                if key == "http":
                    data["http"]["port"] = port
                else:
                    data["zmq"]["json_bind"] = f"tcp://127.0.0.1:{port}"
                config = write_config(self.tmp.path, data, f"{key}.yaml")
                try:
                    result = zcmd("-y", config, "serve", timeout=30)
                finally:
                    blocker.close()
                self.assertNotEqual(result.returncode, 0)
                message = result.stderr.lower()
                self.assertIn(str(port), message, "the message must name the port")
                self.assertIn("in use", message, result.stderr)
                self.assertNotIn("traceback", message)
                # The journal it opened is released: a server can start on it now.
                data["http"]["port"] = free_port()
                data["zmq"]["json_bind"] = f"tcp://127.0.0.1:{free_port()}"
                config = write_config(self.tmp.path, data, f"{key}.yaml")
                server = ServeProcess(config, data["http"]["port"], self.tmp.join(f"{key}.log"))
                self.addCleanup(server.kill)
                server.start()
                self.assertEqual(server.stop(), 0)


class Tail(ServeCase):
    def test_tail_n_prints_exactly_the_last_n(self):
        server = self.serve()
        ids = [self.post({"type": "t", "context": {"uid": f"t{i}"}})[0] for i in range(7)]
        for running in (True, False):
            with self.subTest(server_running=running):
                events = self.tail("-n", "3")
                self.assertEqual([e["context"]["uid"] for e in events], ["t4", "t5", "t6"])
                self.assertEqual([e["_id"] for e in events], ids[-3:])
                with_offsets = self.tail("-n", "3", "--offsets")
                self.assertEqual([e["_offset"] for e in with_offsets], [4, 5, 6])
                self.assertEqual([e["uid"] for e in (e["context"] for e in self.tail("-n", "1"))], ["t6"])
                self.assertEqual(len(self.tail("-n", "100")), 7)
                self.assertEqual(len(self.tail()), 7, "the default is the last 10")
            if running:
                self.stop(server)

    def test_tail_n_across_small_segments(self):
        self.data["journal"]["segment_bytes"] = 250  # one or two events per segment
        write_config(self.tmp.path, self.data)
        server = self.serve()
        for i in range(10):
            self.post({"type": "t", "context": {"uid": f"s{i}"}})
        self.assertGreater(self.status()["journal"]["segments"], 3)
        self.stop(server)
        for n in (1, 2, 3, 4, 7, 10, 11):
            with self.subTest(n=n):
                events = self.tail("-n", str(n), "--offsets")
                self.assertEqual([e["context"]["uid"] for e in events],
                                 [f"s{i}" for i in range(max(0, 10 - n), 10)])

    def test_tail_on_a_missing_journal_fails_with_a_message(self):
        missing = self.tmp.join("no", "such", "journal")
        for args in (("-y", self.config, "tail"), ("-y", self.config, "tail", "--journal", missing)):
            with self.subTest(args=args):
                result = zcmd(*args)
                self.assertNotEqual(result.returncode, 0)
                self.assertEqual(result.stdout, "")
                where = missing if "--journal" in args else self.journal_dir
                self.assertIn(where, result.stderr)
                self.assertNotIn("Traceback", result.stderr)
                self.assertFalse(os.path.exists(where), "tail must not create the journal")


if __name__ == "__main__":
    unittest.main()
