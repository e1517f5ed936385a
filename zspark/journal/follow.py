"""A journal directory followed read-only by another process than its owner (a forwarder process):
what a Reader and a Forwarder need of a Journal, with the durable end told by the owner.

The owner (the process holding the journal open) tells the follower, whenever records become
durable, the journal's end offset, its active segment and how many bytes of it are durable
(`advance`). Readers made here see exactly what they would see bound to the owner's Journal:
records below that end, never the bytes of a write in progress (which a failed write would cut
off again), and `wait_for_append` waits for the owner's word, not on polling files. Until the
first word the end is 0: nothing is read. Segments before the active one are complete (synced
at their roll): all their bytes are durable. Damage readers come by goes to `damage` (an object
with Damage's `skipped` and `missing`: the owner's report, over the link).
"""
import os


from . import index, record
from .cursor import Cursor
from .damage import Damage
from .reader import DurableEnd


class FollowedJournal(DurableEnd):
    def __init__(self, directory, damage=None):
        self.directory = os.path.abspath(directory)
        self.index = index.OffsetIndex()
        self.damage = damage if damage is not None else Damage()
        self._init_durable_end()
        self._active = None  # the base of the owner's active segment, once told
        self._active_bytes = 0
        self._complete = {}  # base -> size of a segment before the active one (final)
        self._closed = False

    def advance(self, end_offset, segment, nbytes):
        """The owner's word: records below `end_offset` are durable, `nbytes` of segment `segment`."""
        if segment != self._active:
            self._complete.clear()  # retention may have deleted some; sizes are read again
        self._end_offset = max(self._end_offset, end_offset)
        self._active = segment
        self._active_bytes = nbytes
        self._notify_readers()

    def close(self):
        """The owner is gone: waits end at once, and no more records become readable."""
        self._closed = True
        self._notify_readers()

    @property
    def end_offset(self):
        return self._end_offset

    def segment_bases(self):
        if self._active is None:
            return []
        return [base for base in record.list_segments(self.directory) if base <= self._active]

    def durable_bytes(self, base):
        if self._active is None or base > self._active:
            return 0
        if base == self._active:
            return self._active_bytes
        size = self._complete.get(base)
        if size is None:
            try:
                size = os.stat(os.path.join(self.directory, record.segment_name(base)),
                               follow_symlinks=False).st_size
            except FileNotFoundError:
                return 0
            self._complete[base] = size
        return size

    def cursor(self, name):
        return Cursor(self.directory, name)
