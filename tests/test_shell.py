"""`zcmd shell`: `-c` code with ZM (the real local MongoDB-compatible server), journal (read-only,
beside a running server and on a journal with a torn tail, which it must leave as it is), client
and config; exit codes; MongoDB down; the standard console fed on stdin."""
import datetime
import json
import os
import unittest
import uuid

from .support import (ServeProcess, TempDir, config_data, free_port, journal_events, mongo_client, request,
                      start_mongo, wait_until, write_config, write_journal, zcmd)

SERVICES = {}


def setUpModule():
    SERVICES["state"] = TempDir(prefix="zspark-shell-svc-")
    SERVICES["mongo"] = start_mongo(SERVICES["state"].join("mongo"))


def tearDownModule():
    SERVICES.pop("mongo").stop()
    SERVICES.pop("state").remove()


def events(*types):
    now = datetime.datetime.now(datetime.timezone.utc)
    return [{"type": t, "timestamp": now, "node": "test", "source": "http"} for t in types]


def snapshot(directory):
    """Every file under `directory` with its bytes: what a read-only look must not change."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


class ShellCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.mongo = SERVICES["mongo"]
        self.database = f"shell_{uuid.uuid4().hex[:8]}"

    def configure(self, **sections):
        sections.setdefault("mongo", {"uri": self.mongo.uri, "database": self.database})
        self.data = config_data(self.tmp.path, **sections)
        self.config = write_config(self.tmp.path, self.data)
        self.port = self.data["http"]["port"]
        self.journal_dir = self.data["journal"]["dir"]

    def shell(self, code, expect=0, **kw):
        result = zcmd("-y", self.config, "shell", "-c", code, **kw)
        self.assertEqual(result.returncode, expect, f"stdout {result.stdout!r}\nstderr {result.stderr[-3000:]}")
        return result

    def forwarder_lag(self, name):
        status, _, body = request(self.port, "GET", "/status")
        self.assertEqual(status, 200, body)
        return json.loads(body)["forwarders"][name]["lag"]

    def serve(self):
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        self.addCleanup(server.stop)
        return server.start(timeout=30)


class BesideARunningServer(ShellCase):
    def test_journal_zm_and_client(self):
        self.configure(mongo={"enabled": True, "uri": self.mongo.uri, "database": self.database},
                       zmq={"bson_bind": f"tcp://0.0.0.0:{free_port()}"})
        self.serve()
        for n in range(5):
            self.assertEqual(request(self.port, "GET", f"/log?type=t{n}")[0], 200)
        client = mongo_client(self.mongo.uri)
        self.addCleanup(client.close)
        wait_until(lambda: client[self.database].event.count_documents({}) == 5, message="5 events in MongoDB")
        # MongoDB holds a batch before the forwarder saves its cursor file past it (what
        # journal.cursors() prints): its cursor in /status moves once the file is written.
        wait_until(lambda: self.forwarder_lag("mongo") == 0,
                   message="the mongo forwarder's cursor (file) past the 5 events")

        result = self.shell("print(journal.first_offset(), journal.end_offset(), len(journal.segments()))\n"
                            "print([e['type'] for e in journal.last(3)])\n"
                            "print([e['type'] for e in journal.events(1, 3)])\n"
                            "print(journal.get(4)['type'], journal.get(99))\n"
                            "print(sorted(d['type'] for d in ZM.event.find()))\n"
                            "print(config.node.id, journal.cursors())")
        self.assertEqual(result.stdout.splitlines(), [
            "0 5 1",
            "['t2', 't3', 't4']",
            "['t1', 't2']",
            "t4 None",
            "['t0', 't1', 't2', 't3', 't4']",
            "test {'mongo': 5}",
        ])

        # client: ZeroMQ PUSH to the BSON socket, bound to 0.0.0.0 and reached on 127.0.0.1
        self.shell("client.event('from_shell', {'n': 1}, topic='ops')")
        arrived = wait_until(lambda: [e for e in journal_events(self.journal_dir) if e["type"] == "from_shell"],
                             message="the shell's event in the journal")
        self.assertEqual(arrived[0]["context"], {"n": 1})
        self.assertEqual(arrived[0]["source"], "zmq_bson")
        self.assertEqual(request(self.port, "GET", "/imok")[0], 200)  # the server is unharmed


class ZarkovsModel(ShellCase):
    def test_zarkovs_own_line_and_the_ming_style_view(self):
        self.configure()
        client = mongo_client(self.mongo.uri)
        self.addCleanup(client.close)
        client[self.database].event.insert_many([{"_id": n, "type": t, "context": {"n": n}}
                                                 for n, t in enumerate(("a", "b", "a"))])
        result = self.shell("print(sorted(e['type'] for e in ZM.event.m.find().all()))\n"
                            "print(ZM.event.m.find({'type': 'a'}).count(), ZM.event.m.find().limit(1).count())\n"
                            "print(ZM.event.m.get(type='b').context.n, ZM.event.m.get(type='zz'))\n"
                            "print(ZM.event.m.find({'type': 'a'}).sort('_id', -1).first()['_id'])\n"
                            "print(ZM.event.m.find({'type': 'b'}).one().type, ZM.event.count_documents({}))\n"
                            "print(ZM['event'].m.find().count(), ZM.nothing.m.find().first())")
        self.assertEqual(result.stdout.splitlines(), ["['a', 'a', 'b']", "2 3", "1 None", "2", "b 3", "3 None"])

    def test_zm_does_not_connect_until_a_query_runs(self):
        dead = free_port()
        self.configure(mongo={"uri": f"mongodb://127.0.0.1:{dead}/?directConnection=true", "timeout_ms": 300})
        self.assertEqual(self.shell("c = ZM.event.m.find({'type': 'a'}).limit(3); print(repr(ZM)[:4])").stdout,
                         "<ZM:\n")
        result = self.shell("ZM.event.m.find().all()", expect=1)
        self.assertIn("ServerSelectionTimeoutError", result.stderr)


class ReadOnly(ShellCase):
    def test_a_torn_journal_is_read_and_left_as_it_is(self):
        self.configure()
        write_journal(self.journal_dir, events(*(f"e{n}" for n in range(30))), segment_bytes=600)
        os.unlink(os.path.join(self.journal_dir, ".lock"))
        segments = sorted(n for n in os.listdir(self.journal_dir) if n.endswith(".log"))
        with open(os.path.join(self.journal_dir, segments[-1]), "ab") as f:
            f.write(b"ZJ\x00\x00\x01\x00torn")  # a record cut off by a crash: recovery would cut it
        before = snapshot(self.journal_dir)
        result = self.shell("print(journal.first_offset(), journal.end_offset(), len(journal.segments()))\n"
                            "print(len(list(journal.events())), journal.last(1)[0]['type'])\n"
                            "print(journal.cursors())")
        self.assertEqual(result.stdout.splitlines(), [f"0 30 {len(segments)}", "30 e29", "{}"])
        self.assertGreater(len(segments), 1)
        self.assertEqual(snapshot(self.journal_dir), before)  # no .lock, no cut, no cursor written

    def test_no_journal_yet(self):
        self.configure()
        result = self.shell("print(journal.end_offset(), journal.last(), journal.segments())")
        self.assertEqual(result.stdout, "0 [] []\n")
        self.assertFalse(os.path.exists(self.journal_dir))


class ExitAndErrors(ShellCase):
    def test_exceptions_and_exit_codes(self):
        self.configure()
        result = self.shell("print('before')\n1 / 0", expect=1)
        self.assertEqual(result.stdout, "before\n")
        self.assertIn("Traceback", result.stderr)
        self.assertIn("ZeroDivisionError", result.stderr)
        self.shell("import sys; sys.exit(5)", expect=5)
        self.shell("raise SystemExit", expect=0)

    def test_mongodb_down(self):
        dead = free_port()
        self.configure(mongo={"uri": f"mongodb://127.0.0.1:{dead}/?directConnection=true", "timeout_ms": 300})
        # Nothing connects until ZM is used: the shell works without MongoDB ...
        self.assertEqual(self.shell("print(journal.end_offset())").stdout, "0\n")
        # ... and a query fails with pymongo's error after mongo.timeout_ms
        result = self.shell("ZM.event.count_documents({})", expect=1)
        self.assertIn("ServerSelectionTimeoutError", result.stderr)

    def test_bson_socket_off(self):
        self.configure(zmq={"bson_bind": ""})
        self.assertEqual(self.shell("print(client)").stdout, "None\n")


class Console(ShellCase):
    def test_standard_console_on_stdin(self):
        self.configure()
        write_journal(self.journal_dir, events("console"))
        result = zcmd("-y", self.config, "shell", "--plain", input="journal.last(1)[0]['type']\nx = 6 * 7\nx\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("'console'", result.stdout)
        self.assertIn("42", result.stdout)
        for name in ("ZM", "config", "journal", "client"):
            self.assertRegex(result.stderr, rf"(?m)^  {name} +\S")  # the banner names each
        self.assertIn("READ-ONLY", result.stderr)
        self.assertIn("ZM.event.m.find().all()", result.stderr)  # Zarkov's line, named in the banner
