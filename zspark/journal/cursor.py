"""Named cursors: how far a consumer (a forwarder) has durably got in the journal.

One file per cursor under `<journal>/cursors/<name>`, holding the next offset to deliver. A
commit sits on every event's delivery path, so it is one `pwrite` + `fdatasync` into a file that
never changes size (no rename, no directory or size metadata to sync):

    the file       FILE_SIZE bytes: two slots, each at the start of its own SLOT_SPACING block,
                   so a write torn by a crash (even a whole block of garbage) hits one slot only
    a slot         magic (8 bytes), sequence (u64), offset (u64), CRC-32 of those 24 bytes (u32),
                   little-endian
    commit         writes the slot that does not hold the newest record, with the sequence one
                   higher; the newest record stays intact until the new one is durable
    load           the valid slot with the highest sequence: after a crash at any point, the old
                   offset or the new one, never garbage and never more than was committed
    failure        a commit that raised leaves sequence and slot as they were: the next one
                   writes the same slot again, never the one holding the newest intact record

The file is created once, on the first commit, by `write_atomically` (every byte written, the
directory synced), so creation is crash-safe too. A file in the old format (decimal text, "123\\n",
from an older zspark) is read, and replaced by the slot format on the first commit.

`read_cursor` / `read_cursors` are the only way anything else reads a cursor (read-only, they
never write). A cursor that cannot be read (both slots damaged) logs an error and reads as 0:
its events are sent again (at least once).

Every open goes through files.open_file: a symbolic link where a cursor file, its temporary file
or `cursors/` should be is an error naming the path, never followed.
"""
import errno
import logging
import os
import re
import struct
import threading
import zlib

from .. import blocking
from . import files

log = logging.getLogger("zspark.journal")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")  # \Z: $ would take a final newline

MAGIC = b"zsCurs01"
_SLOT = struct.Struct("<8sQQ")  # magic, sequence, offset; the CRC-32 of these follows
_CRC = struct.Struct("<I")
RECORD_SIZE = _SLOT.size + _CRC.size
SLOT_SPACING = 4096
FILE_SIZE = 2 * SLOT_SPACING


def cursor_dir(journal_dir):
    return os.path.join(journal_dir, "cursors")


def list_cursors(journal_dir):
    try:
        return sorted(n for n in os.listdir(cursor_dir(journal_dir)) if _NAME.match(n) and not n.startswith("."))
    except FileNotFoundError:
        return []


def cursor_path(journal_dir, name):
    if not _NAME.match(name) or name.startswith("."):
        raise ValueError(f"bad cursor name {name!r}: use letters, digits, '_', '-', '.'")
    return os.path.join(cursor_dir(journal_dir), name)


def read_cursor(journal_dir, name):
    """The next offset cursor `name` will deliver (0 if it has none yet). Read-only."""
    return _load(cursor_path(journal_dir, name)).offset


def read_cursors(journal_dir):
    """{name: offset} of every cursor in the journal at `journal_dir`. Read-only."""
    return {name: read_cursor(journal_dir, name) for name in list_cursors(journal_dir)}


class _Loaded:
    """What a cursor file holds: `offset`; `sequence` and `slot` of the newest valid record, and
    whether the file can take the next commit in place (`in_place`: slot format, full size)."""
    __slots__ = ("offset", "sequence", "slot", "in_place")

    def __init__(self, offset=0, sequence=0, slot=1, in_place=False):
        self.offset, self.sequence, self.slot, self.in_place = offset, sequence, slot, in_place


def _read(path):
    with os.fdopen(files.open_file(path, os.O_RDONLY), "rb") as f:
        return f.read(FILE_SIZE + 1)


def _load(path):
    try:
        data = _read(path)
    except FileNotFoundError:
        return _Loaded()
    except OSError as e:
        log.error("cursor %s unreadable (%s): starting it from offset 0, events will be re-sent",
                  path, e)
        return _Loaded()
    valid = _valid_slots(data)
    if _one_slot_damaged(data, valid):
        # Perhaps a commit was writing that slot just then (a reader beside a running server):
        # look again before calling it damaged.
        try:
            data = _read(path)
            valid = _valid_slots(data)
        except OSError:
            pass
    if valid:
        sequence, slot, offset = max(valid)
        if _one_slot_damaged(data, valid):
            log.warning("cursor %s: one of its two slots is damaged (a write cut short by a crash?); "
                        "using the other: offset %d", path, offset)
        return _Loaded(offset, sequence, slot, len(data) == FILE_SIZE)
    if data.strip().isdigit():  # the old format: decimal text
        return _Loaded(int(data))
    log.error("cursor %s holds %r, not an offset: starting it from offset 0, events will be re-sent",
              path, data[:40])
    return _Loaded()


