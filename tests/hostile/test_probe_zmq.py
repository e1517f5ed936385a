"""What an independent probe found on the CURVE sockets after issue 10 (zcmd serve as a child):
the ZAP handler answers one handshake at a time and, for each, reads and parses every file of
`zmq.curve_authorized_keys`. With 2,000 authorized clients that is ~40 ms of a thread per
handshake, so anyone who knows the server's public key (public by design) and makes up client
keys can queue handshakes faster than they are answered: a core at 100% for long after the flood
stopped, and an authorized client's first event not in after 20 s.
"""
import json
import os
import sys
import threading
import time
import unittest

import bson
import zmq
import zmq.auth

from tests.support import ServeProcess, TempDir, config_data, request, write_config

KEYS = 2000
FLOOD_S = 15


class HandshakeFloodTest(unittest.TestCase):
    def setUp(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        keys, clients = tmp.join("keys"), tmp.join("clients")
        os.mkdir(keys, 0o700)
        os.mkdir(clients, 0o700)
        self.server_public = zmq.auth.load_certificate(zmq.auth.create_certificates(keys, "server")[0])[0]
        self.app = zmq.auth.load_certificate(zmq.auth.create_certificates(keys, "app")[1])
        os.rename(os.path.join(keys, "app.key"), os.path.join(clients, "app.key"))
        for i in range(KEYS):  # the other clients of a large deployment
            public, _ = zmq.curve_keypair()
            with open(os.path.join(clients, f"client{i}.key"), "w") as f:
                f.write(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
        data = config_data(tmp.path, zmq={"curve_secret_key": os.path.join(keys, "server.key_secret"),
                                          "curve_authorized_keys": clients})
        self.address = data["zmq"]["bson_bind"]
        self.port = data["http"]["port"]
        self.server = ServeProcess(write_config(tmp.path, data), self.port, tmp.join("serve.log")).start()
        self.addCleanup(self.server.kill)
        self.context = zmq.Context()
        self.addCleanup(self.context.destroy, linger=0)

    def accepted(self):
        return json.loads(request(self.port, "GET", "/status")[2])["sources"]["zmq_bson"]["accepted"]

    def flood(self, seconds):
        """Handshakes with a key nobody authorized, about a hundred a second, 20 open at once."""
        public, secret = zmq.curve_keypair()
        open_sockets = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock = self.context.socket(zmq.PUSH)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.server_public, public, secret
            sock.linger = 0
            sock.connect(self.address)
            open_sockets.append(sock)
            if len(open_sockets) > 20:
                open_sockets.pop(0).close()
            time.sleep(0.01)
        for sock in open_sockets:
            sock.close()

    def test_a_flood_of_strangers_does_not_keep_an_authorized_client_out(self):
        attacker = threading.Thread(target=self.flood, args=(FLOOD_S,))
        attacker.start()
        self.addCleanup(attacker.join)
        time.sleep(5)
        before = self.accepted()
        sock = self.context.socket(zmq.PUSH)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.server_public, *self.app
        sock.linger = 0
        sock.connect(self.address)
        sock.send(bson.encode({"type": "legit"}))
        sent = time.monotonic()
        deadline = sent + 8  # a limit, generous: an answered handshake takes milliseconds
        while self.accepted() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"\nCURVE flood: the authorized client's event arrived after {time.monotonic() - sent:.1f} s", file=sys.stderr)
        sock.close()
        self.assertEqual(self.accepted(), before + 1,
                         "the authorized client's event did not arrive within 8 s, during a flood of strangers")
