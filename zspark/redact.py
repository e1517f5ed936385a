"""Credentials kept out of what zspark shows: the log, `/status`, `zcmd validate` and other output.

`redact(text)` masks, wherever they appear in `text` (a URI, an error message quoting one):

- the password of `scheme://user:password@host` (`mongodb://user:***@host/`); the user name stays,
  so an operator can still tell which account is configured;
- the value of an option whose name says it is secret (`?authMechanismProperties=...&password=x`,
  `;pwd=x`): `password=***`.

`holds_secret(text)` says whether `redact` would mask anything in `text` (a setting worth a
warning when others can read the file it is in); `is_secret_name(name)` says whether a setting's name holds a secret, for settings passed through
by name (`kafka.producer`: `sasl.password`, `ssl.key.password`, `ssl.key.pem`...);
`redact_data` applies `redact` to every string in nested plain data (what `config.describe`
returns).
"""
import re

MASK = "***"

# `scheme://userinfo@`: the userinfo runs to the last @ before the path, so a password holding an
# unescaped @ is masked whole. An empty password has nothing to mask.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#@\s:]*):([^/?#\s]+)@")
_SECRET_WORDS = r"password|passwd|pwd|secret|token|credential"
_OPTION = re.compile(rf"(?i)((?:^|[?&;,\s])[^=&;,#\s]*(?:{_SECRET_WORDS})[^=&;,#\s]*=)[^&;,#\s]*")
_NAME = re.compile(rf"(?i)(?:{_SECRET_WORDS})|key(?!.*(?:location|file|path)$)")


def redact(text):
    """`text` with URI passwords and secret-named options masked; anything else unchanged."""
    if not isinstance(text, str) or ("@" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    return _OPTION.sub(lambda m: m.group(1) + MASK, text)


def holds_secret(text):
    """True if `text` holds something `redact` masks (a URI's password, a secret-named option)."""
    return redact(text) != text


def is_secret_name(name):
    """True for a setting named like a secret (`sasl.password`, `ssl.key.pem`; not
    `ssl.key.location`, a path)."""
    return bool(_NAME.search(name))


def redact_data(value):
    """Plain data (dicts, lists, strings...) with every string in it redacted."""
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return redact(value)
