"""The journal: zspark's storage engine, the only thing between sources and sinks.

`Journal` appends (group-committed, durable per sync policy), recovers at open and applies the
size cap and retention; `Reader` iterates records from any offset; `Cursor` remembers how far a
consumer got (`read_cursor`, `read_cursors` read one, read-only); `codec` turns events into records
with stable ids, and back (`decode_records`: the events among what a reader read); `JournalView`
is a read-only look at a journal directory for operators.
"""
from .codec import decode_event, decode_events, decode_records, encode_event, event_id, event_to_json
from .cursor import Cursor, list_cursors, read_cursor, read_cursors
from .journal import (Journal, JournalClosed, JournalError, JournalFull, JournalLocked, PendingAppend,
                      TooLargeForJournal)
from .reader import Reader
from .record import list_segments
from .view import JournalView

__all__ = ["Journal", "JournalError", "JournalFull", "JournalClosed", "JournalLocked", "PendingAppend",
           "TooLargeForJournal",
           "Reader", "JournalView", "Cursor", "list_cursors", "read_cursor",
           "read_cursors", "list_segments", "encode_event", "decode_event",
           "decode_events", "decode_records", "event_id", "event_to_json"]
