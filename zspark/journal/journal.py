"""The journal's writing side: group-committed appends, recovery at open, size cap, retention.

Appends from any number of greenlets are gathered into one batch; a single flusher greenlet
writes each batch with one `write` and (per sync policy) one `fsync`, both in gevent's thread
pool, and only then wakes the appenders. So an append returns only once its records are durable:

    always  every batch is fsynced as soon as it is written (group commit, no waiting)
    batch   fsync at most every `sync_interval` seconds, covering everything written since
    never   written to the OS without fsync: survives a crash of zspark, not of the machine

Readers (`reader()`) see only records that are durable under the policy, so an offset a forwarder
has seen can never be reused after a crash.

At open, the last segment is scanned: a torn record at its end is cut off and logged; damaged
records before intact ones are left for readers to skip. One process writes a journal at a time
(an exclusive lock on `.lock`).

The directory and everything in it are checked at open (files.py: owner-only, nothing writable by
others, no symbolic links); the journal keeps a descriptor of the directory and opens, creates and
deletes its segments and `.lock` relative to it, never following a link.
"""
import bisect
import errno
import fcntl
import logging
import os
import time

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from .. import blocking
from ..errors import JournalError
from ..metrics import RateLimitedLog
from . import files, record
from .cursor import Cursor, read_cursor, read_cursors
from .damage import Damage
from .index import SPACING, OffsetIndex
from .reader import DurableEnd

log = logging.getLogger("zspark.journal")

SYNC_POLICIES = ("always", "batch", "never")


class JournalFull(JournalError):
    """Taking the records would go over `max_bytes`; nothing old is dropped to make room."""


class TooLargeForJournal(JournalFull):
    """The records are larger than `max_bytes` itself: no waiting makes room for them."""


class JournalClosed(JournalError):
    pass


class JournalLocked(JournalError):
    pass


class UnsafeJournal(JournalError):
    """The journal directory, or something in or above it, is not safe to use (files.py)."""


class PendingAppend:
    """Records handed to the journal and waiting for their batch to become durable."""

    __slots__ = ("offsets", "_batch")

    def __init__(self, offsets, batch):
        self.offsets = offsets
        self._batch = batch

    @property
    def group(self):
        """What this append shares with the others of its group commit (the same object for
        each of them): `.done` (an Event) is set once it is written, `.error` is then the
        JournalError or None. An owner answering many appends waits once per group."""
        return self._batch

    def wait(self):
        """Block until durable; return the offsets, or raise JournalError."""
        self._batch.done.wait()
        if self._batch.error is not None:
            raise self._batch.error
        return self.offsets


class _Batch:
    __slots__ = ("chunks", "nbytes", "first", "last", "done", "error")

    def __init__(self):
        self.chunks = []
        self.nbytes = 0
        self.first = None
        self.last = None
        self.done = Event()
        self.error = None


# Upper bounds (seconds) of the sync-latency histogram's buckets; one more bucket holds the rest.
SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    def __init__(self):
        self.syncs = 0
        self.sync_bucket_counts = [0] * (len(SYNC_BUCKETS) + 1)  # per bucket, not cumulative
        self.sync_seconds_total = 0.0
        self.sync_seconds_last = 0.0
        self.sync_seconds_max = 0.0
        self.write_errors = 0

    def record_sync(self, seconds):
        self.syncs += 1
        self.sync_seconds_total += seconds
        self.sync_seconds_last = seconds
        self.sync_seconds_max = max(self.sync_seconds_max, seconds)
        self.sync_bucket_counts[bisect.bisect_left(SYNC_BUCKETS, seconds)] += 1


class Segment:
    """One segment of the open journal: its base offset (the offset it is named by) and the bytes
    of durable records in it (the file's size, less a write in progress)."""

    __slots__ = ("base", "size")

    def __init__(self, base, size=0):
        self.base = base
        self.size = size

    @property
    def name(self):
        return record.segment_name(self.base)


