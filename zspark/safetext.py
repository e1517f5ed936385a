"""Text that is safe on one line of a log or a terminal, whatever a sender put in it.

`one_line(text)` is the one helper every sender-controlled string goes through before it reaches
a log line, `/status`, a rejection reason or `zcmd` output: each character Python does not call
printable (`str.isprintable`: C0 and C1 controls, DEL, ESC, CR, LF, TAB, the line and paragraph
separators U+2028/U+2029, bidi overrides and other format characters, non-ASCII spaces,
surrogates, unassigned code points) is written as its Python escape (`\\n`, `\\x1b`, `\\u2028`),
and printable text, any script, is kept as it is. The result holds no character that can end the
line, move the cursor, recolour the terminal or reorder what is shown. `shorten` is the same, cut
to a length, and `ascii_line` the same in ASCII (for a header value).

`json_line(text)` does the same to a line of compact JSON (events as `zcmd tail` prints them):
json.dumps(ensure_ascii=False) and orjson leave C1 controls, DEL, U+2028 and bidi overrides raw;
json_line writes them as JSON `\\u` escapes, so the line is the same JSON value and safe to show.

A backslash is printable and kept: `\\n` in the output may have been a newline or the two
characters `\\` `n`. That is enough for the aim (no sender can start a line or send an escape
sequence); the record the text came from (the journal) has the exact bytes.
"""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char):
    named = _NAMED.get(char)
    if named:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def one_line(text):
    """`text` (any object: str() of it) with every unprintable character escaped."""
    text = text if type(text) is str else str(text)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def shorten(text, limit):
    """one_line(text), cut to at most `limit` characters ("..." at the end if it was cut); an
    escape is never cut in two."""
    text = text if type(text) is str else str(text)
    safe = one_line(text)
    if len(safe) <= limit:
        return safe
    budget, pieces = max(limit - 3, 0), []
    for c in text:  # stops after `budget` characters at most
        piece = c if c.isprintable() else _escape(c)
        budget -= len(piece)
        if budget < 0:
            break
        pieces.append(piece)
    return "".join(pieces) + "..."


def ascii_line(text, limit):
    """shorten(text, limit) in ASCII: other characters written as Python escapes too."""
    return shorten(str(text).encode("ascii", "backslashreplace").decode("ascii"), limit)


def json_line(text):
    """Compact JSON text (no newline or indent outside its strings) with every unprintable
    character written as a JSON \\u escape: the same JSON value, safe on a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def _json_escape(char):
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"
