"""Child processes of `zcmd serve` (HTTP workers, forwarder processes) and the link to each.

The serving process (the journal's owner) starts each child as `python -m MODULE` (never a fork
of a gevent process) with one end of a Unix socketpair, the child's *link*, and supervises it:

    owner                                     child (MODULE's main)
    Child(name, module, on_link).start()      link, config = children.attach()
      spawns it, sends it the Config            ignores SIGINT/SIGTERM: the owner says when to stop
      on_link(link) serves its messages         dies with the owner (PR_SET_PDEATHSIG), and sees
      restarts it when it exits                 EOF on the link if the owner is gone
      stop(): "stop" message, wait, kill        ...

A child that exits while it should run is logged with its exit status (code or signal) and started
again after the one retry policy's backoff (zspark/retry.py); the backoff starts over once a child
has run for RESET_AFTER_S. `status()` is what /status and /metrics show of it.

A link carries messages: a JSON header (a dict with "kind") and an optional binary blob, framed
as u32 total length, u32 header length (big-endian), header, blob. A frame that is too large or
malformed raises LinkError; the reader of a child's messages treats its child as no more trusted
than a network peer (a bad frame closes that link, logged). The one message from owner to child
that is not JSON is the first, the Config (pickled: the owner is the child's parent and the only
other end of the socketpair).
"""
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time

import gevent
import gevent.socket
from gevent import subprocess
from gevent.lock import Semaphore

from . import sinks
from .errors import ZsparkError
from .retry import Backoff

log = logging.getLogger("zspark.children")

LINK_FD_ENV = "ZSPARK_LINK_FD"
OWNER_PID_ENV = "ZSPARK_OWNER_PID"
MAX_FRAME_BYTES = 64 * 1024**2 + 1024 * 1024  # a batch of http.max_body_bytes and its header, with room
RESET_AFTER_S = 10.0
_FRAME = FRAME = struct.Struct(">II")  # total length, header length
_PR_SET_PDEATHSIG = 1


class LinkError(ZsparkError):
    """A malformed or oversized message on a link."""


