"""Reading a request body within the process's budgets of memory and time.

    InflightBudget   the bytes of request bodies held in memory at once, process-wide
                     (`http.max_inflight_bytes`); each request holds its share in a `Held`
    read_body        the body of one request, read from `wsgi.input` in bounded chunks under
                     one deadline for the whole body (`http.body_timeout_s`), inflated on the fly
                     when it is gzip, charged to the budget as it grows
    Gunzip           gzip decoding linear in its input, however many members it holds

What is charged is what is held: a plain body's bytes as they arrive (its whole Content-Length,
when it has one, up front: a body that cannot fit is refused before a byte of it is read); a
gzip body's inflated bytes (the compressed bytes are inflated chunk by chunk and dropped). A
request alone is always admitted, so a body within `http.max_body_bytes` can always get in once
the others are done. The events decoded from a body are not charged: they live only while their
request is answered, and `http.max_body_bytes` bounds them per request.

A plain body the server already holds whole in its read buffer (environ[BODY_IN_HAND], set by
httpserver.RequestHandler: the common small POST) is read without arming the deadline, since
reading it cannot wait.

A body refused before its end is not read further: the server answers it with `Connection:
close` (httpserver.RequestHandler), where pywsgi would read and discard the rest after the answer
for as long as the client cares to send it.
"""
import zlib

import gevent

from .httperrors import HttpError

CHUNK = 64 * 1024  # read from the socket, and fed to the decoder, at most this much at a time
FIRST_SLICE = 64  # a gzip member is first fed this many bytes, then twice as many each time
BODY_IN_HAND = "zspark.body_in_hand"  # environ: True if wsgi.input's next bytes hold the whole body


class OverBudget(Exception):
    """Holding more would take the process over its in-flight budget."""


class InflightBudget:
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.used = 0  # bytes held by requests now
        self.peak = 0

    def hold(self):
        """A request's share, empty until it grows; release it when the request is done."""
        return Held(self)


class Held:
    """What one request holds of the budget. A context manager: released on the way out."""

    __slots__ = ("_budget", "bytes")

    def __init__(self, budget):
        self._budget = budget
        self.bytes = 0

    def grow_to(self, nbytes):
        """Hold `nbytes` in all (never less than now); OverBudget if the budget cannot, unless
        this request would be the only one holding anything."""
        need = nbytes - self.bytes
        if need <= 0:
            return
        budget = self._budget
        if budget.used + need > budget.max_bytes and budget.used > self.bytes:
            raise OverBudget()
        budget.used += need
        budget.peak = max(budget.peak, budget.used)
        self.bytes = nbytes

    def release(self):
        self._budget.used -= self.bytes
        self.bytes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def read_body(environ, limit, timeout_s, held, retry_after_s):
    """The body of the request in `environ` (bytes, inflated when it is gzip), at most `limit`
    bytes before and after gunzip, all of it within `timeout_s` seconds; HttpError otherwise
    (the server closes the connection of a body left unread: httpserver.RequestHandler)."""
    return _read(environ, environ["wsgi.input"], limit, timeout_s, held, retry_after_s)


def _too_large(limit):
    return HttpError(413, f"the body is larger than {limit} bytes")


def _read(environ, stream, limit, timeout_s, held, retry_after_s):
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        try:
            length = int(length)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length > limit:
            raise _too_large(limit)
    else:
        length = None  # chunked, or none at all
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        decoder = Gunzip(limit)
    elif encoding in ("identity", ""):
        decoder = None
    else:
        raise HttpError(415, f"unsupported Content-Encoding {encoding!r}: use gzip or none")

    def charge(nbytes):
        """Hold `nbytes` of the budget in all for this request, else the 503."""
        try:
            held.grow_to(nbytes)
        except OverBudget:
            raise HttpError(503, "the server holds as many request bodies in memory as it may "
                                 "(http.max_inflight_bytes); send again later",
                            {"Retry-After": str(retry_after_s), "Connection": "close"}) from None  # shed the load

    chunks = []
    received = 0
    read_whole = False
    in_hand = decoder is None and length is not None and environ.get(BODY_IN_HAND)
    deadline = None if in_hand else gevent.Timeout(timeout_s)
    if deadline is not None:
        deadline.start()
    try:
        while True:
            want = CHUNK if length is None else min(CHUNK, length - received)
            want = min(want, limit + 1 - received)  # one byte over the limit says it all
            if want <= 0:
                break
            # What this request holds once the read is in hand (a gzip body's compressed bytes
            # are inflated and dropped at once: it holds what it inflated to, charged below).
            charge(max(length or 0, received + want if decoder is None else decoder.size))
            data = stream.read(want)
            if not data:
                break
            received += len(data)
            if received > limit:
                raise _too_large(limit)
            if decoder is None:
                chunks.append(data)
            else:
                decoder.feed(data)
                charge(max(length or 0, decoder.size))  # a few KiB of gzip can be the whole limit
                gevent.sleep(0)  # inflating is the costly part: let other requests in between
        read_whole = True
    except gevent.Timeout as t:
        if t is not deadline:
            raise
        raise HttpError(408, f"the body did not arrive within {timeout_s:g} s (http.body_timeout_s)") from None
    except (OSError, ValueError) as e:
        raise HttpError(400, f"could not read the body: {e}") from None
    finally:
        if deadline is not None:
            deadline.close()
        if not read_whole and decoder is not None:
            # Refused: let go of its output now (the frame the error refers to would keep it
            # until the cycle collector runs, and sixty refusals would hold sixty bodies).
            decoder.drop()
    if length is not None and received < length:
        raise HttpError(400, f"the body ended after {received} of its {length} bytes (Content-Length)")
    if decoder is not None:
        return decoder.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Gunzip:
    """Inflate a gzip stream fed in pieces: one member or several back to back.

    Every input byte is handed to zlib a bounded number of times: a member is fed a small slice
    first and slices twice as large after that, and the next member starts where zlib says the
    last one ended (never by handing zlib the whole rest of the body again)."""

    def __init__(self, limit):
        self.limit = limit
        self.size = 0  # bytes inflated so far
        self._out = []
        self._members = 0  # members complete
        self._new_member()

    def _new_member(self):
        self._decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._slice = FIRST_SLICE
        self._started = False  # fed any byte of this member

    def feed(self, data):
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            piece = view[pos:pos + self._slice]
            try:
                # Never inflate more than the limit allows (0 would mean no limit; size <= limit here).
                out = self._decompressor.decompress(piece, self.limit + 1 - self.size)
            except zlib.error as e:
                raise HttpError(400, f"the gzip body is damaged: {e}") from None
            self._started = True
            if out:
                self.size += len(out)
                self._out.append(out)
            if self.size > self.limit or self._decompressor.unconsumed_tail:
                raise HttpError(413, f"the body is larger than {self.limit} bytes after gunzip")
            if self._decompressor.eof:
                pos += len(piece) - len(self._decompressor.unused_data)
                self._members += 1
                self._new_member()
            else:
                pos += len(piece)
                self._slice = min(self._slice * 2, CHUNK)

    def drop(self):
        """Let go of what was inflated: the body is refused."""
        self._out = []
        self._decompressor = None

    def finish(self):
        """The inflated body; HttpError if the stream ends inside a member (or holds none)."""
        if self._started or not self._members:
            raise HttpError(400, "the gzip body is truncated")
        return self._out[0] if len(self._out) == 1 else b"".join(self._out)
