"""Access control, seen from outside `zcmd serve`: bearer tokens per path group (from the YAML, an
environment variable or a file), HTTPS, ZeroMQ CURVE with authorized client keys (`zcmd keygen`),
owner-only journal files, and no secret in the log, /status or `zcmd validate`."""
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import unittest
import urllib.request

from zspark.client import ZSparkClient

from .support import (ServeProcess, TempDir, config_data, free_port, journal_events, request, wait_until,
                      write_config, zcmd)

INGEST, READER = "ingest-token-7f3a", "reader-token-91cc"


class AccessCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def serve(self, env=None, **sections):
        data = config_data(self.tmp.path, **sections)
        self.port = data["http"]["port"]
        self.bson = data["zmq"]["bson_bind"]
        self.config_path = write_config(self.tmp.path, data)
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            server = ServeProcess(self.config_path, self.port, self.tmp.join("serve.log")).start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.addCleanup(server.stop, signal.SIGKILL)
        return server

    def status_of(self, method, path, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"type": "t"} if method == "POST" else None
        return request(self.port, method, path, body, headers)[0]


class Tokens(AccessCase):
    def test_ingest_and_status_groups_have_their_own_tokens(self):
        with open(self.tmp.join("readers.txt"), "w") as f:
            f.write("# who may look\n\n" + READER + "\n")
        server = self.serve(env={"ZS_INGEST": INGEST},
                            http={"tokens": ["env:ZS_INGEST"], "status_tokens": ["file:readers.txt"]})
        self.assertEqual(self.status_of("POST", "/log", INGEST), 200)
        self.assertEqual(self.status_of("GET", "/log?type=t", INGEST), 200)
        for token in (None, READER, "wrong"):
            self.assertEqual(self.status_of("POST", "/log", token), 401, token)
        for path in ("/status", "/metrics"):
            self.assertEqual(self.status_of("GET", path, READER), 200, path)
            for token in (None, INGEST, "wrong"):
                self.assertEqual(self.status_of("GET", path, token), 401, (path, token))
        self.assertEqual(self.status_of("GET", "/imok"), 200)
        self.assertEqual(server.stop(signal.SIGTERM), 0)

        # The secrets appear nowhere an operator or an attacker would read.
        self.assertNotIn(INGEST, server.log())
        self.assertNotIn(READER, server.log())
        validated = zcmd("-y", self.config_path, "validate")
        self.assertNotIn(READER, validated.stdout + validated.stderr)

    def test_tail_stream_needs_a_status_token(self):
        self.serve(http={"tokens": [INGEST]})  # no status_tokens: the same tokens guard both groups
        self.assertEqual(self.status_of("GET", "/tail"), 401)
        self.assertEqual(self.status_of("GET", "/status", INGEST), 200)
        body = json.loads(request(self.port, "GET", "/status", headers={"Authorization": f"Bearer {INGEST}"})[2])
        self.assertNotIn(INGEST, json.dumps(body))

    def test_an_unset_environment_variable_is_a_config_error_naming_the_key(self):
        path = write_config(self.tmp.path, config_data(self.tmp.path, http={"tokens": ["env:ZS_NOT_SET_ANYWHERE"]}))
        result = zcmd("-y", path, "validate")
        self.assertEqual(result.returncode, 2)
        self.assertIn("http.tokens[0]", result.stderr)
        self.assertIn("ZS_NOT_SET_ANYWHERE", result.stderr)


