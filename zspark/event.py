"""The event schema: `normalize` turns what any source received into one valid event document.

Fields (README.md, "The event"): `_id` (assigned by the journal), `timestamp` (when zspark received it, UTC),
`stimestamp` (the sender's own time), `type` (required), `level`, `topic`, `env`, `version`, `ip`,
`referrer`, `user_agent`, `cookies`, `context`, `extra`, `source`, `node`.

Every source calls `normalize`; a bad event raises `InvalidEvent` with a reason a sender can act
on ("context.user: nested deeper than 32 levels"). Nothing here raises anything else for bad input.

A top-level field the schema does not know is decided here, the same for every source (HTTP GET
and POST, ZeroMQ BSON and JSON), by `event.unknown_fields`: `context` (the default) moves it into
`context`, `refuse` refuses the event naming it. `from_query` makes the raw event of a `GET /log`
query string (Sparkngin's form) by the same rule.
"""
import datetime
import ipaddress
import math
import re

from bson import ObjectId

from .errors import InvalidEvent

_ZONE_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")

UTC = datetime.timezone.utc

STRING_FIELDS = ("type", "level", "topic", "env", "version", "ip", "referrer", "user_agent")
FIELDS = frozenset(STRING_FIELDS + ("timestamp", "stimestamp", "cookies", "context", "extra",
                                    "source", "node", "_id"))
# Fields the sender may not set: the appliance assigns them.
ASSIGNED = ("_id", "source", "node")
SHORT_LIMIT = 256  # type, level, topic, env, version: names, not payloads
_SHORT_FIELDS = frozenset(("type", "level", "topic", "env", "version"))
_STRING_FIELDS = frozenset(STRING_FIELDS)  # sets, for the per-field lookups in normalize
_ASSIGNED = frozenset(ASSIGNED)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The `source` of the node's own notices (zspark/notices.py). Senders cannot set `source`, so no
# sender can forge one; sinks route notices to their own topic or collection by it.
NOTICE_SOURCE = "notice"




UNKNOWN_FIELDS = ("context", "refuse")  # event.unknown_fields


class Limits:
    """The rules of the `event` config section that normalize applies: size limits, and what
    becomes of an unknown top-level field (`unknown_fields`, one of UNKNOWN_FIELDS)."""

    def __init__(self, max_string_bytes=64 * 1024, max_depth=32, max_fields=1000, unknown_fields="context"):
        self.max_string_bytes = max_string_bytes
        self.max_depth = max_depth
        self.max_fields = max_fields
        self.unknown_fields = unknown_fields

    @classmethod
    def from_config(cls, event_config):
        return cls(event_config.max_string_bytes, event_config.max_depth, event_config.max_fields,
                   event_config.unknown_fields)


DEFAULT_LIMITS = Limits()


def normalize(raw, source, node, now=None, limits=DEFAULT_LIMITS, trusted=False):
    """Validate `raw` (a mapping from JSON, BSON or a query string) and return the event document.

    `trusted` is Zarkov's `event_noval`: the sender vouches for the fields, so unknown fields are
    kept as they are, but the document must still be storable and have a string `type`.
    """
    fields = sender_fields(raw, limits, trusted)
    return {"timestamp": now or datetime.datetime.now(UTC), **fields, "source": source, "node": node}


def sender_fields(raw, limits=DEFAULT_LIMITS, trusted=False):
    """The sender's fields of the event `normalize` makes of `raw`, in order, without the fields
    the appliance assigns (`timestamp`, `source`, `node`, `_id`); raise InvalidEvent.

    May return `raw` itself when it is already in its final form (the common case), so the
    caller must not change the result.
    """
    if type(raw) is dict and not trusted and raw.keys() <= _PLAIN_FIELDS and _plain(raw, limits):
        return raw
    if not isinstance(raw, dict):
        raise InvalidEvent(f"an event must be a JSON object / BSON document, got {_kind(raw)}")
    fields = {}
    unknown = None  # {name: value} of the unknown fields, for context (event.unknown_fields)
    fast_limit = min(SHORT_LIMIT, limits.max_string_bytes)  # under every string field's limit
    for name, value in raw.items():
        if not isinstance(name, str):
            raise InvalidEvent(f"field names must be strings, got {name!r}")
        if name in _ASSIGNED:
            continue  # assigned by the appliance; a sender's value is ignored, never trusted
        if name == "timestamp":
            # Zarkov's clients send their own time as `timestamp`; it becomes `stimestamp`.
            if "stimestamp" not in raw and value is not None:
                fields["stimestamp"] = _timestamp(value, "timestamp")
            continue
        if value is None:
            continue
        if name in _STRING_FIELDS:
            if type(value) is str and len(value) <= fast_limit and value.isascii() and "\x00" not in value:
                fields[name] = value  # within every string field's limits: the common case
            else:
                fields[name] = _string(value, name, limits, SHORT_LIMIT if name in _SHORT_FIELDS else None)
        elif name == "stimestamp":
            fields[name] = _timestamp(value, name)
        elif name == "cookies":
            fields[name] = _cookies(value, limits)
        elif name in ("context", "extra"):
            counter = [0]
            if name == "context" and not isinstance(value, dict):
                raise InvalidEvent(f"context: must be an object, got {_kind(value)}")
            fields[name] = _value(value, name, 1, limits, counter)
        elif trusted:
            _check_key(name, "event")  # the name must still be storable (no NUL, no lone surrogate)
            fields[name] = _value(value, name, 1, limits, [0])
        elif limits.unknown_fields == "refuse":
            raise InvalidEvent(_unknown_field(name))
        else:
            _check_key(name, "event")
            if unknown is None:
                unknown = {}
            unknown[name] = value
    if unknown:
        fields["context"] = _into_context(fields.get("context"), unknown, limits)
    if "type" not in fields:
        raise InvalidEvent("type: required, a non-empty string")
    if not fields["type"]:
        raise InvalidEvent("type: must not be empty")
    if "ip" in fields:
        try:
            ipaddress.ip_address(fields["ip"])
            # ipaddress takes any text as an IPv6 zone id (`fe80::1%<anything>`); a zone names an
            # interface: RFC 6874's unreserved characters.
            _, percent, zone = fields["ip"].partition("%")
            if percent and not _ZONE_ID.fullmatch(zone):
                raise ValueError
        except ValueError:
            raise InvalidEvent(f"ip: not an IP address: {_short(fields['ip'])!r}") from None
    return fields


