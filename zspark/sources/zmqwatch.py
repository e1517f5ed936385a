"""What a ZeroMQ source's peers do at the connection level, read from libzmq's socket monitor.

libzmq accepts, handshakes and drops connections on its own threads, out of Python's sight; its
monitor reports each step as an event, which `ConnectionWatch` (a greenlet per source) counts
into `/status` (`sources.<name>.connections`) and logs, rate-limited:

    accepted            TCP connections accepted
    open                accepted and not yet closed (handshaking or established)
    failed_handshakes   closed before the ZMTP handshake completed: no greeting within
                        zmq.handshake_timeout_s (an idle or half-sent connection), or the peer left
    refused_handshakes  handshakes refused: a client key not in zmq.curve_authorized_keys (ZAP),
                        a peer without CURVE on a CURVE socket, a CURVE peer with the wrong server key

What the monitor cannot tell apart: a connection that libzmq drops for a frame over the hard limit
(4 x zmq.max_message_bytes), or for missed heartbeats, closes like one the peer closed itself;
a greeting that is not ZMTP at all (an HTTP request) is closed without a handshake event. Those
count only in `accepted` and leave `open`. The monitor gives no peer address (only the bound
endpoint); the ZAP handler logs the address of the refusals it decides (sources/curve.py).
"""
import logging

import gevent
import zmq.green as zmq
from zmq.utils.monitor import recv_monitor_message

from ..metrics import RateLimitedLog

log = logging.getLogger("zspark.zmq")

EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

_PROTOCOL_ERRORS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not use the socket's security "
                                                "mechanism (a plain client on a CURVE socket?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE cryptographic error (a client with the wrong "
                                           "server key?)",
}


class ConnectionCounts:
    def __init__(self):
        self.accepted = 0
        self.closed = 0
        self.failed_handshakes = 0
        self.refused_handshakes = 0

    def as_dict(self):
        return {"accepted": self.accepted, "open": self.accepted - self.closed,
                "failed_handshakes": self.failed_handshakes,
                "refused_handshakes": self.refused_handshakes}


class ConnectionWatch:
    """Count and log the connection events of `sock` (a bound, not yet bound, zmq.green socket)."""

    def __init__(self, name, sock, counts):
        self.name = name
        self.counts = counts
        self._socket = sock
        self._monitor = sock.get_monitor_socket(EVENTS)
        self._greenlet = None
        self._warn = RateLimitedLog(log)
        self._info = RateLimitedLog(log, level=logging.INFO)

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self._greenlet

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)

    def _run(self):
        while True:
            self._note(recv_monitor_message(self._monitor))

    def _note(self, message):
        event, value = message["event"], message["value"]
        endpoint = message["endpoint"].decode("utf-8", "replace")
        c = self.counts
        if event == zmq.EVENT_ACCEPTED:
            c.accepted += 1
        elif event == zmq.EVENT_DISCONNECTED:
            c.closed += 1
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            c.failed_handshakes += 1
            self._info("ZeroMQ %s: a connection to %s closed before completing its handshake "
                       "(no greeting within zmq.handshake_timeout_s, or the peer left)",
                       self.name, endpoint)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            c.refused_handshakes += 1  # the ZAP handler logged it, with the peer's address
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            c.refused_handshakes += 1
            why = _PROTOCOL_ERRORS.get(value, f"ZMTP protocol error {value:#x}")
            self._warn("ZeroMQ %s: refused a connection to %s: %s", self.name, endpoint, why)
