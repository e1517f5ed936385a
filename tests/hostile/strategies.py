"""Hypothesis strategies for hostile input: values of every kind a decoder (JSON, BSON) or a
Python caller can produce, raw events that are sometimes valid and often not, and helpers that
say what an accepted event must look like."""
import datetime
import json
import math

import bson
from bson import Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import strategies as st

from zspark.event import FIELDS, INT64_MAX, INT64_MIN, SHORT_LIMIT

UTC = datetime.timezone.utc
EVENT_FIELDS = sorted(FIELDS)

# Text with everything that trips storage: NUL, lone surrogates, non-ASCII, '$' and '.'.
text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["", "$where", "a.b", "a\x00b", "\ud800", "\udcff", "caf\u00e9", "\U0001F600", " ", "x" * 300])
keys = text | st.sampled_from(EVENT_FIELDS + ["$command", "bogus"])

huge_ints = st.sampled_from([INT64_MAX, INT64_MIN, INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**64), 10**30,
                             10**400])
ints = st.integers(min_value=-(2**66), max_value=2**66) | huge_ints
floats = st.floats(allow_nan=True, allow_infinity=True)

offsets = st.builds(lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)),
                    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
datetimes = st.datetimes(timezones=st.none() | st.just(UTC) | offsets) | st.sampled_from(
    [datetime.datetime.min, datetime.datetime.max,
     datetime.datetime.min.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
     datetime.datetime.max.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=-1)))])

json_scalars = st.none() | st.booleans() | ints | floats | text
# What pymongo's BSON decoder can hand over besides the JSON kinds, and Python kinds neither can.
bson_scalars = (datetimes | st.binary(max_size=20) | st.builds(ObjectId)
                | st.builds(Int64, st.integers(INT64_MIN, INT64_MAX))
                | st.sampled_from([Decimal128("1.5"), Decimal128("NaN"), Regex("a.*", "i"), Timestamp(1, 2), MinKey(),
                                   MaxKey(), bson.Code("x"), bson.DBRef("c", 1)]))
python_scalars = st.sampled_from([(1, 2), {1, 2}, frozenset(), object(), b"\x00", bytearray(b"x"), 1j])


def nested(scalars, max_leaves=25):
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
                        max_leaves=max_leaves)


json_values = nested(json_scalars)
any_values = nested(json_scalars | bson_scalars | python_scalars)


def deep(depth, leaf=1, key="d"):
    """`depth` nested objects around `leaf`, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {key: value}
    return value


def plausible_fields(values):
    """Each event field with values that are mostly right and sometimes wrong."""
    short = st.text(max_size=20) | st.sampled_from(["click", "x" * 256, "x" * 257, "\u00e9" * 129, "a\x00"]) | values
    when = (st.datetimes(timezones=st.none() | st.just(UTC) | offsets).map(lambda d: d.isoformat())
            | st.sampled_from(["2026-01-01T00:00:00Z", "1e400", "nan", "", " 12 ", "2024-02-30T00:00:00Z",
                               "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
            | ints | floats | values)
    return {
        "type": st.text(min_size=1, max_size=20) | short,
        "level": short, "topic": short, "env": short, "version": short,
        "ip": st.ip_addresses().map(str) | st.sampled_from(["999.1.1.1", "::1%eth0", "1.2.3.4 "]) | values,
        "referrer": text | values, "user_agent": text | values,
        "stimestamp": when, "timestamp": when,
        "cookies": st.dictionaries(keys, text | values, max_size=4) | values,
        "context": st.dictionaries(keys, values, max_size=6) | values,
        "extra": values,
        "_id": values, "source": values, "node": values,
    }


def raw_events(values=json_values):
    """A mapping as a source would hand it to normalize: usually a `type` and some fields with
    plausible values, sometimes unknown or assigned fields, sometimes anything at all."""
    fields = plausible_fields(values)
    plausible = st.builds(
        lambda required, optional, unknown: {**required, **optional, **unknown},
        st.fixed_dictionaries({"type": fields["type"]}) | st.just({}),
        st.fixed_dictionaries({}, optional={k: v for k, v in fields.items() if k != "type"}),
        st.dictionaries(keys, values, max_size=2) | st.just({}) | st.just({}))
    return plausible | plausible | st.dictionaries(keys, values, max_size=6) | values


# -- what an accepted event must look like --------------------------------------------------------


def walk(value, depth=1):
    """(value, depth of its container nesting) for `value` and everything inside it."""
    stack = [(value, depth)]
    while stack:
        value, depth = stack.pop()
        yield value, depth
        if type(value) is dict:
            stack.extend((v, depth + 1) for v in value.values())
        elif type(value) is list:
            stack.extend((v, depth + 1) for v in value)


def storable_key(key):
    return (type(key) is str and not key.startswith("$") and "\x00" not in key and len(key) <= SHORT_LIMIT
            and utf8(key))


def utf8(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def comparable(value):
    """`value` as it reads back from BSON: times in UTC to the millisecond, arrays as lists."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def json_body(value):
    """JSON text for `value`; lone surrogates become \\udXXX escapes, as a hostile sender's would."""
    return json.dumps(value, allow_nan=True).encode("ascii")
