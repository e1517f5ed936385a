"""`zcmd check`, the Nagios plugin: OK with a forwarder delivering to the real local MongoDB-
compatible server, WARNING / CRITICAL with a forwarder pointed at a port where nothing listens
and with a tiny journal, UNKNOWN without a server and for bad arguments or config; the one
output line and its perfdata syntax."""
import re
import unittest
import uuid

from .support import (ServeProcess, TempDir, closed_port, config_data, mongo_client, request, start_mongo,
                      wait_until, write_config, zcmd)

SERVICES = {}

# label=value[UOM];[warn];[crit];[min];[max] (Nagios plugin guidelines), labels without quotes here
PERF_ITEM = re.compile(r"^[A-Za-z0-9_.-]+=-?[0-9.]+(%|s|ms|us|B|KB|MB|TB|c)?(;[0-9.]*){0,4}$")


def setUpModule():
    SERVICES["state"] = TempDir(prefix="zspark-check-svc-")
    SERVICES["mongo"] = start_mongo(SERVICES["state"].join("mongo"))


def tearDownModule():
    SERVICES.pop("mongo").stop()
    SERVICES.pop("state").remove()


def parse(stdout):
    """The one line: (state word, text, {label: [value, warn, crit, min, max]})."""
    lines = stdout.splitlines()
    assert len(lines) == 1, f"not exactly one line: {stdout!r}"
    head, _, perf = lines[0].partition(" | ")
    match = re.match(r"^ZSPARK (OK|WARNING|CRITICAL|UNKNOWN) - (.+)$", head)
    assert match, f"not a status line: {lines[0]!r}"
    items = {}
    for item in perf.split():
        assert PERF_ITEM.match(item), f"bad perfdata item {item!r} in {lines[0]!r}"
        label, _, values = item.partition("=")
        items[label] = values.split(";")
    return match.group(1), match.group(2), items


class CheckCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def serve(self, **sections):
        self.data = config_data(self.tmp.path, **sections)
        self.config = write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        self.addCleanup(server.stop)
        return server.start(timeout=30)

    def check(self, *args, expect):
        result = zcmd("-y", self.config, "check", *args)
        self.assertEqual(result.returncode, expect, f"stdout {result.stdout!r} stderr {result.stderr[-2000:]!r}")
        return parse(result.stdout)

    def send(self, n):
        for i in range(n):
            status = request(self.port, "GET", f"/log?type=check&i={i}")[0]
            self.assertEqual(status, 200)