class Https(AccessCase):
    def make_certificate(self, name="server"):
        cert, key = self.tmp.join(f"{name}.crt"), self.tmp.join(f"{name}.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        return cert, key

    def test_serves_https_with_the_configured_certificate(self):
        cert, key = self.make_certificate()
        data = config_data(self.tmp.path, http={"certfile": cert, "keyfile": key})
        port = data["http"]["port"]
        # Not ServeProcess: it waits for /imok over plain HTTP, which a TLS port cannot answer.
        proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", "-y", write_config(self.tmp.path, data),
                                 "serve"], stderr=subprocess.DEVNULL)
        self.addCleanup(proc.kill)
        context = ssl.create_default_context(cafile=cert)
        url = f"https://127.0.0.1:{port}/log?type=secure"

        def answer():
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                    return resp.status, json.loads(resp.read())
            except OSError:
                return None
        status, body = wait_until(answer, timeout=20, message="an HTTPS answer")
        self.assertEqual((status, body["ok"]), (200, True))
        with self.assertRaises(Exception):  # plain HTTP on the TLS port gets no answer
            request(port, "GET", "/imok", timeout=2)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(20), 0)
        self.assertEqual([e["type"] for e in journal_events(self.tmp.join("journal"))], ["secure"])

    def test_a_certificate_that_does_not_fit_the_key_stops_the_start_naming_the_keys(self):
        cert, _ = self.make_certificate("one")
        _, other_key = self.make_certificate("two")
        path = write_config(self.tmp.path, config_data(self.tmp.path, http={"certfile": cert, "keyfile": other_key}))
        result = zcmd("-y", path, "serve", timeout=30)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("http.certfile", result.stderr)


class Curve(AccessCase):
    def keygen(self, name, directory="keys"):
        result = zcmd("keygen", self.tmp.join(directory), "--name", name)
        self.assertEqual(result.returncode, 0, result.stderr)
        return self.tmp.join(directory, f"{name}.key"), self.tmp.join(directory, f"{name}.key_secret")

    def test_only_clients_with_an_authorized_key_deliver_events(self):
        server_public, server_secret = self.keygen("server")
        allowed_public, allowed_secret = self.keygen("app1", "clients")
        stranger_public, stranger_secret = self.keygen("stranger", "elsewhere")
        self.assertEqual(stat.S_IMODE(os.stat(allowed_secret).st_mode), 0o600)
        self.assertEqual(zcmd("keygen", self.tmp.join("clients"), "--name", "app1").returncode, 1)  # no overwrite
        server = self.serve(zmq={"curve_secret_key": server_secret,
                                 "curve_authorized_keys": self.tmp.join("clients")})
        def send(type_, **keys):
            client = ZSparkClient(self.bson, **keys)
            self.addCleanup(client.close, 0)  # linger 0: what a refused client holds is dropped
            client.event(type_, {})
            return client

        send("from-a-stranger", server_key=server_public, client_key=stranger_secret)
        send("without-curve")
        send("allowed", server_key=server_public, client_key=allowed_secret)
        journal = self.tmp.join("journal")
        wait_until(lambda: journal_events(journal), message="the authorized event")
        time.sleep(0.5)  # the others had as long to arrive, had they been let in
        self.assertEqual([e["type"] for e in journal_events(journal)], ["allowed"])
        wait_until(lambda: "refused a connection" in server.log(), message="the stranger's refusal logged")

        # A key added to the directory counts from the client's next connection.
        os.link(stranger_public, self.tmp.join("clients", "stranger.key"))
        send("stranger-now-allowed", server_key=server_public, client_key=stranger_secret)
        wait_until(lambda: len(journal_events(journal)) == 2, message="the newly authorized client")
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertNotIn(open(server_secret).read().split('secret-key = "')[1][:40], server.log())

    def test_a_public_key_in_place_of_the_secret_one_is_refused_at_start(self):
        server_public, _ = self.keygen("server")
        os.makedirs(self.tmp.join("clients"))
        path = write_config(self.tmp.path, config_data(self.tmp.path, zmq={
            "curve_secret_key": server_public, "curve_authorized_keys": self.tmp.join("clients")}))
        result = zcmd("-y", path, "serve", timeout=30)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("zmq.curve_secret_key", result.stderr)


class Files(AccessCase):
    def test_journal_cursors_and_state_are_owner_only(self):
        server = self.serve(pub={"enabled": True, "bind": f"tcp://127.0.0.1:{free_port()}"})
        self.assertEqual(self.status_of("POST", "/log"), 200)
        wait_until(lambda: os.path.exists(self.tmp.join("journal", "cursors", "pub")), message="the cursor")
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        journal = self.tmp.join("journal")
        self.assertEqual(stat.S_IMODE(os.stat(journal).st_mode), 0o700)
        for directory, _, files in os.walk(journal):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode) & 0o077, 0, directory)
            for name in files:
                path = os.path.join(directory, name)
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o077, 0, path)


if __name__ == "__main__":
    unittest.main()
