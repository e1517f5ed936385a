"""`zcmd tail --server`: live events from a running server over HTTP (GET /tail), filtered by type
and topic, ending when the server stops; a clear exit code when no server answers or the token is
wrong."""
import json
import signal
import subprocess
import sys
import unittest

import gevent

from .support import ROOT, ServeProcess, TempDir, config_data, request, write_config, zcmd

TOKEN = "reader-5b1f"


class TailServer(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def serve(self, **http):
        data = config_data(self.tmp.path, http=http)
        self.port = data["http"]["port"]
        self.config_path = write_config(self.tmp.path, data)
        server = ServeProcess(self.config_path, self.port, self.tmp.join("serve.log")).start()
        self.addCleanup(server.stop, signal.SIGKILL)
        return server

    def tail(self, *args, config=None):
        proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", "-y", config or self.config_path, "tail",
                                 "--server", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        self.addCleanup(proc.kill)
        with gevent.Timeout(20):
            line = proc.stderr.readline()
        self.assertIn("following", line)
        return proc

    def post(self, events, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, _, body = request(self.port, "POST", "/log", events, headers)
        self.assertEqual(status, 200, body)
        return json.loads(body)["ids"]

    def test_follows_live_events_by_type_and_topic_until_the_server_stops(self):
        server = self.serve()
        self.post([{"type": "click", "topic": "web", "context": {"before": True}}])
        proc = self.tail("-n", "0", "--type", "click", "--topic", "web")
        ids = self.post([{"type": "click", "topic": "web"}, {"type": "view", "topic": "web"},
                         {"type": "click", "topic": "app"}, {"type": "click", "topic": "web"}])
        with gevent.Timeout(20):
            lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        self.assertEqual([e["_id"] for e in lines], [ids[0], ids[3]])
        self.assertTrue(all(e["type"] == "click" and e["topic"] == "web" for e in lines))
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        with gevent.Timeout(20):
            out, err = proc.communicate()
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out, "")  # nothing else matched
        self.assertIn("ended the stream", err)

    def test_last_n_records_first(self):
        self.serve()
        ids = self.post([{"type": f"t{i}"} for i in range(5)])
        proc = self.tail("-n", "2")
        with gevent.Timeout(20):
            lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        self.assertEqual([e["_id"] for e in lines], ids[3:])

    def test_sends_the_status_token_and_says_so_when_it_is_wrong(self):
        self.serve(tokens=["ingest-1"], status_tokens=[TOKEN])
        proc = self.tail("-n", "0")
        self.post([{"type": "secret-stream"}], token="ingest-1")
        with gevent.Timeout(20):
            self.assertEqual(json.loads(proc.stdout.readline())["type"], "secret-stream")
        wrong = write_config(self.tmp.path, config_data(self.tmp.path, http={"port": self.port,
                                                                             "status_tokens": ["nope"]}),
                             name="wrong.yaml")
        result = zcmd("-y", wrong, "tail", "--server")
        self.assertEqual(result.returncode, 1)
        self.assertIn("401", result.stderr)

    def test_no_server(self):
        path = write_config(self.tmp.path, config_data(self.tmp.path))
        result = zcmd("-y", path, "tail", "--server")
        self.assertEqual(result.returncode, 3)
        self.assertIn("is `zcmd serve` running?", result.stderr)
        self.assertEqual(zcmd("-y", path, "tail", "--server", "--offsets").returncode, 2)


if __name__ == "__main__":
    unittest.main()