def _unknown_field(name):
    return f"unknown field {_short(name)!r} (known: {', '.join(sorted(FIELDS - set(ASSIGNED)))})"


def _into_context(context, unknown, limits):
    """`context` (already checked, or None) with the unknown top-level fields added, checked
    again as a whole: the limits hold for what is stored."""
    merged = dict(context) if context else {}
    for name, value in unknown.items():
        if name in merged:  # one of the two values would be lost
            raise InvalidEvent(f"unknown field {_short(name)!r} is also in context: send it once")
        merged[name] = value
    return _value(merged, "context", 1, limits, [0])


# GET /log's query parameters that are event fields (Sparkngin's names); each takes one value.
QUERY_FIELDS = {"type": "type", "level": "level", "topic": "topic", "env": "env", "ver": "version",
                "version": "version", "stimestamp": "stimestamp", "ip": "ip"}


def from_query(pairs, limits=DEFAULT_LIMITS):
    """The raw event (for `normalize`) of a GET /log query string's (name, value) pairs.

    A QUERY_FIELDS parameter is its field, given at most once (`ver` and `version` are one
    field): a repeat is refused, naming it, rather than one value being dropped. Any other
    parameter goes into `context` (a list of its values, in order, when it repeats), or, with
    event.unknown_fields: refuse, is refused as an unknown field."""
    event = {}
    context = {}
    for name, value in pairs:
        field = QUERY_FIELDS.get(name)
        if field is not None:
            if field in event:
                raise InvalidEvent(f"{field}: given more than once in the query string; it takes one value")
            event[field] = value
        elif limits.unknown_fields == "refuse":
            raise InvalidEvent(_unknown_field(name))
        elif name in context:
            values = context[name]
            if type(values) is list:
                values.append(value)
            else:
                context[name] = [values, value]
        else:
            context[name] = value
    if context:
        event["context"] = context
    return event


# Fields that, when valid, normalize keeps exactly as sent and checks without converting.
_PLAIN_FIELDS = frozenset(("type", "level", "topic", "env", "version", "referrer", "user_agent",
                           "context", "extra"))
_FREE_FORM = frozenset(("context", "extra"))


def _plain(raw, limits):
    """True if `raw` (a dict of _PLAIN_FIELDS) is a valid event as it is: the fast path of
    sender_fields, which takes it whole. False sends it down the full path, which then accepts
    or rejects it by the same rules; an InvalidEvent raised here is the one that path raises."""
    limit = min(SHORT_LIMIT, limits.max_string_bytes)
    for name, value in raw.items():
        if type(value) is str and name not in _FREE_FORM:
            if len(value) > limit:
                return False
            if value not in _valid_short:  # remembered: ASCII without NUL
                if not (value.isascii() and "\x00" not in value):
                    return False
                _remember(_valid_short, value)
        elif name == "context" and type(value) is dict or name == "extra" and value is not None:
            _value(value, name, 1, limits, [0])  # every field before it passed: no other error comes first
        else:
            return False
    return bool(raw.get("type"))


def _string(value, name, limits, short_limit=None):
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: must be a string, got {_kind(value)}")
    limit = short_limit or limits.max_string_bytes
    if len(value) > limit or (len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit):
        raise InvalidEvent(f"{name}: longer than {limit} bytes")
    _check_text(value, name)
    return value


def _check_text(value, where):
    if "\x00" in value:
        raise InvalidEvent(f"{where}: contains a NUL character")
    if value.isascii():
        return  # ASCII has no lone surrogates: skip the encode (most text is ASCII)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(f"{where}: not valid UTF-8 text (lone surrogate)") from None