class Forwarders(CheckCase):
    def test_ok_while_delivering_to_mongodb(self):
        mongo = SERVICES["mongo"]
        database = f"check_{uuid.uuid4().hex[:8]}"
        self.serve(mongo={"enabled": True, "uri": mongo.uri, "database": database})
        self.send(20)
        client = mongo_client(mongo.uri)
        self.addCleanup(client.close)
        wait_until(lambda: client[database].event.count_documents({}) == 20, message="20 events in MongoDB")
        wait_until(lambda: '"lag":0' in request(self.port, "GET", "/status")[2].decode(),
                   message="the forwarder's cursor to catch up")

        state, text, perf = self.check(expect=0)
        self.assertEqual(state, "OK")
        self.assertTrue(text.startswith("1 forwarder running, max lag 0, journal "), text)
        self.assertEqual(perf["lag_mongo"], ["0", "1000", "10000", "0"])
        self.assertEqual(perf["journal_full"][1:], ["80", "90", "0", "100"])
        self.assertTrue(perf["journal_full"][0].endswith("%"))
        self.assertGreater(float(perf["rate_http"][0]), 0)
        self.assertEqual(perf["rate_zmq_bson"], ["0", "", "", "0"])

        state, text, perf = self.check("--lag-warn", "5", "--lag-crit", "50", expect=0)
        self.assertEqual(perf["lag_mongo"], ["0", "5", "50", "0"])

    def test_forwarder_backing_off_and_lag(self):
        dead = closed_port()  # nothing listens here
        self.serve(mongo={"enabled": True, "uri": f"mongodb://127.0.0.1:{dead}/?directConnection=true",
                          "timeout_ms": 200},
                   forward={"backoff_initial_ms": 50, "backoff_max_s": 0.5})
        self.send(3)
        wait_until(lambda: '"backing_off"' in request(self.port, "GET", "/status")[2].decode(),
                   message="the mongo forwarder to back off")

        state, text, perf = self.check(expect=1)
        self.assertEqual(state, "WARNING")
        self.assertTrue(text.startswith("mongo backing_off (ServerSelectionTimeoutError"), text)
        self.assertIn("0 of 1 forwarders running, max lag 3", text)
        self.assertEqual(perf["lag_mongo"][0], "3")

        state, text, _ = self.check("--not-running", "critical", expect=2)
        self.assertEqual(state, "CRITICAL")
        self.assertTrue(text.startswith("mongo backing_off"), text)

        # lag over the critical threshold outranks the backing-off warning, and is named first
        state, text, perf = self.check("--lag-warn", "1", "--lag-crit", "2", expect=2)
        self.assertEqual(state, "CRITICAL")
        self.assertTrue(text.startswith("mongo lag 3 > 2; mongo backing_off"), text)
        self.assertEqual(perf["lag_mongo"], ["3", "1", "2", "0"])

        state, text, _ = self.check("--lag-warn", "2", "--lag-crit", "5", "--backing-off", "warning", expect=1)
        self.assertTrue(text.startswith("mongo lag 3 > 2; mongo backing_off"), text)


class Fullness(CheckCase):
    def test_fullness(self):
        self.serve(journal={"max_bytes": 3000})
        sent = 0
        while request(self.port, "GET", f"/log?type=fill&n={sent}")[0] == 200:
            sent += 1
        self.assertGreater(sent, 5)
        state, text, perf = self.check(expect=2)
        self.assertEqual(state, "CRITICAL")
        self.assertRegex(text, r"^journal 9\d(\.\d+)?% full > 90%; 0 forwarders running, journal 9\d% full$")
        self.assertGreater(float(perf["journal_full"][0].rstrip("%")), 90)

        state, text, _ = self.check("--full-warn", "50", "--full-crit", "100", expect=1)
        self.assertEqual(state, "WARNING")
        self.assertRegex(text, r"^journal 9\d(\.\d+)?% full > 50%")

        state, _, perf = self.check("--full-warn", "100", "--full-crit", "100", expect=0)
        self.assertEqual(perf["journal_full"][1:3], ["100", "100"])


class Unknown(CheckCase):
    def setUp(self):
        super().setUp()
        self.data = config_data(self.tmp.path)
        self.config = write_config(self.tmp.path, self.data)

    def test_no_server(self):
        state, text, perf = self.check(expect=3)
        self.assertEqual(state, "UNKNOWN")
        self.assertIn(f"http://127.0.0.1:{self.data['http']['port']}/status", text)
        self.assertIn("zcmd serve", text)
        self.assertEqual(perf, {})

    def test_bad_arguments(self):
        for args, expected in ((["--lag-warn", "lots"], "--lag-warn: must be a whole number"),
                               (["--full-crit", "120"], "--full-crit: must be a percentage"),
                               (["--not-running", "panic"], "--not-running"),
                               (["--lag-warn", "10", "--lag-crit", "5"], "warning threshold is above")):
            state, text, _ = self.check(*args, expect=3)
            self.assertEqual(state, "UNKNOWN")
            self.assertIn(expected, text)

    def test_bad_config(self):
        path = write_config(self.tmp.path, {"http": {"port": -1}}, "bad.yaml")
        result = zcmd("-y", path, "check")
        self.assertEqual(result.returncode, 3)
        state, text, _ = parse(result.stdout)
        self.assertEqual(state, "UNKNOWN")
        self.assertIn("bad config", text)
        self.assertIn("http.port", text)
