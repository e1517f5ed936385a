"""The ZeroMQ sockets' edges against hostile and careless peers: frames over
`zmq.max_message_bytes`, raw TCP connections that never finish (or never start) the ZMTP
handshake, peers that go silent after it, a malformed file among the CURVE authorized keys,
refused CURVE handshakes; and no password of a configured URI in `zcmd validate`, `/status` or
the server's log.

PUSH has no acknowledgement: as in tests/test_zmq.py, a sentinel sent after the frames under test
on the same socket tells when every earlier frame has been dealt with.
"""
import json
import os
import signal
import socket
import struct
import time
import unittest

import bson
import zmq.auth
import zmq.green as zmq_green
from zmq.utils.monitor import recv_monitor_message

from tests.support import (ServeProcess, TempDir, config_data, request, wait_until,
                           write_config, zcmd)
from tests.test_zmq import ZmqCase
from zspark.client import ZSparkClient
from zspark.redact import redact


def padded(size, type):
    """A valid BSON event of exactly `size` bytes."""
    doc = {"type": type, "context": {"pad": ""}}
    doc["context"]["pad"] = "p" * (size - len(bson.encode(doc)))
    frame = bson.encode(doc)
    assert len(frame) == size
    return frame


def zmtp_port(address):
    return int(address.rsplit(":", 1)[1])