def _timestamp(value, name):
    if isinstance(value, datetime.datetime):
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
            raise InvalidEvent(f"{name}: out of range: {value.isoformat()}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent(f"{name}: must be a finite number")
        try:  # an int too large for a float overflows here
            seconds = value / 1000.0 if abs(value) >= 1e11 else float(value)  # ms since epoch if large
            return datetime.datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"{name}: out of range: {value!r}") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidEvent(f"{name}: not a time: {_short(value)!r} (use ISO 8601 or "
                                   "seconds/milliseconds since the epoch)") from None
            return _timestamp(parsed, name)
        return _timestamp(number, name)
    raise InvalidEvent(f"{name}: must be a time (ISO 8601 string or epoch number), got {_kind(value)}")


def _cookies(value, limits):
    if not isinstance(value, dict):
        raise InvalidEvent(f"cookies: must be an object of strings, got {_kind(value)}")
    if len(value) > limits.max_fields:
        raise InvalidEvent(f"cookies: more than {limits.max_fields} entries")
    out = {}
    for k, v in value.items():
        _check_key(k, "cookies")
        out[k] = _string(v, f"cookies.{_short(k)}", limits)
    return out


def _check_key(key, path):
    if not isinstance(key, str):
        raise InvalidEvent(f"{path}: keys must be strings, got {key!r}")
    if key.startswith("$"):
        raise InvalidEvent(f"{path}: key {_short(key)!r} must not start with '$'")
    if len(key) > SHORT_LIMIT:
        raise InvalidEvent(f"{path}: a key is longer than {SHORT_LIMIT} characters")
    _check_text(key, path)


_PLAIN = (datetime.datetime, ObjectId, bytes)


def _value(value, path, depth, limits, counter):
    """Check a free-form value (context, extra) in place; return it if it can be stored.

    `path` is the root field name or a (parent path, key) pair, made into text only for an
    error message: building "context.a.b[2]" for every value would cost more than the checks.
    """
    counter[0] += 1
    if counter[0] > limits.max_fields:
        raise InvalidEvent(f"{_root(path)}: more than {limits.max_fields} values")
    kind = type(value)
    if kind is dict or kind is list:
        if depth > limits.max_depth:
            raise InvalidEvent(f"{_path_text(path)}: nested deeper than {limits.max_depth} levels")
        if kind is dict:
            max_string = limits.max_string_bytes
            max_fields = limits.max_fields
            count = counter[0]  # kept in a local while the values are plain; stored before a call
            for k, v in value.items():
                if k not in _valid_keys:
                    if type(k) is str and k.isascii() and len(k) <= SHORT_LIMIT and k[:1] != "$" and "\x00" not in k:
                        _remember(_valid_keys, k)
                    else:
                        _check_key(k, _path_text(path))
                # Plain short strings, small ints, booleans and nulls, most values, are checked
                # inline: a call per value costs more than the checks.
                t = type(v)
                if (t is str and len(v) <= max_string and v.isascii() and "\x00" not in v) or (
                        t is int and INT64_MIN <= v <= INT64_MAX) or t is bool or v is None:
                    count += 1
                    if count > max_fields:
                        raise InvalidEvent(f"{_root(path)}: more than {max_fields} values")
                    continue
                counter[0] = count
                _value(v, (path, k), depth + 1, limits, counter)
                count = counter[0]
            counter[0] = count
        else:
            for i, v in enumerate(value):
                _value(v, (path, i), depth + 1, limits, counter)
        return value
    if kind is str:
        if len(value) > limits.max_string_bytes or not value.isascii() or "\x00" in value:
            _string(value, _path_text(path), limits)  # the slow checks, which raise if need be
        return value
    if kind is bool or value is None:
        return value
    if isinstance(value, int):  # Int64 too
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidEvent(f"{_path_text(path)}: integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent(f"{_path_text(path)}: must be a finite number")
        return value
    if isinstance(value, str):
        return _string(value, _path_text(path), limits)
    if isinstance(value, datetime.datetime):
        _timestamp(value, _path_text(path))  # its UTC offset may carry it outside what BSON stores
        return value
    if isinstance(value, _PLAIN):
        return value
    raise InvalidEvent(f"{_path_text(path)}: unsupported value type {_kind(value)}")


# Keys, and values of the string fields, seen valid lately: the same few come again in event
# after event ("type": "page_view", "context": {"user": ...}), and one lookup costs less than
# checking one again. Validity depends on nothing but the text; the sets are bounded.
_valid_keys = set()  # plain dict keys: ASCII, no NUL, not '$'-prefixed, SHORT_LIMIT at most
_valid_short = set()  # plain string field values: the same, but '$' allowed
_REMEMBER_MAX = 4096


def _remember(valid, text):
    if len(valid) >= _REMEMBER_MAX:
        valid.clear()
    valid.add(text)


def _path_text(path):
    parts = []
    while type(path) is tuple:
        path, key = path
        parts.append(f"[{key}]" if type(key) is int else f".{key}")
    return path + "".join(reversed(parts))


def _root(path):
    while type(path) is tuple:
        path = path[0]
    return path


def _kind(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _short(text, limit=40):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
