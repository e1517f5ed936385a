"""Named cursors: how far a consumer (a forwarder) has durably got in the journal.

One small file per cursor under `<journal>/cursors/<name>`, holding the next offset to deliver as
decimal text. It is replaced atomically (write a temporary file, fsync, rename, fsync the
directory), so after any crash it holds either the old or the new offset, never a torn one.
"""
import logging
import os
import re
import threading

from .. import blocking

log = logging.getLogger("zspark.journal")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def cursor_dir(journal_dir):
    return os.path.join(journal_dir, "cursors")


def list_cursors(journal_dir):
    try:
        return sorted(n for n in os.listdir(cursor_dir(journal_dir)) if _NAME.match(n) and not n.startswith("."))
    except FileNotFoundError:
        return []


class Cursor:
    def __init__(self, journal_dir, name):
        if not _NAME.match(name) or name.startswith("."):
            raise ValueError(f"bad cursor name {name!r}: use letters, digits, '_', '-', '.'")
        self.name = name
        self.directory = cursor_dir(journal_dir)
        self.path = os.path.join(self.directory, name)
        self.offset = self._load()

    def _load(self):
        try:
            with open(self.path, encoding="ascii") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            log.error("cursor %s unreadable (%s): starting it from offset 0, events will be re-sent",
                      self.path, e)
            return 0
        if not text.isdigit():
            log.error("cursor %s holds %r, not an offset: starting it from offset 0, events will "
                      "be re-sent", self.path, text[:40])
            return 0
        return int(text)

    def commit(self, offset):
        """Durably record `offset` as the next one to deliver (cooperative: I/O in the thread pool)."""
        blocking.call(self._write, offset)
        self.offset = offset

    def _write(self, offset):
        write_atomically(self.path, f"{offset}\n".encode("ascii"))


def write_atomically(path, data):
    """Replace the file at `path` with `data`: after a crash it holds the old or the new content,
    never a mix (temporary file, fsync, rename, fsync the directory). Blocking: call it in the
    thread pool."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