def read_until_closed(sock, timeout):
    """Read from a raw socket until the server closes it; True if it did within `timeout`."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


# A ZMTP 3.0 NULL greeting (64 bytes) and the READY command of a PUSH socket: what a peer sends to
# complete the handshake by hand, so that it can then go silent.
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 4) + b"PUSH"
READY = b"\x04" + bytes([len(_READY_BODY)]) + _READY_BODY


class OversizeFrames(ZmqCase):
    LIMIT = 2000
    zmq_settings = {"max_message_bytes": LIMIT}

    def test_an_oversize_frame_is_a_counted_rejection_and_the_frames_behind_it_are_kept(self):
        sender = self.push(self.bson_addr)
        monitor = sender.get_monitor_socket(zmq_green.EVENT_DISCONNECTED)
        self.addCleanup(monitor.close, 0)
        sender.send(padded(100, "before"))
        sender.send(padded(self.LIMIT + 1, "just-over"))
        sender.send(padded(3 * self.LIMIT, "well-over"))
        for i in range(20):
            sender.send(padded(self.LIMIT if i % 2 else 200, f"after-{i}"))
        sender.send(bson.encode({"type": "sentinel"}))
        events = self.wait_events(22)
        self.assertEqual([e["type"] for e in events],
                         ["before"] + [f"after-{i}" for i in range(20)] + ["sentinel"])
        stats = self.wait_counts("zmq_bson", 22, 2)
        self.assertIn(f"a frame of {3 * self.LIMIT} bytes is over zmq.max_message_bytes ({self.LIMIT})",
                      stats["last_rejection"])
        self.assertFalse(monitor.poll(200), "the server dropped the sender's connection")
        self.assertEqual(stats["connections"]["accepted"], 1)

    def test_past_the_hard_limit_the_connection_is_dropped_and_that_is_seen(self):
        sender = self.push(self.bson_addr)
        monitor = sender.get_monitor_socket(zmq_green.EVENT_DISCONNECTED)
        self.addCleanup(monitor.close, 0)
        sender.send(padded(100, "before"))
        self.wait_events(1)
        sender.send(padded(4 * self.LIMIT + 1, "huge"))
        wait_until(lambda: monitor.poll(50) and recv_monitor_message(monitor), 15,
                   message="the server to drop the connection that sent a frame over the hard limit")
        sender.send(bson.encode({"type": "after-reconnect"}))
        self.assertEqual([e["type"] for e in self.wait_events(2)], ["before", "after-reconnect"])
        connections = self.wait_counts("zmq_bson", 2, 0)["connections"]
        self.assertEqual(connections["accepted"], 2, connections)
        self.assertEqual(connections["open"], 1, connections)


class IdlePeers(ZmqCase):
    zmq_settings = {"handshake_timeout_s": 0.5, "heartbeat_s": 0.2, "heartbeat_timeout_s": 0.6,
                    "receive_hwm": 50}

    def raw(self, address=None):
        sock = socket.create_connection(("127.0.0.1", zmtp_port(address or self.bson_addr)))
        self.addCleanup(sock.close)
        return sock

    def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout(self):
        self.assertTrue(read_until_closed(self.raw(), 10), "the idle connection is still open")
        self.assertTrue(read_until_closed(self.raw(self.json_addr), 10), "the idle connection is still open")
        stats = self.source_stats("zmq_bson")["connections"]
        self.assertEqual((stats["failed_handshakes"], stats["open"]), (1, 0), stats)

    def test_a_half_sent_greeting_is_closed_too(self):
        sock = self.raw()
        sock.sendall(GREETING[:11])
        self.assertTrue(read_until_closed(sock, 10), "the connection with half a greeting is still open")
        wait_until(lambda: self.source_stats("zmq_bson")["connections"]["open"] == 0, 10,
                   message="the connection to be counted as closed")

    def test_a_peer_that_goes_silent_after_the_handshake_is_closed_by_heartbeats(self):
        sock = self.raw()
        sock.sendall(GREETING + READY)  # a complete handshake, then never a PONG
        self.assertTrue(read_until_closed(sock, 10), "the silent peer's connection is still open")

    def test_each_peer_queues_at_most_receive_hwm_frames(self):
        for source in self.server.zmq_sources:
            self.assertEqual(source._socket.getsockopt(zmq_green.RCVHWM), 50)

    def test_many_idle_connections_do_not_keep_a_real_sender_out(self):
        idle = [self.raw() for _ in range(200)]
        client = self.client(self.bson_addr)
        for i in range(50):
            client.event("real", {"i": i})
        self.assertEqual([e["context"]["i"] for e in self.wait_events(50)], list(range(50)))
        wait_until(lambda: self.source_stats("zmq_bson")["connections"]["open"] == 1, 10,
                   message="the idle connections to be closed, the real sender's kept")
        self.assertTrue(all(read_until_closed(sock, 5) for sock in idle))
        client.event("still-connected")
        self.assertEqual(self.wait_events(51)[-1]["type"], "still-connected")


class CurveKeys(ZmqCase):
    """CURVE on both sockets with a directory of authorized client keys, one of them broken."""

    def setUp(self):
        keys = TempDir()
        self.addCleanup(keys.remove)
        self.keys = keys
        os.makedirs(keys.join("clients"))
        self.server_public, self.server_secret = zmq.auth.create_certificates(keys.path, "server")
        _, self.app_secret = zmq.auth.create_certificates(keys.join("clients"), "app1")
        _, self.stranger_secret = zmq.auth.create_certificates(keys.path, "stranger")
        with open(keys.join("clients", "torn.key"), "w") as f:
            f.write("#   ZeroMQ CURVE Public Certificate\ncurve\n    public-key = \"rq:rM>}U?@Lns47E1%k")
        with open(keys.join("clients", "nokey.key"), "w") as f:
            f.write("not a certificate at all\n")
        os.mkdir(keys.join("clients", "dir.key"))
        self.zmq_settings = {"curve_secret_key": self.server_secret,
                             "curve_authorized_keys": keys.join("clients")}
        with self.assertLogs("zspark.zmq", "WARNING") as self.start_logs:
            super().setUp()

    def send(self, type, **keys):
        client = ZSparkClient(self.bson_addr, context=self.context, **keys)
        self.addCleanup(client.close, 0)  # linger 0: what a refused client holds is dropped
        client.event(type)

    def test_a_malformed_key_file_is_skipped_with_one_warning_and_the_others_admit(self):
        skipped = [line for line in self.start_logs.output if "skipping" in line]
        self.assertEqual(len(skipped), 3, self.start_logs.output)
        for name in ("torn.key", "nokey.key", "dir.key"):
            self.assertEqual(sum(name in line for line in skipped), 1, (name, skipped))
        with self.assertNoLogs("zspark.zmq", "WARNING"):  # not warned again
            for i in range(5):  # five connections, each reading the directory again
                self.send(f"allowed-{i}", server_key=self.server_public, client_key=self.app_secret)
            self.assertEqual(sorted(e["type"] for e in self.wait_events(5)), [f"allowed-{i}" for i in range(5)])
        # A file that changes is looked at again.
        with open(self.keys.join("clients", "torn.key"), "a") as f:
            f.write("still torn")
        with self.assertLogs("zspark.zmq", "WARNING") as logs:
            self.send("allowed-again", server_key=self.server_public, client_key=self.app_secret)
            self.wait_events(6)
        self.assertEqual(len([line for line in logs.output if "skipping" in line and "torn.key" in line]), 1,
                         logs.output)

    def test_refused_handshakes_are_logged_and_counted(self):
        with self.assertLogs("zspark.zmq", "WARNING") as logs:
            self.send("stranger", server_key=self.server_public, client_key=self.stranger_secret)
            self.send("plain")
            self.send("allowed", server_key=self.server_public, client_key=self.app_secret)
            self.assertEqual([e["type"] for e in self.wait_events(1)], ["allowed"])
            connections = wait_until(
                lambda: (c := self.source_stats("zmq_bson")["connections"])["refused_handshakes"] >= 2 and c,
                10, message="two refused handshakes in /status")
        text = "\n".join(logs.output)
        self.assertRegex(text, r"zmq_bson: refused a connection from 127\.0\.0\.1: key \S+ is not in ")
        self.assertIn("does not use the socket's security mechanism", text)
        self.assertEqual([e["type"] for e in self.events()], ["allowed"])
        self.assertGreaterEqual(connections["accepted"], 3)

    def test_a_flood_of_refused_handshakes_is_logged_rate_limited(self):
        with self.assertLogs("zspark.zmq", "WARNING") as logs:
            for i in range(30):
                self.send(f"stranger-{i}", server_key=self.server_public, client_key=self.stranger_secret)
            wait_until(lambda: self.source_stats("zmq_bson")["connections"]["refused_handshakes"] >= 30, 15,
                       message="30 refused handshakes in /status")
        self.assertLessEqual(len([line for line in logs.output if "refused a connection" in line]), 10)


class LimitKeys(unittest.TestCase):
    def test_a_limit_that_would_mean_no_limit_is_refused_naming_the_key(self):
        from zspark.config import ConfigError, from_dict
        for key in ("receive_hwm", "handshake_timeout_s", "max_message_bytes"):
            with self.assertRaisesRegex(ConfigError, f"'zmq.{key}': must be more than 0"):
                from_dict({"zmq": {key: 0}})
        with self.assertRaisesRegex(ConfigError, "'zmq.heartbeat_timeout_s'"):
            from_dict({"zmq": {"heartbeat_s": 5, "heartbeat_timeout_s": 0}})
        with self.assertRaisesRegex(ConfigError, "'zmq.heartbeat_timeout_s': must be more than zmq.heartbeat_s"):
            from_dict({"zmq": {"heartbeat_s": 5, "heartbeat_timeout_s": 5}})
        self.assertEqual(from_dict({"zmq": {"heartbeat_s": 0, "heartbeat_timeout_s": 0}}).zmq.heartbeat_s, 0)


class Redaction(unittest.TestCase):
    PASSWORD = "hunter2"

    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def test_redact_masks_passwords_in_uris_and_secret_options(self):
        cases = {
            "mongodb://user:hunter2@db:27017/": "mongodb://user:***@db:27017/",
            "mongodb://user:hunt@r2@db/x": "mongodb://user:***@db/x",
            "mongodb://db/?authSource=admin&password=hunter2&w=1": "mongodb://db/?authSource=admin&password=***&w=1",
            "cannot reach mongodb+srv://u:hunter2@h: timeout": "cannot reach mongodb+srv://u:***@h: timeout",
            "mongodb://127.0.0.1:27017/?directConnection=true": "mongodb://127.0.0.1:27017/?directConnection=true",
        }
        for text, expected in cases.items():
            self.assertEqual(redact(text), expected, text)

    def test_no_password_in_validate_status_or_the_log(self):
        uri = f"mongodb://user:{self.PASSWORD}@127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=200"
        data = config_data(self.tmp.path, mongo={"enabled": True, "uri": uri},
                           kafka={"producer": {"sasl.password": "hunter3", "linger.ms": 5}})
        path = write_config(self.tmp.path, data)
        validated = zcmd("-y", path, "validate")
        self.assertEqual(validated.returncode, 0, validated.stderr)
        output = validated.stdout + validated.stderr
        for secret in (self.PASSWORD, "hunter3"):
            self.assertNotIn(secret, output)
        self.assertIn("mongodb://user:***@127.0.0.1:1/", output)
        self.assertEqual(json.loads(validated.stdout.split("\n", 1)[1])["kafka"]["producer"]["linger.ms"], 5)
        # The config file holds a password and others may read it: the warning names the file,
        # not the password.
        self.assertIn(f"{path}", validated.stderr)

        other = dict(data, mongo={"enabled": True, "uri": "mongodb://127.0.0.1:1/?password=hunter2"})
        validated = zcmd("-y", write_config(self.tmp.path, other, "other.yaml"), "validate")
        self.assertNotIn(self.PASSWORD, validated.stdout + validated.stderr)
        self.assertIn("password=***", validated.stdout)

        server = ServeProcess(path, data["http"]["port"], self.tmp.join("serve.log")).start()
        self.addCleanup(server.kill)
        status, _, body = request(data["http"]["port"], "GET", "/status")
        self.assertEqual(status, 200)
        self.assertNotIn(self.PASSWORD, body.decode())
        self.assertIn("mongodb://user:***@127.0.0.1:1/", json.loads(body)["forwarders"]["mongo"]["destination"])
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertNotIn(self.PASSWORD, server.log())
        self.assertIn("mongodb://user:***@127.0.0.1:1/", server.log())

        replayed = zcmd("-y", path, "replay", "--to", "mongo", "--timeout", "1")
        self.assertNotIn(self.PASSWORD, replayed.stdout + replayed.stderr)


if __name__ == "__main__":
    unittest.main()
