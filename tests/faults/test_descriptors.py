"""Running out of descriptors: a server started under `ulimit -n 1024` (soft and hard, so it
cannot raise its own limit) while 1,100 idle connections are held to its HTTP port, or to a
ZeroMQ port, stays up, answers /imok and new requests, and delivers every acknowledged event to
Kafka and MongoDB; its PUB forwarder keeps running. Journal segments are small so that the
forwarders open new ones while descriptors are scarce.

(Found by a probe: 1,100 idle connections plus one event stopped the whole process, because the
PUB forwarder could not open a segment, died of EMFILE, and took the server with it.)"""
import resource
import socket
import unittest

import gevent
from gevent.pool import Pool

from ..appliance import Services, message_id
from ..support import request, wait_until
from .faultcase import FaultCase, report

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

NOFILE = 1024
IDLE = 1100
EVENTS = 300  # acknowledged over HTTP while the idle connections are held


def hold_connections(port, count):
    """Open `count` TCP connections to `port` that send nothing; return the sockets that
    connected (the server may close or refuse some: that is its right)."""
    held = []

    def connect(_):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            pass

    Pool(100).map(connect, range(count))
    return held


def release(sockets):
    for s in sockets:
        s.close()


class Descriptors(FaultCase):
    services = SERVICES

    def setUp(self):
        super().setUp()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4 * IDLE:  # this process holds the idle connections
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * IDLE), hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def serve_limited(self, **sections):
        self.configure(kafka={}, mongo={}, pub={}, journal={"segment_bytes": 64 * 1024}, **sections)
        return self.serve(module="tests.faults.limited_serve", env={"ZSPARK_TEST_NOFILE": str(NOFILE)})

    def imok(self):
        try:
            return request(self.port, "GET", "/imok", timeout=2)[0] == 200
        except OSError:
            return False

    def deliver_under_pressure(self, server, port):
        """Under mixed load, hold IDLE idle connections to `port`: the load goes on while
        descriptors are scarce, then the server answers /imok and takes EVENTS more events over
        HTTP, and delivers every event it acknowledged; it never stops."""
        load = self.load("fd", workers=2, zmq_pause=0.05)
        wait_until(lambda: len(load.http.acked) >= 50, timeout=60, message="50 events acknowledged")
        held = hold_connections(port, IDLE)
        report(f"{self.name}: {len(held)} of {IDLE} idle connections to port {port} connected")
        gevent.sleep(3)  # the load goes on (ZeroMQ on its open connections) while they are held
        wait_until(self.imok, timeout=90, interval=0.2, message="/imok answering with the connections held")
        before = len(load.http.acked)
        wait_until(lambda: len(load.http.acked) >= before + EVENTS, timeout=120, interval=0.1,
                   message=f"{EVENTS} more events acknowledged over HTTP")
        load.finish(timeout=60)
        self.assertIsNone(server.proc.poll(), f"the server stopped:\n{server.log()[-3000:]}")
        status = self.wait_delivered(["kafka", "mongo", "pub"], timeout=120)
        self.assertEqual({f["state"] for f in status["forwarders"].values()}, {"running"}, status["forwarders"])
        self.assert_no_damage(status)  # offsets refused while a segment could not be opened are no loss
        release(held)

        acknowledged = load.acknowledged()
        journal = self.journal_ids()
        self.assertFalse(acknowledged - set(journal), "acknowledged events missing in the journal")
        ids = {journal[uid] for uid in acknowledged}
        messages = self.read_kafka([self.topic, self.default_topic], ids)
        self.assertFalse(ids - {m for m in map(message_id, messages)}, "acknowledged events missing in Kafka")
        mongo = self.mongo_ids()
        self.assertFalse(ids - set(mongo), "acknowledged events missing in MongoDB")
        self.assertEqual(len(mongo), len(set(mongo)), "MongoDB holds an event twice")
        self.assertIsNone(server.proc.poll(), "the server stopped")
        self.http_counts = self.status()["sources"]["http"]["connections"]
        self.stop(server)
        log = server.log()
        self.assertIn(f"open files limit {NOFILE}", log)
        self.assertNotIn("died unexpectedly", log)
        self.assertNotIn("Traceback", log)
        return acknowledged, load, held

    def test_idle_http_connections_do_not_stop_the_server(self):
        server = self.serve_limited()
        self.check(*self.deliver_under_pressure(server, self.port))

    def test_idle_zeromq_connections_do_not_stop_the_server(self):
        # Raw TCP connections that never send ZeroMQ's greeting: until the server drops them
        # (the handshake interval), they hold every descriptor the process has left.
        server = self.serve_limited()
        port = int(self.data["zmq"]["bson_bind"].rsplit(":", 1)[1])
        self.check(*self.deliver_under_pressure(server, port))

    def check(self, acknowledged, load, held):
        self.summary(sent=len(load.sent_uids()), acknowledged=len(acknowledged),
                     delivered=len(acknowledged), duplicated=0, rejected=load.rejected, held=len(held),
                     http=self.http_counts)

class ConnectionCapTest(unittest.TestCase):
    def test_two_http_listeners_share_the_descriptors_left_for_connections(self):
        from zspark.descriptors import RESERVED, connection_cap
        one = connection_cap(10000, NOFILE, also_held=64)
        two = connection_cap(10000, NOFILE, also_held=64, listeners=2)
        self.assertEqual(NOFILE - RESERVED - 64, one)
        self.assertLessEqual(2 * (two + 64), NOFILE - RESERVED)  # http.pixel.bind's listener too
        self.assertEqual(300, connection_cap(300, NOFILE, also_held=64, listeners=2))


if __name__ == "__main__":
    unittest.main()