class Link:
    """Messages over a stream socket (gevent-cooperative). One greenlet reads; any may send."""

    def __init__(self, sock, max_frame=MAX_FRAME_BYTES):
        self.sock = sock
        self.max_frame = max_frame
        self._buffer = bytearray()
        # sendall yields while the socket is full: another sender must not put its frame in
        # the middle of this one.
        self._sending = Semaphore()

    def send(self, header, blob=b""):
        head = json.dumps(header, separators=(",", ":")).encode("utf-8")
        self.send_raw(head, blob)

    def send_raw(self, header_bytes, blob=b""):
        data = b"".join((_FRAME.pack(len(header_bytes) + len(blob), len(header_bytes)), header_bytes, blob))
        with self._sending:
            self.sock.sendall(data)

    def send_frames(self, parts):
        """Frames already made (FRAME-packed lengths, headers and blobs, in order) in one send."""
        data = b"".join(parts)
        with self._sending:
            self.sock.sendall(data)

    def recv(self):
        """The next message as (header, blob); raises EOFError when the other end is gone."""
        total, head_len = _FRAME.unpack(self._read(_FRAME.size))
        if total > self.max_frame or head_len > total:
            raise LinkError(f"a frame of {total} bytes (header {head_len}) on the link; at most "
                            f"{self.max_frame}")
        data = self._read(total)
        try:
            header = json.loads(data[:head_len])
        except ValueError as e:
            raise LinkError(f"a frame whose header is not JSON: {e}") from None
        if type(header) is not dict or type(header.get("kind")) is not str:
            raise LinkError("a frame whose header is not a mapping with a kind")
        return header, data[head_len:]

    def _read(self, n):
        buffer = self._buffer
        while len(buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(buffer)))
            if not chunk:
                raise EOFError("the link closed")
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Child:
    """One supervised child process: `python -m module`, restarted whenever it exits until stop()."""

    def __init__(self, name, module, config, on_link, args=(), backoff=None):
        """`on_link(link)`: run in a greenlet of its own for each start of the child, serving its
        messages until the link closes (EOFError) or a LinkError; it returns or raises then."""
        self.name = name
        self.module = module
        self.config = config
        self.on_link = on_link
        self.args = list(args)
        self.process = None
        self.link = None
        self.starts = 0
        self.last_exit = None
        self.state = "stopped"
        self._stopping = False
        self._backoff = backoff or Backoff(0.2, 10.0)
        self._greenlet = None

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    @property
    def restarts(self):
        return max(0, self.starts - 1)

    def start(self):
        """Start the child now (raises OSError if it cannot be spawned) and supervise it."""
        self._spawn()
        self._greenlet = gevent.spawn(self._supervise)
        return self._greenlet

    def status(self):
        return {"pid": self.pid, "state": self.state, "restarts": self.restarts, "last_exit": self.last_exit}

    def send(self, header, blob=b""):
        """A message to the child now; False if it is not running (between restarts)."""
        link = self.link
        if link is None:
            return False
        try:
            link.send(header, blob)
            return True
        except OSError:
            return False

    def stop(self, timeout=10.0):
        """Ask the child to stop ("stop" message), wait up to `timeout` s for it, then kill it."""
        self._stopping = True
        self._backoff.stop()
        process = self.process
        if process is not None and process.poll() is None:
            self.send({"kind": "stop"})
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %.0fs; killing it", self.name, process.pid, timeout)
                process.kill()
                process.wait()
        if self._greenlet is not None:
            self._greenlet.kill()
        if self.link is not None:
            self.link.close()
            self.link = None
        self.state = "stopped"

    def _spawn(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ, **{LINK_FD_ENV: str(theirs.fileno()), OWNER_PID_ENV: str(os.getpid())})
            self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                            pass_fds=(theirs.fileno(),), env=env, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        self.state = "running"
        self._started_at = time.monotonic()
        link = self.link = Link(gevent.socket.socket(fileno=ours.detach()))
        log.info("%s started (pid %d)%s", self.name, self.process.pid,
                 f", restart {self.restarts}" if self.restarts else "")
        # With the sink types registered beyond the built-in ones: the Config holds their
        # sections, and the child builds them (zspark/sinks/__init__.py).
        link.send({"kind": "config"}, pickle.dumps((sinks.added(), self.config)))
        gevent.spawn(self._serve_link, link)

    def _serve_link(self, link):
        try:
            self.on_link(link)
        except (EOFError, ConnectionError):  # the child is gone (a reset: it left data unread)
            pass
        except LinkError as e:
            log.error("%s (pid %s) sent a bad message, closing its link: %s", self.name, self.pid, e)
        except Exception:
            if not self._stopping:
                log.exception("%s: serving its link failed", self.name)
        finally:
            link.close()

    def _supervise(self):
        while True:
            code = self.process.wait()
            self.last_exit = exit_text(code)
            if self.link is not None:
                self.link.close()
                self.link = None
            if self._stopping:
                self.state = "stopped"
                return
            self.state = "restarting"
            if time.monotonic() - self._started_at >= RESET_AFTER_S:
                self._backoff.reset()
            delay = self._backoff.failed()
            log.error("%s (pid %d) exited (%s); starting it again in %.1fs", self.name,
                      self.process.pid, self.last_exit, delay)
            if not self._backoff.wait(delay):
                return
            try:
                self._spawn()
            except OSError as e:  # out of processes or descriptors: try again after the backoff
                log.error("%s: cannot start it again: %s", self.name, e)
                self.process = _Exited(self.process)


class _Exited:
    """A process that could not be spawned: `wait()` answers at once (the supervisor retries)."""

    def __init__(self, previous):
        self.pid = previous.pid

    def wait(self, timeout=None):
        return -1

    def poll(self):
        return -1


def exit_text(code):
    """How a child ended, for the log and /status: 'exit code 1', 'killed by SIGKILL'."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def attach():
    """In a child: its link to the owner and the Config the owner sent (the first message).

    From here on SIGINT and SIGTERM (sent to the whole process group by a terminal or a service
    manager) are ignored: the owner tells its children when to stop, after their drain. The
    child is killed if the owner dies, and the owner's end of the link closes then too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    fd = int(os.environ.pop(LINK_FD_ENV))
    link = Link(gevent.socket.socket(fileno=fd))
    header, blob = link.recv()
    if header.get("kind") != "config":
        raise LinkError(f"the owner's first message is {header.get('kind')!r}, not the config")
    # The sink types first: unpickling them imports their modules, whose classes the Config holds.
    added, config = pickle.loads(blob)
    for sink_type in added:
        if sink_type.name not in sinks.names():
            sinks.register(sink_type)
    return link, config


def _die_with_parent():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the link's EOF still tells the child
        return
    if str(os.getppid()) != os.environ.get(OWNER_PID_ENV):  # the owner died before the prctl
        os._exit(1)
