"""The journal's damage report: what was cut, skipped or found missing, for the log and /status.

Every reader of a journal (one per forwarder) passes the same damaged places; each place is
logged and counted once, under a key naming it. Counted:

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
        self._seen = set()

    def report(self, key, message, nbytes=0, missing=0):
        """Log and count a damaged place once, however many readers come by it."""
        if key in self._seen:
            return
        self._seen.add(key)
        if nbytes:
            self.regions += 1
            self.bytes += nbytes
        self.missing_offsets += missing
        self.last = message
        log.warning("%s", message)

    def as_dict(self):
        return {"cut_bytes": self.cut_bytes, "regions": self.regions, "bytes": self.bytes,
                "missing_offsets": self.missing_offsets, "last": self.last}
