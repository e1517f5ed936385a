"""A read-only view of a journal directory, for operators (`zcmd shell`'s `journal`, `zcmd tail`).

Safe beside a running server: it never takes the journal's `.lock`, never runs recovery or cuts
a torn tail, and never writes a byte (cursors are read, not opened for writing). It reads what
is intact in the files, through `Reader`'s directory mode, so a record being written right now
simply is not there yet, and damaged records are skipped as they are for every reader. Its
readers share one offset index (index.py), filled as they and `end_offset()` parse the
segments, so that reading near the end of a large segment parses it from its start once.

    journal.first_offset(), journal.end_offset()   offsets on disk (end = one past the last)
    journal.segments()                             [Segment(base, path, bytes, mtime), ...]
    journal.events(start, stop)                    iterate events with start <= offset < stop
    journal.records(start, stop)                   ... as (offset, event) pairs
    journal.get(offset)                            one event, or None
    journal.last(n)                                the last n events, oldest first
    journal.reader(offset)                         a Reader from offset (zspark/journal/reader.py)
    journal.cursors()                              {forwarder: next offset it will deliver}
"""
import collections
import logging
import os

from . import record
from .codec import decode_records
from .cursor import read_cursors
from .index import OffsetIndex
from .journal import last_offset_on_disk
from .reader import Reader

log = logging.getLogger("zspark.journal")

Segment = collections.namedtuple("Segment", "base path bytes mtime")


class JournalView:
    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.index = OffsetIndex()

    def exists(self):
        return os.path.isdir(self.directory)

    def segments(self):
        out = []
        for base in record.list_segments(self.directory):
            path = os.path.join(self.directory, record.segment_name(base))
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:  # deleted by retention meanwhile
                continue
            out.append(Segment(base, path, st.st_size, st.st_mtime))
        return out

    def first_offset(self):
        bases = record.list_segments(self.directory)
        return bases[0] if bases else 0

    def end_offset(self):
        """One past the last intact record on disk: the offset the next event will get."""
        last = last_offset_on_disk(self.directory, self.index)
        bases = record.list_segments(self.directory)
        return max(bases[-1] if bases else 0, 0 if last is None else last + 1)

    def bytes(self):
        return sum(s.bytes for s in self.segments())

    def start_of_last(self, n):
        """The offset to read from to get the last `n` records (end_offset() when n <= 0)."""
        end = self.end_offset()
        if n <= 0:
            return end
        return max(end - n, self.first_offset())

    def records(self, start=None, stop=None):
        """Yield `(offset, event)` for start <= offset < stop (default: all there is now).

        An intact record that is not a BSON event is logged and passed over."""
        reader = self.reader(self.first_offset() if start is None else start)
        try:
            while True:
                records = reader.read()
                if stop is not None:
                    records = [r for r in records if r[0] < stop]
                if not records:
                    return
                yield from decode_records(records, _passed_over)
        finally:
            reader.close()

    def reader(self, offset=0):
        return Reader(self.directory, offset, offset_index=self.index)

    def events(self, start=None, stop=None):
        for _, event in self.records(start, stop):
            yield event

    def get(self, offset):
        for found, event in self.records(offset, offset + 1):
            return event if found == offset else None
        return None

    def last(self, n=10):
        return list(self.events(self.start_of_last(n)))

    def cursors(self):
        return read_cursors(self.directory)

    def __repr__(self):
        if not self.exists():
            return f"<JournalView {self.directory}: no journal here (yet)>"
        segments = self.segments()
        return (f"<JournalView {self.directory}: offsets {self.first_offset()}..{self.end_offset()}, "
                f"{len(segments)} segment(s), {sum(s.bytes for s in segments)} bytes, read-only>")


def _passed_over(offset, payload, error):
    log.warning("journal: offset %d is not an event, passed over: %s", offset, error)
