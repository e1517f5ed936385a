"""Reading the journal: iterate records from any offset, across segments, past damage.

A `Reader` is a position in the journal. `read()` returns the records that are there now and
never blocks; `wait()` blocks cooperatively until more may be there. Bound to an open `Journal`
(in the serving process) it reads only records the journal has made durable; opened on a
directory alone (`zcmd tail` beside a running or stopped server) it reads whatever is intact in
the files and polls for more.

Damage is skipped, never fatal: a record whose checksum fails is passed over to the next intact
record, counted in `skipped_bytes` and logged. Offsets found missing after damage or between two
segments (one deleted, or cut short) are logged too. A reader bound to a journal reports both
to the journal's damage report (damage.py), which logs and counts each place once.

A reader finds its offset in a segment through an offset index (index.py): it starts at the
nearest known record before it, checks that the record there is the one the index says, and notes
in the index the records it parses on its way. A reader bound to a journal shares the journal's
index; a reader on a directory alone has its own (or its JournalView's), filled as it parses, so
that it parses a segment from its start once, not at every seek.
"""
import logging
import os

import gevent
from gevent.event import Event

from .. import blocking
from . import index, record
from .files import READ_FLAGS

log = logging.getLogger("zspark.journal")

READ_CHUNK = 1024 * 1024
_NO_LIMIT = 2**64 - 1  # a record's offset is a uint64