def _valid_slots(data):
    """[(sequence, slot, offset)] of the intact slot records in a cursor file's `data`."""
    valid = []
    for slot in (0, 1):
        found = _parse_slot(data[slot * SLOT_SPACING:slot * SLOT_SPACING + RECORD_SIZE])
        if found is not None:
            valid.append((found[0], slot, found[1]))
    return valid


def _one_slot_damaged(data, valid):
    """True if one slot is intact and the other is not the blank slot of a new file."""
    if len(valid) != 1:
        return False
    sequence, slot, _ = valid[0]
    return sequence > 1 or bool(data[(1 - slot) * SLOT_SPACING:(2 - slot) * SLOT_SPACING].strip(b"\0"))


def _parse_slot(raw):
    """(sequence, offset) from an intact slot record, else None."""
    if len(raw) != RECORD_SIZE:
        return None
    magic, sequence, offset = _SLOT.unpack_from(raw)
    (crc,) = _CRC.unpack_from(raw, _SLOT.size)
    if magic != MAGIC or crc != zlib.crc32(raw[:_SLOT.size]):
        return None
    return sequence, offset


def _slot_record(sequence, offset):
    head = _SLOT.pack(MAGIC, sequence, offset)
    return head + _CRC.pack(zlib.crc32(head))


class Cursor:
    def __init__(self, journal_dir, name):
        self.name = name
        self.path = cursor_path(journal_dir, name)
        self.directory = os.path.dirname(self.path)
        self._state = _load(self.path)
        self.offset = self._state.offset
        self._fd = None
        self._lock = threading.Lock()  # one pool thread at a time uses or closes the descriptor

    def commit(self, offset):
        """Durably record `offset` as the next one to deliver (cooperative: I/O in the thread pool)."""
        blocking.call(self._write, offset)
        self.offset = offset

    def close(self):
        """Close the file descriptor kept between commits (a later commit opens it again)."""
        blocking.call(self._close)

    def _write(self, offset):
        with self._lock:
            state = self._state
            if self._fd is not None and not _same_file(self._fd, self.path):
                # Deleted or replaced while held open (an operator restoring a backup): writing
                # on into the old file would leave no cursor on disk. Write the file anew.
                os.close(self._fd)
                self._fd = None
                state.in_place = False
            if self._fd is None and state.in_place:
                try:
                    self._fd = files.open_file(self.path, os.O_RDWR)
                except FileNotFoundError:
                    state.in_place = False
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
                    state.in_place = False  # a link in its place: replaced by the file, never followed
            if not state.in_place:
                # No file yet, the old format, a damaged or a replaced one: create it whole,
                # atomically, its record in slot 0 and the other slot blank.
                sequence, slot = 1, 0
                write_atomically(self.path, _slot_record(sequence, offset).ljust(FILE_SIZE, b"\0"))
                state.in_place = True
            else:
                sequence, slot = state.sequence + 1, 1 - state.slot
                # On failure the state is unchanged: the next commit writes this slot again and
                # the other, the newest intact record, is never touched meanwhile.
                _write_slot(self._fd, _slot_record(sequence, offset), slot * SLOT_SPACING)
            state.sequence, state.slot = sequence, slot

    def _close(self):
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _same_file(fd, path):
    """True if `path` still names the file open as `fd` (a link in its place does not)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _write_slot(fd, record, position):
    """One slot record, durable. Blocking: call it in the thread pool."""
    if os.pwrite(fd, record, position) != len(record):
        raise OSError(errno.EIO, f"short write of a cursor slot at {position}")
    os.fdatasync(fd)


def write_atomically(path, data):
    """Replace the file at `path` with `data`: after a crash it holds the old or the new content,
    never a mix (temporary file, fsync, rename, fsync the directory). Blocking: call it in the
    thread pool."""
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    dir_fd = files.open_dir(directory)  # the rename and the sync happen in this directory, not a link's
    try:
        tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = files.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd,
                             shown=os.path.join(directory, tmp))
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
