"""`ApplianceCase`: a test case around `zcmd serve` as a child process, forwarding to the real
local broker and database, seen from outside (the 200 answers, /status, what a fresh Kafka
consumer and pymongo find, the journal and cursor files). Shared by tests/test_forwarding.py and
the fault suite (tests/faults/).

A module using it starts one broker and one database for all its tests:

    SERVICES = Services()
    setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

    class MyCase(ApplianceCase):
        services = SERVICES
"""
import collections
import json
import os
import signal
import time
import unittest
import uuid

import bson
import zmq.green as zmq_green

from zspark.client import ZSparkClient

from .support import (HttpFeeder, ServeProcess, TempDir, config_data, free_port, journal_events,
                      kafka_read, mongo_client, request, start_broker, start_mongo, wait_until,
                      write_config)

BATCH = 50  # forward.batch_size in these tests: the bound on duplicates after a crash


class Services:
    """One broker and one database for a test module, started and stopped by pid."""

    def __init__(self):
        self.state = self.broker = self.mongo = None

    def start(self):
        self.state = TempDir(prefix="zspark-services-")
        try:
            self.broker = start_broker(self.state.join("broker"))
            self.mongo = start_mongo(self.state.join("mongo"))
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for service in (self.broker, self.mongo):
            if service is not None:
                service.stop()
        self.broker = self.mongo = None
        if self.state is not None:
            self.state.remove()
            self.state = None


