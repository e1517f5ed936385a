"""Which hot paths run compiled (zspark/_native.c, built by setup.py) and which in Python.

Every compiled function recognises only a common case that the pure-Python code already handles
and hands everything else back to it, so the Python code is both the reference the compiled code
is held to (tests/test_native.py, tests/fuzz/) and the fallback. `ZSPARK_PURE=1` in the
environment runs the Python code alone; so does a checkout whose module was not built (with a
warning at start, see `describe`).

    plain_bson_frames(frames, limits[, fields])
                                        for each ZeroMQ BSON frame, its top-level string fields
                                        (True if not `fields`) if event.sender_fields keeps it
                                        exactly as sent, else None; None instead of the list
                                        when nothing is compiled
    plain_events(raws, limits)          for each decoded JSON event, 1 if sender_fields keeps
                                        it as it is, else 0 (bytes); None when not compiled
    json_fields(payloads, names)        for each journal payload, (json, *values) with json
                                        codec.event_json_bytes(codec.decode_event(payload)) and
                                        the top-level fields `names` (a tuple of at most 8 str)
                                        asks for, each a str, a datetime as int milliseconds
                                        since the epoch, or None where absent; None instead of
                                        the tuple where Python must decode it (a payload not well
                                        formed, a type or field value other than the common
                                        ones, a repeated key...: _native.c says which); None
                                        instead of the list when nothing is compiled
    ndjson_frames(body, names)          for each line of an NDJSON body, the BSON document
                                        pymongo encodes of the dict json decodes from it (the
                                        sender's fields, unvalidated), if every line is a JSON
                                        object of the common kind, with no top-level key among
                                        `names` (a tuple of bytes); else None (Python decodes
                                        the lines); None when nothing is compiled
    frame_receiver()(sock, max_frames)  up to max_frames messages waiting on a pyzmq socket,
                                        each as bytes, taken without waiting (what the plain
                                        recv(NOBLOCK, copy=True) loop of receive_frames_python
                                        gives) in one call into the libzmq pyzmq loaded
    `compiled(name, reference)`         the others: journal.record.frame_all and marks,
                                        journal.codec's splicing and batch encoding,
                                        sources.httpframing's parse_head of common heads
"""
import errno
import os
import sys

try:
    from . import _native
except ImportError as e:  # not built: a checkout run without `pip install`
    _native, _MISSING = None, str(e)
else:
    _MISSING = None

PURE = os.environ.get("ZSPARK_PURE", "") not in ("", "0")
COMPILED = _native is not None and not PURE


def compiled(name, reference):
    """The compiled function `name` where compiled paths are in use, else `reference`, the
    pure-Python function it must equal."""
    return getattr(_native, name) if COMPILED else reference


def describe():
    """One line for the start-up log: what runs compiled, and why not if nothing does."""
    if COMPILED:
        return "compiled hot paths in use (zspark._native)"
    if PURE:
        return "pure Python hot paths (ZSPARK_PURE is set)"
    return f"pure Python hot paths: the compiled module is missing ({_MISSING}); reinstall zspark to build it"


def plain_events(raws, limits):
    if not COMPILED:
        return None
    return _native.plain_events(raws, *_c_limits(limits))


# The top-level fields plain_bson_frames checks but does not hand over.
PLAIN_FRAME_OMITS = ("context", "extra")


def _c_limits(limits):
    """The limits as C longs: any larger is as good as unlimited."""
    return (min(limits.max_string_bytes, sys.maxsize), min(limits.max_depth, sys.maxsize),
            min(limits.max_fields, sys.maxsize))


JSON_FIELDS_MAX_NAMES = 8  # json_fields takes at most this many names (_native.c)


def json_fields(payloads, names, times_before=JSON_FIELDS_MAX_NAMES):
    if not COMPILED:
        return None
    return _native.json_fields(payloads, names, times_before)


def receive_frames_python(sock, max_frames):
    """The reference of receive_frames: the frames waiting on `sock` (a pyzmq socket), at most
    `max_frames`, from recv(NOBLOCK, copy=True). The plain class's recv, not zmq.green's: that
    one re-reads the socket's event state (a getsockopt, a syscall in libzmq) after every frame,
    20x the cost of the recv itself; the caller polls before waiting again, which reads it."""
    import zmq
    frames = []
    recv = zmq.Socket.recv
    try:
        while len(frames) < max_frames:
            frames.append(recv(sock, zmq.NOBLOCK, copy=True))
    except zmq.Again:
        pass
    return frames


def _receive_frames_compiled(sock, max_frames):
    import zmq
    if sock.closed:
        raise zmq.ZMQError(zmq.ENOTSOCK)
    frames, error = _native.receive_frames(sock.underlying, max_frames)
    if error and error not in (errno.EAGAIN, errno.EINTR) and not frames:
        raise zmq.ZMQError(error)
    return frames


def frame_receiver():
    """receive_frames: compiled where the libzmq pyzmq loaded is found, else the reference."""
    return _receive_frames_compiled if COMPILED and _found_libzmq() else receive_frames_python


def _found_libzmq():
    """True once _native calls the libzmq that pyzmq loaded, found in this process's memory map
    (the wheel's bundled copy or the system's, whichever pyzmq links)."""
    import zmq
    if _native is None or zmq.zmq_version_info() < (4, 0):  # zmq_msg_t has been 64 bytes since 4.0
        return False
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps
                     if "libzmq" in line and len(line.split(None, 5)) == 6}
    except OSError:
        return False
    return any(_native.use_libzmq(path) for path in sorted(paths) if path.startswith("/"))


def ndjson_frames(body, names=()):
    if not COMPILED:
        return None
    return _native.ndjson_frames(body, names)


def plain_bson_frames(frames, limits, fields=True):
    if not COMPILED:
        return None
    return _native.plain_bson_frames(frames, *_c_limits(limits), fields)