class Reader:
    def __init__(self, directory, offset=0, journal=None, poll_interval=0.2, use_threadpool=True,
                 offset_index=None):
        """`journal`: the open Journal to read (its durable records, its index); without it the
        directory's files, with `offset_index` (an OffsetIndex of that directory; default: one of
        this reader's own). `use_threadpool=False` reads on the calling thread (no gevent hub)."""
        self.directory = directory
        self.offset = offset  # the next offset this reader returns (or the first after a gap)
        self.skipped_bytes = 0
        self.skipped_regions = 0
        self._journal = journal
        self._poll_interval = poll_interval
        self._read = blocking.call if use_threadpool else _call
        self._fd = None
        self._segment = None  # base offset of the open segment
        self._file_pos = 0  # file position of the end of self._buf
        self._buf = b""
        self._pos = 0  # parse position in self._buf
        self._stuck_at = None  # (segment, file position) of damage we are waiting behind
        self._gap_after = None  # what was passed since the last record returned (damage, a segment end)
        if journal is not None:
            self._index = journal.index
        else:
            self._index = offset_index if offset_index is not None else index.OffsetIndex()
        self._verify = None  # the offset the index says starts at the position we jumped to
        self._aligned = False  # parsing record after record from a known start (not after a resync)
        self._next_note = 0  # the file position from which the next record is worth noting in the index
        self._found_nothing_below = None  # the end the last read() stopped at with nothing to give

    # -- public -----------------------------------------------------------------------------

    def read(self, max_records=1000, max_bytes=4 * 1024 * 1024):
        """Return a list of `(offset, payload)` available now, in offset order."""
        out = []
        size = 0
        limit = self._journal.end_offset if self._journal is not None else None
        while len(out) < max_records and size < max_bytes:
            if limit is not None and self.offset >= limit:
                break
            if self._fd is None and not self._open_segment_for(self.offset):
                break
            if self._verify is None and self._gap_after is None:
                taken = self._run(out, limit, max_records, max_bytes - size)
                if taken is not None:
                    size += taken
                    continue
            # One record, and what comes at the end of a run: more to read, damage, a segment's end.
            result = record.parse(self._buf, self._pos)
            if self._verify is not None and result is not record.INCOMPLETE:
                if not isinstance(result, tuple) or result[0] != self._verify:
                    self._distrust_index()
                    continue
                self._verify = None
            if isinstance(result, tuple):
                rec_offset, start, end = result
                if limit is not None and rec_offset >= limit:
                    break
                if self._aligned:
                    self._note(rec_offset)
                if rec_offset >= self.offset:
                    if self._gap_after is not None:
                        if rec_offset > self.offset:
                            self._report_missing(rec_offset)
                        self._gap_after = None
                    payload = self._buf[start:end]
                    out.append((rec_offset, payload))
                    size += len(payload)
                    self.offset = rec_offset + 1
                self._pos = end
                self._stuck_at = None
                continue
            if self._fill():
                continue  # more bytes arrived; parse again
            if self._verify is not None:  # the file ends inside the record the index named
                self._distrust_index()
                continue
            # At the end of the file with an incomplete or damaged record (or none) in hand.
            # An "incomplete" record followed by intact ones has a damaged length field: skip it.
            if self._pos < len(self._buf) and self._skip_damage():
                continue
            if not self._next_segment():
                break
        self._found_nothing_below = limit if not out else None
        return out

    def wait(self, timeout=None):
        """Block cooperatively until new records may be readable (or `timeout` seconds)."""
        if self._journal is not None:
            # Past the end the last read() came to empty-handed: offsets below it that it did not
            # find are missing (a journal cut short, then started again past a forwarder's
            # cursor), and waiting for them would return at once, for ever, never yielding.
            self._journal.wait_for_append(max(self.offset, self._found_nothing_below or 0), timeout)
        else:
            gevent.sleep(self._poll_interval if timeout is None else min(timeout, self._poll_interval))

    def seek(self, offset):
        self.close()
        self.offset = offset
        self._gap_after = None
        self._found_nothing_below = None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._segment = None
        self._buf = b""
        self._pos = 0

    def __iter__(self):
        """Yield `(offset, payload)` up to the end of what is there now."""
        while True:
            batch = self.read()
            if not batch:
                return
            yield from batch

    # -- internals --------------------------------------------------------------------------

    def _segments(self):
        if self._journal is not None:
            return self._journal.segment_bases()
        return record.list_segments(self.directory)

    def _open_segment_for(self, offset):
        bases = self._segments()
        if not bases:
            return False
        candidates = [b for b in bases if b <= offset]
        base = candidates[-1] if candidates else bases[0]
        if not self._open(base):
            return False
        entry = self._index.floor(base, offset)
        if entry is not None and entry[1] > 0:
            self._verify, self._file_pos = entry
            self._next_note = self._file_pos + index.SPACING
        return True

    def _distrust_index(self):
        """The index named a record that is not there: forget the segment's entries and parse
        it from its start (it cannot happen unless the file was changed behind the journal)."""
        log.warning("journal: the index of segment %s is wrong at byte %d; reading it from its start",
                    record.segment_name(self._segment), self._file_pos - len(self._buf) + self._pos)
        self._index.forget(self._segment)
        self._open(self._segment)

    def _run(self, out, limit, max_records, max_bytes):
        """Take the intact records from the parse position on into `out` in one call
        (record.parse_run), noting them in the index as they pass: the payload bytes taken, or
        None if no record was parsed."""
        records, pos, notes, next_note = record.parse_run(
            self._buf, self._pos, self.offset, _NO_LIMIT if limit is None else limit,
            max_records - len(out), max_bytes, self._file_pos - len(self._buf),
            self._next_note if self._aligned else -1, index.SPACING)
        if pos == self._pos:
            return None
        for rec_offset, position in notes:
            self._index.note(self._segment, rec_offset, position)
        if self._aligned:
            self._next_note = next_note
        if records:
            out += records
            self.offset = records[-1][0] + 1
        self._pos = pos
        self._stuck_at = None
        return sum(len(payload) for _, payload in records)

    def _note(self, rec_offset):
        position = self._file_pos - len(self._buf) + self._pos
        if position >= self._next_note:
            self._index.note(self._segment, rec_offset, position)
            self._next_note = position + index.SPACING

    def _open(self, base):
        self.close()
        try:
            self._fd = os.open(os.path.join(self.directory, record.segment_name(base)), READ_FLAGS)
        except FileNotFoundError:
            return False  # deleted by retention meanwhile; the caller moves on
        self._segment = base
        self._file_pos = 0
        self._verify = None
        self._aligned = True
        self._next_note = 0
        return True

    def _fill(self):
        """Read more of the open file into the buffer; False at end of file (or, bound to a
        journal, at the end of what it has made durable there)."""
        if self._pos > 0:
            self._buf = self._buf[self._pos:]
            self._pos = 0
        size = READ_CHUNK
        if self._journal is not None:
            # Never the bytes of a write in progress: if it fails they are cut off again and the
            # next records written over them, which a buffer holding the old bytes would misread.
            size = min(size, self._journal.durable_bytes(self._segment) - self._file_pos)
            if size <= 0:
                return False
        data = self._read(os.pread, self._fd, size, self._file_pos)
        if not data:
            return False
        self._file_pos += len(data)
        self._buf = self._buf + data if self._buf else data
        return True

    def _skip_damage(self):
        """Skip from the damaged record to the next intact one in this file, if there is one."""
        at = record.resync(self._buf, self._pos)
        if at is None:
            return False
        self._report_skip(at - self._pos)
        self._pos = at
        self._aligned = False  # found by searching: not a position to give the index
        return True

    def _next_segment(self):
        """At the end of the open segment: move to the next one if it exists."""
        later = [b for b in self._segments() if b > (self._segment if self._segment is not None else -1)]
        if not later:
            return False
        leftover = len(self._buf) - self._pos
        if leftover:
            self._report_skip(leftover, at_end=True)
        if later[0] > self.offset:
            # A segment is named by the journal's end when it is made: a name past the offset
            # expected next means records in between are gone. (A name at it, then a first
            # record past it: offsets refused by a failed write, never acknowledged.)
            self._gap_after = self._gap_after or (f"segment {record.segment_name(self._segment)} ends "
                                                  "before them: a segment deleted or cut short")
        self._open(later[0])
        return True

    def _report_skip(self, nbytes, at_end=False):
        key = (self._segment, self._file_pos, self._pos)
        if self._stuck_at == key:
            return
        self._stuck_at = key
        self.skipped_bytes += nbytes
        self.skipped_regions += 1
        position = self._file_pos - len(self._buf) + self._pos
        name = record.segment_name(self._segment)
        self._gap_after = f"damaged bytes skipped in segment {name}"
        message = (f"journal: skipped {nbytes} damaged bytes at byte {position}"
                   f"{' (its end)' if at_end else ''} of segment {name}, reading from offset {self.offset}")
        if self._journal is not None:
            self._journal.damage.skipped((self._segment, position), nbytes, message)
        else:
            log.warning("%s", message)

    def _report_missing(self, resumed_at):
        message = (f"journal: offsets {self.offset}..{resumed_at - 1} are missing ({self._gap_after}); "
                   f"reading on at offset {resumed_at}")
        if self._journal is not None:
            self._journal.damage.missing(self.offset, resumed_at, message)
        else:
            log.warning("%s", message)


def _call(func, *args):
    return func(*args)


class DurableEnd:
    """What a Reader waits on: a journal's durable end offset (`_end_offset`), moved on by its
    owner (Journal) or by the owner's word (follow.FollowedJournal), with `_notify_readers()` after
    each move; `_closed` ends every wait. Subclasses also give segment_bases() and durable_bytes()."""

    def _init_durable_end(self):
        self._end_offset = 0  # records below this are durable and readable
        self._appended = Event()  # replaced each time records become durable

    def reader(self, offset=0):
        return Reader(self.directory, offset, journal=self)

    def wait_for_append(self, offset, timeout=None):
        """Block until records at or past `offset` are durable, the journal closes, or timeout."""
        if offset < self._end_offset or self._closed:
            return True
        return self._appended.wait(timeout)

    def _notify_readers(self):
        appended, self._appended = self._appended, Event()
        appended.set()

