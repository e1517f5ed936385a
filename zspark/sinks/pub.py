"""The ZeroMQ PUB sink: republish journaled events for live subscribers (Sparkngin's "publish via
ZeroMQ"). Each message has two frames: the topic (`topic` field, else the type) and the event as
JSON, so subscribers filter by topic prefix:

    sub.setsockopt(zmq.SUBSCRIBE, b"web")

PUB never waits for subscribers: an event is "delivered" once handed to ZeroMQ, and subscribers
that are absent or too slow miss it. It is a live view, not a delivery guarantee.
"""
import zmq.green as zmq

from ..errors import TransientDeliveryError
from ..journal.codec import event_json_bytes


def build(section, context):
    """The ZeroMQ PUB sink for the registry (zspark/sinks/__init__.py)."""
    return PubSink(section, linger_s=context.linger_s)


class PubSink:
    name = "pub"

    def __init__(self, config, context=None, linger_s=0.0):
        """`linger_s`: how long close() lets the messages still queued leave (0: drop them)."""
        self.address = config.bind
        self.linger_s = linger_s
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.address)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def describe(self):
        return f"ZeroMQ PUB {self.endpoint}"

    def send(self, items):
        try:
            for _, event in items:
                topic = event.get("topic") or event.get("type") or ""
                self._socket.send_multipart([topic.encode("utf-8"), event_json_bytes(event)])
        except zmq.ZMQError as e:
            raise TransientDeliveryError(f"ZeroMQ PUB: {e}") from e
        return []

    def healthcheck(self, timeout):
        """Nothing to reach: PUB has no peer that must answer."""

    def close(self, abandon=False):
        if self.linger_s:  # abandoning too: what was handed to ZeroMQ counts as sent
            self._socket.setsockopt(zmq.LINGER, int(self.linger_s * 1000))
        self._socket.close()
