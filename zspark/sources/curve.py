"""ZeroMQ CURVE for the PULL sockets: the server's key pair, and a ZAP handler that admits only the
clients whose public keys are in the `zmq.curve_authorized_keys` directory.

Keys are pyzmq certificate files, as `zcmd keygen` writes them: `NAME.key` holds the public key
(safe to copy around), `NAME.key_secret` the pair (keep it private). libzmq asks the ZAP handler
(RFC 27: a REP socket at inproc://zeromq.zap.01 in the sockets' own context) about every new
connection; this one is a greenlet, and it reads the authorized directory at each request, so a
key added or removed there counts from the client's next connection, without a restart. A client
that is refused gets no connection at all: nothing it sends arrives; the refusal is logged
(rate-limited) with the peer's address and counted by the socket's monitor (sources/zmqwatch.py).

A file in that directory that holds no usable public key (not a certificate, a torn copy, a key
that is not 40 characters of Z85, not a regular file) is skipped with a warning naming it, once
for each version of the file, and the other keys go on admitting their clients.
"""
import logging
import os
import stat

import gevent
import zmq.green as zmq
from zmq.auth import load_certificate
from zmq.utils import z85

from .. import blocking
from ..errors import KeyFileError
from ..metrics import RateLimitedLog

log = logging.getLogger("zspark.zmq")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = "zspark"
KEY_SUFFIX = ".key"  # the public key files of the authorized directory (as czmq and pyzmq do)
MAX_KEY_FILE_BYTES = 64 * 1024  # a certificate is a few hundred bytes


class CurveError(KeyFileError):
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


def authorized_keys(directory, cache=None):
    """(keys, problems): the z85 public keys of the `*.key` files in `directory`, and for each
    file that holds none, (path, its stat signature, why). CurveError if the directory itself
    cannot be read. `cache` (a dict, kept by the caller) holds each file's key by its stat
    signature: a file is parsed again only once it changed, so that a handshake costs a listing
    and a stat per file, not a parse per file (anyone with the server's public key can ask)."""
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(KEY_SUFFIX))
    except OSError as e:
        raise CurveError(f"cannot read the authorized client keys in {directory} "
                         f"(config key zmq.curve_authorized_keys): {e.strerror or e}") from None
    keys, problems = set(), []
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError as e:
            problems.append((path, None, e.strerror or str(e)))
            continue
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = cache.get(path) if cache is not None else None
        if known is None or known[0] != signature:  # new or changed: parse it (once)
            try:
                known = (signature, _public_key_file(path, st), None)
            except (OSError, ValueError) as e:
                known = (signature, None, getattr(e, "strerror", None) or str(e))
            if cache is not None:
                cache[path] = known
        _, key, why = known
        if key is None:
            problems.append((path, signature, why))
        else:
            keys.add(key)
    if cache is not None and len(cache) > len(names):
        for path in set(cache) - {os.path.join(directory, name) for name in names}:
            del cache[path]
    return keys, problems


def _public_key_file(path, st):
    """The z85 public key in the certificate file at `path`; ValueError if it holds none."""
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")  # a FIFO would block the reading thread
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{st.st_size} bytes, not a key file")
    try:
        public, _ = load_certificate(path)
    except ValueError:
        raise ValueError("no public-key line: not a certificate from `zcmd keygen`") from None
    try:
        if len(public) != 40 or len(z85.decode(public)) != 32:
            raise ValueError
    except Exception:  # z85.decode of bytes outside its alphabet raises more than ValueError
        raise ValueError("its public-key is not a 40-character Z85 CURVE key") from None
    return public


def _keys_or_error(directory, cache):
    """authorized_keys() for the thread pool: an error comes back as a value, not a traceback."""
    try:
        return authorized_keys(directory, cache)
    except CurveError as e:
        return e


def make_server(sock, public, secret, domain=DOMAIN):
    """Make `sock` (before it binds) a CURVE server that consults the ZAP handler; `domain` (the
    source's name) names it in the handler's log lines."""
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = domain.encode()


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
        self._error = RateLimitedLog(log, level=logging.ERROR)
        self._reported = set()  # (path, stat signature) of bad key files already warned about
        self._parsed = {}  # path -> (stat signature, key, why not): authorized_keys' cache (one request at a time)
        self._note_problems(authorized_keys(directory)[1])  # an unreadable directory fails the start

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
        version, request_id, domain, address, _identity, mechanism = request[:6]
        key = request[6] if len(request) > 6 else b""
        where = domain.decode("ascii", "replace")
        who = address.decode("ascii", "replace")
        if mechanism != b"CURVE" or len(key) != 32:
            return self._refuse(request_id, where, who, f"mechanism {mechanism.decode('ascii', 'replace')}")
        public = z85.encode(key)
        found = blocking.call(_keys_or_error, self.directory, self._parsed)  # disk: off the loop
        if isinstance(found, CurveError):
            self._error("%s", found)
            return self._refuse(request_id, where, who, "the authorized keys cannot be read")
        keys, problems = found
        self._note_problems(problems)
        if public not in keys:
            return self._refuse(request_id, where, who, f"key {public.decode()} is not in {self.directory}")
        return [version, request_id, b"200", b"OK", public, b""]

    def _note_problems(self, problems):
        """Warn once about each bad key file (again if it changes), rate-limited."""
        for path, signature, why in problems:
            if (path, signature) not in self._reported:
                if len(self._reported) > 10000:  # a directory churning bad files: forget, warn anew
                    self._reported.clear()
                self._reported.add((path, signature))
                self._warn("ZeroMQ: skipping %s in zmq.curve_authorized_keys: %s", path, why)

    def _refuse(self, request_id, where, who, why):
        self.refused += 1
        self._warn("ZeroMQ %s: refused a connection from %s: %s", where, who, why)
        return [b"1.0", request_id, b"400", b"not authorized", b"", b""]
