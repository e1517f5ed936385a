"""A sparse index of record positions per segment: where to start reading to reach an offset,
instead of parsing the segment from its start.

An entry is `(offset, position)`: a record with that offset starts at that byte of the segment.
Entries are at least `SPACING` bytes apart, so a reader positioned by the index parses at most
about that much before its offset. They come only from places that know a record starts there:
the writer (the first record of each batch it writes), recovery's scan of the last segment, and
readers parsing records one after another from a known start. Never from a record found by
searching for the next magic after damage, nor by bisecting the file: a payload may hold bytes
that look like a whole record (any sender can send binary data), and an index that believed one
would send a forwarder past events. A reader still checks the record at an entry before trusting
it (reader.py).

The index lives in memory, is rebuilt as the journal is used after a start (a segment's first
positioned read scans it once), and forgets a segment when retention deletes it.
"""
import bisect

SPACING = 64 * 1024


class OffsetIndex:
    def __init__(self):
        self._segments = {}  # base offset -> ([offsets], [positions]), both ascending

    def note(self, base, offset, position):
        """Record that the record `offset` starts at byte `position` of segment `base`."""
        offsets, positions = self._segments.setdefault(base, ([], []))
        if offsets and offset > offsets[-1]:  # the usual case: past every entry
            if position - positions[-1] >= SPACING:
                offsets.append(offset)
                positions.append(position)
            return
        i = bisect.bisect_left(offsets, offset)
        if i < len(offsets) and offsets[i] == offset:
            return
        if (i > 0 and position - positions[i - 1] < SPACING) or (
                i < len(positions) and positions[i] - position < SPACING):
            return
        offsets.insert(i, offset)
        positions.insert(i, position)

    def floor(self, base, offset):
        """`(offset, position)` of the last entry at or before `offset` in segment `base`, or None."""
        entry = self._segments.get(base)
        if entry is None:
            return None
        offsets, positions = entry
        i = bisect.bisect_right(offsets, offset) - 1
        if i < 0:
            return None
        return offsets[i], positions[i]

    def forget(self, base):
        self._segments.pop(base, None)

    def entries(self, base):
        """The entries of segment `base` (for tests and `zcmd shell`)."""
        offsets, positions = self._segments.get(base, ((), ()))
        return list(zip(offsets, positions))
