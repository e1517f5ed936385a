"""ZeroMQ CURVE for the PULL sockets: the server's key pair, and a ZAP handler that admits only the
clients whose public keys are in the `zmq.curve_authorized_keys` directory.

Keys are pyzmq certificate files, as `zcmd keygen` writes them: `NAME.key` holds the public key
(safe to copy around), `NAME.key_secret` the pair (keep it private). libzmq asks the ZAP handler
(RFC 27: a REP socket at inproc://zeromq.zap.01 in the sockets' own context) about every new
connection; this one is a greenlet, and it reads the authorized directory at each request, so a
key added or removed there counts from the client's next connection, without a restart. A client
that is refused gets no connection at all: nothing it sends arrives.
"""
import logging
import os

import gevent
from gevent.hub import get_hub
import zmq.green as zmq
from zmq.auth import load_certificate, load_certificates
from zmq.utils import z85

from ..metrics import RateLimitedLog

log = logging.getLogger("zspark.zmq")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = "zspark"


class CurveError(Exception):
    """A key file that cannot be used; the message names the config key."""


def load_secret_key(path, key="zmq.curve_secret_key"):
    """(public, secret) z85 keys from a `.key_secret` file."""
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read a CURVE key pair from {path} (config key {key}): {e}") from None
    if secret is None:
        raise CurveError(f"{path} holds only a public key; config key {key} needs the secret key "
                         f"file (NAME.key_secret, made by `zcmd keygen`)")
    return public, secret


def load_public_key(value):
    """A z85 public key: the key itself (40 characters) or a `.key`/`.key_secret` file."""
    if len(value) == 40 and not os.path.exists(value):
        return value.encode("ascii")
    try:
        public, _ = load_certificate(value)
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read a CURVE public key from {value}: {e}") from None
    return public


def authorized_keys(directory):
    """The z85 public keys of the certificate files in `directory`."""
    try:
        return set(load_certificates(directory))
    except (OSError, ValueError) as e:
        raise CurveError(f"cannot read the authorized client keys in {directory} "
                         f"(config key zmq.curve_authorized_keys): {e}") from None


def _keys_or_error(directory):
    """authorized_keys() for the thread pool: an error comes back as a value, not a traceback."""
    try:
        return authorized_keys(directory)
    except CurveError as e:
        return e


def make_server(sock, public, secret):
    """Make `sock` (before it binds) a CURVE server that consults the ZAP handler."""
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = DOMAIN.encode()


def make_client(sock, server_public, client_public, client_secret):
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


class ZapHandler:
    """Admit CURVE clients whose public key is in `directory`; refuse everything else."""

    def __init__(self, context, directory):
        self.directory = directory
        self.refused = 0
        self._socket = context.socket(zmq.REP)
        self._socket.linger = 0
        self._greenlet = None
        self._warn = RateLimitedLog(log)
        authorized_keys(directory)  # fail at start, not at the first connection

    def start(self):
        self._socket.bind(ZAP_ENDPOINT)
        self._greenlet = gevent.spawn(self._run)
        return self._greenlet

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()
        self._socket.close()

    def _run(self):
        while True:
            request = self._socket.recv_multipart()
            self._socket.send_multipart(self._answer(request))

    def _answer(self, request):
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        key = request[6] if len(request) > 6 else b""
        who = address.decode("ascii", "replace")
        if mechanism != b"CURVE" or len(key) != 32:
            return self._refuse(request_id, who, f"mechanism {mechanism.decode('ascii', 'replace')}")
        public = z85.encode(key)
        keys = get_hub().threadpool.apply(_keys_or_error, (self.directory,))  # disk: off the loop
        if isinstance(keys, CurveError):
            log.error("%s", keys)
        allowed = not isinstance(keys, CurveError) and public in keys
        if not allowed:
            return self._refuse(request_id, who, f"key {public.decode()} is not in {self.directory}")
        return [version, request_id, b"200", b"OK", public, b""]

    def _refuse(self, request_id, who, why):
        self.refused += 1
        self._warn("ZeroMQ: refused a connection from %s: %s", who, why)
        return [b"1.0", request_id, b"400", b"not authorized", b"", b""]