class ApplianceCase(unittest.TestCase):
    services = None  # a Services instance, started by the module

    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.uid = uuid.uuid4().hex[:10]
        self.topic = f"zs-{self.uid}"
        self.default_topic = f"zs-{self.uid}-default"
        self.database = f"zs_{self.uid}"
        self.broker = self.services.broker
        self.mongo = self.services.mongo
        self.zctx = zmq_green.Context()
        self.addCleanup(self.zctx.term)
        self.started = time.time()

    # -- the appliance ----------------------------------------------------------------------

    def configure(self, kafka=None, mongo=None, pub=None, forward=None, **sections):
        """Write the config: a sink section given as a dict (even empty) is enabled with test
        defaults; other `sections` (journal, http...) go into the config as given."""
        sections["forward"] = {"batch_size": BATCH, "batch_wait_ms": 5, "backoff_initial_ms": 50,
                               "backoff_max_s": 0.5, "stop_timeout_s": 10, **(forward or {})}
        if kafka is not None:
            sections["kafka"] = {"enabled": True, "brokers": self.broker.address, "topic": "{topic}",
                                 "default_topic": self.default_topic, "message_timeout_ms": 3000,
                                 **kafka}
        if mongo is not None:
            sections["mongo"] = {"enabled": True, "uri": self.mongo.uri, "database": self.database,
                                 "timeout_ms": 2000, **mongo}
        if pub is not None:
            sections["pub"] = {"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}", **pub}
        self.data = config_data(self.tmp.path, **sections)
        self.config = write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        self.journal_dir = self.data["journal"]["dir"]
        return self.data

    def serve(self, **kw):
        """Start `zcmd serve` (keyword arguments go to ServeProcess) and wait for /imok."""
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"), **kw)
        self.addCleanup(server.kill)
        return server.start(timeout=30)

    def stop(self, server, sig=signal.SIGTERM):
        code = server.stop(sig, timeout=60)
        expected = 0 if sig == signal.SIGTERM else -sig
        self.assertEqual(code, expected, f"zcmd serve exit code after {signal.Signals(sig).name}; "
                                         f"its log:\n{server.log()[-4000:]}")

    def status(self):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def post(self, body, headers=None):
        status, _, answer = request(self.port, "POST", "/log", body, headers)
        self.assertEqual(status, 200, answer)
        return json.loads(answer)["ids"]

    def client(self, fmt):
        address = self.data["zmq"]["bson_bind" if fmt == "bson" else "json_bind"]
        client = ZSparkClient(address, context=self.zctx, format=fmt, linger_ms=0)
        self.addCleanup(client.close, 0)
        return client

    def feeder(self, tag, **kw):
        """An HttpFeeder (started) of events to this test's topic; stopped at cleanup."""
        feeder = HttpFeeder(self.port, f"{tag}-{self.uid}",
                            make=lambda uid: {"type": "load", "topic": self.topic, "context": {"uid": uid}},
                            **kw)
        self.addCleanup(feeder.stop)  # idempotent
        return feeder.start()

    def assert_feeder_clean(self, feeder, stopped=False):
        """No answer but 200, unless the server was `stopped` under the feeder: then 503
        ("stopping") and connection errors are what a sender sees."""
        self.assertEqual(feeder.bad, [], "answers other than 200/503")
        if not stopped:
            self.assertEqual(feeder.refused, 0, "503 answers: the journal must take events meanwhile")
            self.assertEqual(feeder.errors, 0, "connection errors while the server was up")

    def wait_accepted(self, source, count):
        wait_until(lambda: self.status()["sources"].get(source, {}).get("accepted", 0) >= count,
                   message=f"{count} events accepted from {source}")

    def wait_delivered(self, names, timeout=60):
        """Wait until each named forwarder's cursor reached the end of the journal."""
        last = {}

        def caught_up():
            status = self.status()
            last.update(status)
            end = status["journal"]["end_offset"]
            return all(status["forwarders"][n]["cursor"] == end and status["forwarders"][n]["lag"] == 0
                       for n in names)

        try:
            wait_until(caught_up, timeout=timeout, interval=0.1, message=f"forwarders {names} to catch up")
        except AssertionError as e:
            raise AssertionError(f"{e}: journal {last.get('journal')}, forwarders {last.get('forwarders')}")
        return last

    def wait_backing_off(self, name):
        """Wait until /status shows forwarder `name` backing off with a lag; return the status."""
        def backing_off():
            status = self.status()
            forwarder = status["forwarders"][name]
            return status if forwarder["state"] == "backing_off" and forwarder["lag"] > 0 else None

        return wait_until(backing_off, timeout=30, interval=0.1,
                          message=f"the {name} forwarder backing off with a lag")

    def journal_ids(self):
        """{context.uid: _id hex} of every event in the journal."""
        return {e["context"]["uid"]: str(e["_id"]) for e in journal_events(self.journal_dir)}

    # -- the destinations -------------------------------------------------------------------

    def collection(self, mongo=None):
        client = mongo_client((mongo or self.mongo).uri, tz_aware=True)
        self.addCleanup(client.close)
        return client[self.database]["event"]

    def mongo_ids(self, mongo=None):
        """Every `_id` (hex) in the event collection, duplicates kept."""
        return [str(d["_id"]) for d in self.collection(mongo).find({}, {"_id": 1})]

    def read_kafka(self, topics, ids, broker=None, timeout=45):
        """Every message in `topics`, read until all of `ids` (hex) were seen."""
        want = set(ids)

        def done(messages):
            return want <= {message_id(m) for m in messages}

        return kafka_read((broker or self.broker).address, topics, done=done, timeout=timeout)

    def assert_each_once(self, messages, ids, what):
        counts = collections.Counter(message_id(m) for m in messages)
        missing = [i for i in ids if counts[i] == 0]
        twice = {i: n for i, n in counts.items() if n > 1}
        self.assertEqual(missing, [], f"{len(missing)} of {len(ids)} events missing in {what}")
        self.assertEqual(twice, {}, f"events delivered more than once to {what}")

    def dead_letters(self, sink):
        path = os.path.join(self.journal_dir, "dead-letter", f"{sink}.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f]


def message_id(message):
    """The event id (hex) in a JSON or BSON message."""
    try:
        return json.loads(message.value)["_id"]
    except ValueError:
        return str(bson.decode(message.value)["_id"])
