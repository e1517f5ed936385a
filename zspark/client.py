"""ZSparkClient: send events to zspark over ZeroMQ PUSH; a drop-in for Zarkov's ZarkovClient.

    from zspark.client import ZSparkClient
    client = ZSparkClient("tcp://127.0.0.1:6543")
    client.event("page_view", {"user": "rick", "path": "/"})
    client.event("signup", {"user": "rick"}, extra={"plan": "pro"}, topic="web", level="info")

PUSH has no acknowledgement: `event` returns once ZeroMQ has queued the frame, not once zspark has
journaled it. Frames are BSON by default (connect to zspark's BSON socket, 6543); pass
`format="json"` to talk to the JSON socket (6544).

With CURVE on the server (`zmq.curve_secret_key`), pass its public key and this client's key pair,
both files made by `zcmd keygen` (the client's `.key` must be in the server's
`zmq.curve_authorized_keys` directory):

    ZSparkClient(addr, server_key="keys/server.key", client_key="keys/client.key_secret")
"""
import datetime
import json

import bson
import zmq

from .journal.codec import to_json_value
from .sources.curve import load_public_key, load_secret_key, make_client


class ZSparkClient:
    def __init__(self, addr, context=None, format="bson", linger_ms=None, server_key=None, client_key=None):
        if format not in ("bson", "json"):
            raise ValueError("format must be 'bson' or 'json'")
        if bool(server_key) != bool(client_key):
            raise ValueError("CURVE needs both server_key (the server's public key) and client_key "
                             "(this client's .key_secret file)")
        self.addr = addr
        self.format = format
        self._context = context or zmq.Context.instance()
        self._sock = self._context.socket(zmq.PUSH)
        if linger_ms is not None:
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        if server_key:
            public, secret = load_secret_key(client_key, key="client_key")
            make_client(self._sock, load_public_key(server_key), public, secret)
        self._sock.connect(addr)

    def event(self, type, context=None, extra=None, **fields):
        """Send one event; `fields` are the other event fields (level, topic, env, stimestamp...)."""
        doc = dict(fields, type=type, context=context if context is not None else {})
        if extra is not None:
            doc["extra"] = extra
        self.send(doc)

    def event_noval(self, type, context=None, extra=None, **fields):
        """Send an event zspark stores as it is, without validating its fields (Zarkov's)."""
        doc = dict(fields, type=type, context=context if context is not None else {})
        doc.setdefault("timestamp", datetime.datetime.now(datetime.timezone.utc))
        if extra is not None:
            doc["extra"] = extra
        self._command("event_noval", **doc)

    def _command(self, cmd, **kw):
        self.send(dict(kw, **{"$command": cmd}))

    def send(self, doc):
        """Send one document as it is."""
        if self.format == "bson":
            frame = bson.encode(doc)
        else:
            frame = json.dumps(doc, default=to_json_value).encode("utf-8")
        self._sock.send(frame)

    def close(self, linger_ms=None):
        self._sock.close(linger=linger_ms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


ZarkovClient = ZSparkClient
