"""JSON text decoded by orjson wherever it gives exactly what the json module gives.

orjson decodes a small event three times faster than json, and a JSON event line costs more to
decode than to validate. The two differ on some inputs, and there json decides:

- integers outside [-2**63, 2**64): orjson makes them floats, json keeps them (then normalize
  refuses them as out of the 64-bit range). Text with 19 digits in a row goes to json.
- nesting: json fails at the interpreter's recursion limit (about 990 levels), orjson at 1024.
  Text that could nest 500 levels deep goes to json.
- whatever orjson refuses (NaN, Infinity, 1e400, lone surrogates, any malformed text): json may
  accept some of it, and otherwise its error message is the one the sender gets.

Everywhere else they agree: the same types and values (floats correctly rounded by both), the
last of repeated keys in the place of the first, strict whitespace and escapes.
"""
import orjson

NOT_DECODED = object()  # decode()'s answer when json must decide

_DEEP = 500  # brackets in a text that could nest this deep
# Every byte to a space but ASCII digits to "0", so that a run of digits is a run of zeros.
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19


def may_hold_long_numbers(data):
    """True if `data` (bytes) has 19 digits in a row somewhere (in a number or not)."""
    return _LONG_NUMBER in data.translate(_DIGITS)


def decode(data, long_numbers=None):
    """The value of the JSON text `data` (bytes of valid UTF-8), or NOT_DECODED when json must
    decide. `long_numbers`: may_hold_long_numbers(data) if known (False for a part of a text
    that has none), else it is checked here."""
    return decode_all([data], long_numbers)[0]


def decode_all(texts, long_numbers=None):
    """decode() of each of `texts`, in a list."""
    loads = orjson.loads
    if long_numbers is False and texts and max(map(len, texts)) < _DEEP:
        # None can be one for json to decide but by being refused by orjson: all in one go.
        try:
            return list(map(loads, texts))
        except orjson.JSONDecodeError:
            pass  # one of them is: look at each
    values = []
    for data in texts:
        if (may_hold_long_numbers(data) if long_numbers is None else long_numbers) or (
                len(data) >= _DEEP and data.count(b"[") + data.count(b"{") >= _DEEP):
            values.append(NOT_DECODED)
            continue
        try:
            values.append(loads(data))
        except orjson.JSONDecodeError:
            values.append(NOT_DECODED)
    return values