class Journal(DurableEnd):
    def __init__(self, directory, sync="batch", sync_interval=0.005, segment_bytes=64 * 1024**2,
                 max_bytes=10 * 1024**3, retain_hours=168.0, on_fatal=None, allow_shared_dir=False):
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync must be one of {SYNC_POLICIES}, not {sync!r}")
        self.directory = os.path.abspath(directory)
        self.sync = sync
        self.sync_interval = sync_interval
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.retain_hours = retain_hours
        self.allow_shared_dir = allow_shared_dir  # journal.allow_shared_dir: see files.py
        self.stats = Stats()
        self.damage = Damage()
        self.index = OffsetIndex()  # where records start in each segment, for readers (index.py)
        self._log_write_error = RateLimitedLog(log, logging.ERROR)  # a full disk fails every write
        self._on_fatal = on_fatal
        self._segments = []  # Segment, ascending by base; the last is active
        self._fd = None
        self._dir_fd = None  # the journal directory, checked at open; segments are opened relative to it
        self._lock_fd = None
        self._next_offset = 0  # the offset the next appended record gets
        self._init_durable_end()
        self._open_batch = _Batch()
        self._pending_bytes = 0  # framed bytes handed over but not yet written
        self._wake = Event()
        self._closing = False
        self._closed = True
        self._failed = None
        self._flusher = None
        self._last_sync = 0.0
        self._writing = Semaphore()  # the flusher's write or a retention roll, never both at once
        self._refused = False  # records were refused for want of space since the last retention run

    # -- lifecycle ------------------------------------------------------------------------

    def open(self):
        try:
            self._dir_fd = files.open_journal_dir(self.directory, self.allow_shared_dir)
        except files.UnsafeJournalDir as e:
            raise UnsafeJournal(str(e)) from None
        try:
            self._lock()
            self._recover()
        except BaseException:
            self._unlock()
            raise
        self._closed = False
        self._flusher = gevent.spawn(self._flush_loop)
        self._flusher.link_exception(self._flusher_died)
        log.info("journal %s open: offsets %d..%d, %d segment(s), %d bytes, sync=%s",
                 self.directory, self.first_offset, self._end_offset, len(self._segments),
                 self.size_bytes, self.sync)
        return self

    def close(self):
        """Write and sync everything pending, then close. Appends after this fail."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._flusher is not None and not self._flusher.dead:
            self._flusher.join()
        if self._fd is not None:
            blocking.call(os.fsync, self._fd)
            os.close(self._fd)
            self._fd = None
        self._unlock()
        self._closed = True
        self._notify_readers()
        log.info("journal %s closed at offset %d", self.directory, self._end_offset)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # -- appending ----------------------------------------------------------------------------

    def append(self, items, encode=None, encode_all=None):
        """Append records and wait until they are durable; return their offsets.

        `items` are bytes, or anything `encode(item, offset) -> bytes` turns into bytes (so a
        payload can carry its own offset, as event ids do), or that `encode_all(items,
        first_offset) -> [bytes]` turns into bytes all at once.
        """
        return self.append_nowait(items, encode, encode_all).wait()

    def append_nowait(self, items, encode=None, encode_all=None):
        """Hand records to the journal without waiting; `.wait()` on the result to wait."""
        if self._closed or self._closing:
            raise JournalClosed("the journal is closed")
        if self._failed is not None:
            raise JournalError(f"the journal has stopped after an error: {self._failed}")
        first = self._next_offset
        if encode_all is not None:
            payloads = encode_all(items, first)
        elif encode is not None:
            payloads = [encode(item, offset) for offset, item in enumerate(items, first)]
        else:
            payloads = list(items)
        if not payloads:
            return PendingAppend([], _done_batch())
        records = record.frame_all(first, payloads)
        nbytes = len(records)
        offset = first + len(payloads)
        if nbytes > self.max_bytes:
            raise TooLargeForJournal(f"{nbytes} bytes of records at once can never fit in the journal, "
                                     f"{self.max_bytes} bytes at most (journal.max_bytes): send fewer "
                                     "at once")
        if self.size_bytes + self._pending_bytes + nbytes > self.max_bytes:
            self._refused = True
            raise JournalFull(f"the journal is full ({self.size_bytes + self._pending_bytes} of "
                              f"{self.max_bytes} bytes used)")
        batch = self._open_batch
        if batch.first is None:
            batch.first = self._next_offset
        batch.last = offset - 1
        batch.chunks.append(records)
        batch.nbytes += nbytes
        self._pending_bytes += nbytes
        offsets = list(range(self._next_offset, offset))
        self._next_offset = offset
        self._wake.set()
        return PendingAppend(offsets, batch)

    def _flush_loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            if self.sync == "batch" and not self._closing:
                delay = self._last_sync + self.sync_interval - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)  # let more appends join this batch
            batch = self._open_batch
            if not batch.chunks:
                if self._closing:
                    return
                continue
            self._open_batch = _Batch()
            with self._writing:
                self._write_batch(batch)
            if self._closing:
                self._wake.set()  # drain whatever came in meanwhile, then stop

    def _write_batch(self, batch):
        try:
            if self._segments[-1].size >= self.segment_bytes:
                self._roll(self._end_offset)
            data = b"".join(batch.chunks)
            position = self._segments[-1].size
            started = time.monotonic()
            blocking.call(_write_at, self._fd, data, position, self.sync != "never")
            if self.sync != "never":
                # Pace fsyncs by when they start: one every sync_interval, not one every
                # sync_interval plus however long the previous fsync took.
                self._last_sync = started
                self.stats.record_sync(time.monotonic() - started)
        except OSError as e:
            self.stats.write_errors += 1
            self._refused = self._refused or e.errno in (errno.ENOSPC, errno.EDQUOT)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                batch.error = JournalFull(f"no space left on the journal's disk ({self.directory}): "
                                          f"{e.strerror}; events are refused until space is freed there")
            else:
                batch.error = JournalError(f"journal write in {self.directory} failed: {e}")
            self._log_write_error("journal %s: write of offsets %d..%d failed, those records were "
                                  "refused: %s", self.directory, batch.first, batch.last, e)
        except BaseException as e:
            # Not a disk error: a bug or the flusher being killed. The records are not known to
            # be written, so their appenders must hear so; then the flusher dies loudly.
            batch.error = JournalError(f"journal write interrupted: {e!r}")
            raise
        else:
            for offset, at in record.marks(data, position, SPACING):
                self.index.note(self._segments[-1].base, offset, at)
            self._segments[-1].size += len(data)
            self._end_offset = batch.last + 1
            self._notify_readers()
        finally:
            self._pending_bytes -= batch.nbytes
            batch.done.set()

    def _roll(self, base):
        """Close the active segment (synced) and start a new one named `base`: the end of the
        journal, so that its first record is `base` or, after offsets refused by a failed write,
        a later one. A segment's name then never leaves a gap after the one before it: a gap
        between segments means records are missing (see reader.py)."""
        new_fd = blocking.call(_create_segment, self._dir_fd, self.directory, base)
        old_fd, self._fd = self._fd, new_fd
        self._segments.append(Segment(base))
        blocking.call(_sync_and_close, old_fd)
        log.info("journal: rolled to segment %s", record.segment_name(base))

    def _flusher_died(self, greenlet):
        self._failed = greenlet.exception
        log.critical("journal flusher died: %r; refusing further appends", greenlet.exception)
        self._open_batch.error = JournalError(f"journal flusher died: {greenlet.exception!r}")
        self._open_batch.done.set()
        if self._on_fatal is not None:
            self._on_fatal(f"journal flusher died: {greenlet.exception!r}")

    # -- reading ------------------------------------------------------------------------------

    @property
    def end_offset(self):
        """One past the last durable record: readers see offsets below this."""
        return self._end_offset

    @property
    def first_offset(self):
        return self._segments[0].base if self._segments else 0

    @property
    def size_bytes(self):
        return sum(segment.size for segment in self._segments)

    def segment_bases(self):
        return [segment.base for segment in self._segments]

    def durable_bytes(self, base):
        """How many bytes of segment `base` hold durable records (0 for a segment not known)."""
        for segment in reversed(self._segments):
            if segment.base == base:
                return segment.size
        return 0

    def cursor(self, name):
        return Cursor(self.directory, name)

    def status(self):
        """The journal's part of `/status`."""
        syncs = self.stats.syncs
        return {
            "dir": self.directory,
            "first_offset": self.first_offset,
            "end_offset": self.end_offset,
            "bytes": self.size_bytes,
            "max_bytes": self.max_bytes,
            "segments": len(self._segments),
            "sync": self.sync,
            "syncs": syncs,
            "sync_latency_ms": {
                "last": round(self.stats.sync_seconds_last * 1000, 3),
                "avg": round(self.stats.sync_seconds_total / syncs * 1000, 3) if syncs else 0.0,
                "max": round(self.stats.sync_seconds_max * 1000, 3),
            },
            "write_errors": self.stats.write_errors,
            "damage": self.damage.as_dict(),  # cut at open, skipped and missing (damage.py)
        }

    # -- retention ----------------------------------------------------------------------------

    def apply_retention(self, consumers, now=None):
        """Delete whole segments every consumer's cursor has passed and that are older than
        `retain_hours`. `consumers` maps names to their cursor offsets, or lists names whose
        cursor files are read. Return the deleted segments' base offsets."""
        now = time.time() if now is None else now
        cursors = consumers if isinstance(consumers, dict) else {
            name: read_cursor(self.directory, name) for name in consumers}
        passed = min(cursors.values()) if cursors else self._end_offset
        if self._refused and passed >= self._end_offset and self._segments[-1].size > 0:
            # Full, and every consumer has passed even the active segment: roll it, so that it
            # can go too. Otherwise no write would come to roll it (all are refused), and a
            # journal whose whole size is in its active segment would stay full for ever.
            self._refused = False
            with self._writing:
                if self._segments[-1].size > 0:
                    self._roll(self._end_offset)
        deleted = []
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if self._segments[1].base > passed:
                break
            base, name = oldest.base, oldest.name
            mtime = blocking.call(_mtime, name, self._dir_fd)
            if mtime is not None and (now - mtime) / 3600.0 < self.retain_hours:
                break
            blocking.call(_unlink, name, self._dir_fd)
            self._segments.pop(0)
            self.index.forget(base)
            deleted.append(base)
        if deleted:
            log.info("journal retention: deleted %d segment(s) %s..%s (all consumers past offset %d)",
                     len(deleted), record.segment_name(deleted[0]), record.segment_name(deleted[-1]),
                     passed)
        return deleted

    def cursors(self):
        return read_cursors(self.directory)

    # -- open: lock and recovery --------------------------------------------------------------

    def _lock(self):
        fd = files.open_file(".lock", os.O_RDWR | os.O_CREAT, 0o600, dir_fd=self._dir_fd,
                             shown=os.path.join(self.directory, ".lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise JournalLocked(f"journal {self.directory} is in use by another process"
                                f"{' (pid ' + holder + ')' if holder else ''}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self):
        """Let go of the lock and the directory."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _recover(self):
        bases = record.list_segments(self.directory)
        if not bases:
            start = self._past_every_cursor(0)
            self._fd = _create_segment(self._dir_fd, self.directory, start)
            self._segments = [Segment(start)]
            self._next_offset = self._end_offset = start
            return
        self._segments = [Segment(b, os.stat(record.segment_name(b), dir_fd=self._dir_fd,
                                             follow_symlinks=False).st_size) for b in bases]
        last_base = bases[-1]
        path = os.path.join(self.directory, record.segment_name(last_base))
        fd = files.open_file(record.segment_name(last_base), os.O_RDWR, dir_fd=self._dir_fd, shown=path)
        try:
            valid_end, last_offset, skipped = _scan_segment(os.dup(fd), lambda offset, pos: self.index.note(last_base, offset, pos))
        except BaseException:
            os.close(fd)
            raise
        size = self._segments[-1].size
        if skipped:
            log.warning("journal recovery: %d damaged region(s) inside %s will be skipped by readers",
                        skipped, record.segment_name(last_base))
        if valid_end < size:
            log.warning("journal recovery: cut %d bytes of a torn record at the end of %s "
                        "(after offset %s)", size - valid_end, record.segment_name(last_base),
                        last_offset if last_offset is not None else "none")
            os.ftruncate(fd, valid_end)
            os.fsync(fd)
            self.damage.cut_bytes += size - valid_end
            self._segments[-1].size = valid_end
        self._fd = fd
        self._next_offset = self._past_every_cursor(max(last_base, last_offset + 1 if last_offset is not None else 0))
        self._end_offset = self._next_offset

    def _past_every_cursor(self, end):
        """The offset new records start at: `end`, the end of what is on disk, unless a cursor is
        further on (the journal was cut short, or its last segments deleted). Offsets below a
        cursor must never be given out again: that forwarder would pass over their records."""
        ahead = max(self.cursors().values(), default=0)
        if ahead <= end:
            return end
        self.damage.missing(end, ahead, f"journal recovery: the journal ends at offset {end} but a "
                                        f"forwarder's saved cursor is at {ahead}: offsets {end}..{ahead - 1} "
                                        f"are missing (the journal was cut short or segments deleted); "
                                        f"new records start at offset {ahead}")
        return ahead


def last_offset_on_disk(directory, offset_index=None):
    """The offset of the last intact record in the journal at `directory`, or None (read-only).
    `offset_index` (an OffsetIndex of the directory) is told where the records it parses start."""
    for base in reversed(record.list_segments(directory)):
        note = None if offset_index is None else (lambda offset, pos, base=base: offset_index.note(base, offset, pos))
        try:
            _, last, _ = _scan_segment(os.open(os.path.join(directory, record.segment_name(base)),
                                               files.READ_FLAGS), note)
        except FileNotFoundError:
            continue
        if last is not None:
            return last
    return None


def _scan_segment(fd, note=None):
    """Return (end of the last intact record, its offset, damaged regions before it) of the
    segment open as `fd`, which this closes. `note(offset, position)` hears of records every
    index.SPACING bytes or so, up to the first damage."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    pos = 0
    valid_end = 0
    last_offset = None
    skipped = 0
    next_note = 0 if note is not None else len(data) + 1
    while pos < len(data):
        result = record.parse(data, pos)
        if isinstance(result, tuple):
            if pos >= next_note and not skipped:
                note(result[0], pos)
                next_note = pos + SPACING
            last_offset, _, pos = result
            valid_end = pos
            continue
        # INCOMPLETE is a torn tail only if no intact record follows; otherwise the length field
        # is damaged, and cutting here would throw away the intact records after it.
        at = record.resync(data, pos)
        if at is None:
            break
        skipped += 1
        pos = at
    return valid_end, last_offset, skipped


def _write_at(fd, data, position, do_fsync):
    """Write all of `data` at `position`; on failure cut the file back so no torn record stays."""
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            written += os.pwrite(fd, view[written:], position + written)
        if do_fsync:
            os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, position)
        except OSError:
            pass
        raise


def _mtime(name, dir_fd):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


def _unlink(name, dir_fd):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _sync_and_close(fd):
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_segment(dir_fd, directory, base):
    name = record.segment_name(base)
    fd = files.open_file(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd,
                         shown=os.path.join(directory, name))
    os.fsync(dir_fd)  # the new name is durable
    return fd


def _done_batch():
    batch = _Batch()
    batch.done.set()
    return batch
