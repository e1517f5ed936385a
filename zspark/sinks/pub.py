"""The ZeroMQ PUB sink: republish journaled events for live subscribers (Sparkngin's "publish via
ZeroMQ"). Each message has two frames: the topic (`topic` field, else the type) and the event as
JSON, so subscribers filter by topic prefix:

    sub.setsockopt(zmq.SUBSCRIBE, b"web")

PUB never waits for subscribers: an event is "delivered" once handed to ZeroMQ, and subscribers
that are absent or too slow miss it. It is a live view, not a delivery guarantee.
"""
import zmq.green as zmq

from ..journal.codec import event_json_bytes


class PubSink:
    name = "pub"

    def __init__(self, config, context=None):
        self.address = config.bind
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.address)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def describe(self):
        return f"ZeroMQ PUB {self.endpoint}"

    def send(self, items):
        for _, event in items:
            topic = event.get("topic") or event.get("type") or ""
            self._socket.send_multipart([topic.encode("utf-8"), event_json_bytes(event)])
        return []

    def close(self):
        self._socket.close()
