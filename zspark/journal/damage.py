"""The journal's damage report: what was cut, skipped or found missing, for the log and /status.

Every reader of a journal (one per forwarder) passes the same damaged places; each place is
logged and counted once. Counted:

    cut_bytes         a torn record cut off the end of the last segment at open (after a crash:
                      the record was never acknowledged)
    regions, bytes    damaged bytes readers skipped (a checksum that fails, a segment cut short)
    missing_offsets   offsets whose records are gone: skipped as damaged, in a deleted segment, or
                      past the end of a journal cut short below a forwarder's saved cursor
"""
import logging

log = logging.getLogger("zspark.journal")


class Damage:
    def __init__(self):
        self.cut_bytes = 0
        self.regions = 0
        self.bytes = 0
        self.missing_offsets = 0
        self.last = None  # the last thing reported, as logged
        self._seen = set()  # keys of the damaged regions reported
        self._missing = []  # [start, end) ranges of offsets reported missing, sorted, disjoint

    def skipped(self, key, nbytes, message):
        """Log and count a damaged region once, however many readers come by it."""
        if key in self._seen:
            return
        self._seen.add(key)
        self.regions += 1
        self.bytes += nbytes
        self._say(message)

    def missing(self, start, end, message):
        """Log and count offsets start..end-1 as missing; offsets already reported (another
        reader, or recovery at open, found the same gap) count once."""
        new = end - start - sum(max(0, min(end, e) - max(start, s)) for s, e in self._missing)
        if new <= 0:
            return
        self.missing_offsets += new
        self._missing = _merge(self._missing + [[start, end]])
        self._say(message)

    def _say(self, message):
        self.last = message
        log.warning("%s", message)

    def as_dict(self):
        return {"cut_bytes": self.cut_bytes, "regions": self.regions, "bytes": self.bytes,
                "missing_offsets": self.missing_offsets, "last": self.last}


def _merge(ranges):
    merged = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
