"""Which events a reader of the journal shows: the one filter of `zcmd tail`, `GET /tail`
(`zcmd tail --server`) and `zcmd replay`, and how far back the last N of them are found.

`RecordFilter({"type": [...], "topic": [...]})`: an event matches when, for every field given,
its value is a string that matches one of that field's patterns. A pattern is a shell wildcard,
matched case-sensitively against the whole value (fnmatch): `*` any characters (dots too), `?`
one, `[abc]` / `[!abc]` one of (or none of) those; `[*]`, `[?]`, `[[]` match the character
itself. A pattern without wildcards matches exactly that value. So `--type 'page.*' --type click
--topic web` is "type page.something or click, and topic web". (`Patterns` is that meaning alone;
`kafka.topics_allowed` takes its patterns the same way, topics.py.)

`may_match(payload)` is the cheap test on a record's bytes before decoding it: False only for a
record that cannot match (a literal pattern's value is nowhere in it), so that a filter which
matches nothing on a large journal decodes nothing. `start_of_last(...)` finds where to read from
to get the last N matching events, looking back over a bounded number of records.
"""
import fnmatch
import re
import struct

import gevent

from .journal.codec import decode_records

_WILDCARD = re.compile(r"[*?\[]")
LOOKBACK_BATCH = 500  # records read and tested between two pauses for the rest of the process


class RecordFilter:
    def __init__(self, fields=None):
        """`fields`: {top-level field name: [patterns]}; a field with no patterns is not tested."""
        self._tests = [(name, Patterns(patterns)) for name, patterns in (fields or {}).items() if patterns]
        needles = [(name, p.literal_needles(name)) for name, p in self._tests]
        # Only fields whose patterns are all literal can rule a record out by its bytes.
        self._needles = [found for _, found in needles if found is not None]

    def __bool__(self):
        return bool(self._tests)

    def matches(self, event):
        for name, patterns in self._tests:
            if not patterns.match(event.get(name)):
                return False
        return True

    def may_match(self, payload):
        """False only if the record `payload` (BSON) cannot match: for a field whose patterns are
        all literal, none of their values is in it as that top-level string field.

        A top-level string in BSON is `\\x02` (or the old symbol type `\\x0e`, which decodes to a
        string too), the key, a NUL, the value's length + 1 and the value's UTF-8 with a NUL: an
        event whose `type` is `v` holds those bytes. They may also turn up elsewhere; the decoded
        event decides."""
        for group in self._needles:
            if not any(needle in payload for needle in group):
                return False
        return True

    def select(self, records, skipped=None):
        """The `(offset, event)` of the `(offset, payload)` records that match (decode_records:
        `skipped` hears of records that are not events among those that might match)."""
        candidates = [r for r in records if self.may_match(r[1])] if self._needles else records
        return [(offset, event) for offset, event in decode_records(candidates, skipped) if self.matches(event)]


class Patterns:
    """Shell wildcards, as a RecordFilter field and kafka.topics_allowed (topics.py) take them:
    `match(value)` is True for a string that matches one of them whole; `exact` holds those
    without wildcards."""

    def __init__(self, patterns):
        self.exact = frozenset(p for p in patterns if not _WILDCARD.search(p))
        wild = [p for p in patterns if p not in self.exact]
        # One regular expression for all the wildcards (fnmatch.translate anchors each at the end).
        self.wild = re.compile("|".join(map(fnmatch.translate, wild))) if wild else None

    def match(self, value):
        if not isinstance(value, str):
            return False
        return value in self.exact or (self.wild is not None and self.wild.match(value) is not None)

    def literal_needles(self, name):
        """The byte strings one of which a record matching these patterns holds, or None when a
        wildcard could match values that no byte string names."""
        if self.wild is not None:
            return None
        key = name.encode("utf-8")
        out = []
        for value in self.exact:
            data = value.encode("utf-8", "surrogatepass")
            element = key + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"
            out += [b"\x02" + element, b"\x0e" + element]
        return out


def start_of_last(reader, first, end, n, wanted, lookback):
    """The offset to read from (with `reader`, which this moves) to get the last `n` records among
    first..end-1 that hold an event `wanted` matches, looking back at most `lookback` records from
    `end`; with fewer there, the first of those found (`end` when none is).

    Without a filter that is simply `end - n`. With one, windows of records are read backwards
    from the end, each twice as long as the one after it, until `n` matches are found: the work
    is about what lies between the n-th last match and the end (bounded by `lookback`), and a
    reader positioned by the offset index (journal/index.py) reaches each window's start without
    parsing its segment from the beginning."""
    if n <= 0:
        return end
    if not wanted:
        return max(first, end - n)
    floor = max(first, end - max(lookback, n))
    found = []  # offsets of matches, ascending
    high = end
    width = max(n, 64)
    while high > floor and len(found) < n:
        low = max(floor, high - width)
        reader.seek(low)
        window = []
        while True:
            records = reader.read(max_records=LOOKBACK_BATCH)
            if not records:
                break
            inside = [r for r in records if r[0] < high]
            window += [offset for offset, _ in wanted.select(inside)]
            gevent.sleep(0)  # decoding a window must not hold the rest of the process
            if len(inside) < len(records) or reader.offset >= high:
                break
        found = window + found
        high = low
        width *= 2
    if len(found) >= n:
        return found[-n]
    return found[0] if found else end
