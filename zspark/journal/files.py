"""The journal directory's files: who may own and change them, and opening them safely.

What zspark keeps under `journal.dir` (segments, `.lock`, `cursors/`, `dead-letter/`,
`notices/`) decides what is delivered where, and zspark may run as root; so whoever else can
write there, or plant a symbolic link there, could make it overwrite files of their choosing or
deliver what they like. Two parts:

- `open_file` / `open_dir`: every open of a journal file goes through them (readers use
  `READ_FLAGS` directly). They never follow a symbolic link as the last component (O_NOFOLLOW),
  never leak the descriptor into a child (O_CLOEXEC), never block on a FIFO planted there
  (O_NONBLOCK, which means nothing for a regular file), and accept only a regular file or a
  directory. A link where a file should be is an OSError (ELOOP) whose message names the path.
  `open_file` opens the file's parent with O_NOFOLLOW too, and the file relative to it.

- `open_journal_dir`: at journal open, creates the directory owner-only if it is missing, and
  refuses (`UnsafeJournalDir`, a message naming `journal.dir`, the path, what is wrong and the
  fix) the directory, or anything in it, that is a symbolic link, anything but a regular file or
  a directory, a file with more than one hard link (another name elsewhere is the same file),
  owned by another user than the process's effective uid, or writable by group or others; and a
  directory above it that anyone but root or us could rename things in (writable by group or
  others without the sticky bit, or owned by another user), since they could swap the journal
  for a directory or link of their own. What is ours and only readable by others (a clone's
  0755 `journal/`, a copied 0644 segment) is tightened to owner-only, with one log line.
  `allow_shared=True` (`journal.allow_shared_dir`) turns off the owner and mode rules, never the
  link, type and hard-link rules. It returns a descriptor of the directory, which the journal
  keeps and opens its own files relative to, so a directory swapped later cannot redirect them.
"""
import errno
import functools
import grp
import logging
import os
import pwd
import re
import shlex
import stat

from ..safetext import one_line

log = logging.getLogger("zspark.journal")

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
READ_FLAGS = os.O_RDONLY | NOFOLLOW
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# What zspark keeps in the journal directory: segments, the lock, the state directories; and
# what a directory may hold from elsewhere (git's placeholder, a file system's lost+found).
_OWN_NAME = re.compile(r"(\d{20}\.log|\.lock|cursors|dead-letter|kafka|notices|\.gitkeep|lost\+found)\Z")

LINK_REFUSED = "a symbolic link: zspark does not follow links in its journal directory"


class UnsafeJournalDir(OSError):
    """The journal directory, or something in or above it, is not safe to use; the message
    names journal.dir, the path, what is wrong and how to fix it."""

    def __str__(self):
        return self.args[0]


def open_dir(path, dir_fd=None, shown=None):
    """A descriptor of the directory `path` (relative to `dir_fd` if given), never through a link."""
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _clearer(e, shown or path) from None


def open_file(path, flags, mode=0o600, dir_fd=None, shown=None):
    """os.open of a regular file, never through a link (see the module docstring). Without
    `dir_fd` the parent directory is opened first, also without following a link."""
    if dir_fd is None:
        parent = open_dir(os.path.dirname(path) or ".")
        try:
            return open_file(os.path.basename(path), flags, mode, parent, shown=path)
        finally:
            os.close(parent)
    shown = shown or path
    try:
        fd = os.open(path, flags | NOFOLLOW, mode, dir_fd=dir_fd)
    except OSError as e:
        raise _clearer(e, shown) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", shown)
    return fd


def _clearer(error, path):
    """The same error (OSError picks the subclass from errno), naming the whole path, and saying
    why for a link."""
    if error.errno == errno.ELOOP:
        return OSError(errno.ELOOP, LINK_REFUSED, path)
    if error.errno == errno.ENOTDIR:
        return OSError(errno.ENOTDIR, "not a directory (or a symbolic link to one, which zspark does "
                                      "not follow in its journal directory)", path)
    return OSError(error.errno, error.strerror, path)


# -- the check at journal open -----------------------------------------------------------------

def open_journal_dir(directory, allow_shared=False):
    """Create `directory` (0700) if missing, check it and everything in and above it, and return
    a descriptor of it. Raises UnsafeJournalDir."""
    directory = os.path.abspath(directory)
    if os.path.islink(directory):
        _refuse(directory, directory, f"is a symbolic link (to {os.path.realpath(directory)})",
                f"set journal.dir to {shlex.quote(os.path.realpath(directory))} itself")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not allow_shared:
        _check_ancestors(directory)
    try:
        fd = open_dir(directory)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse(directory, directory, f"is {e.strerror}", "point journal.dir at a directory")
        raise
    try:
        _Walk(directory, allow_shared).run(fd)
    except BaseException:
        os.close(fd)
        raise
    if allow_shared:
        log.info("journal %s: journal.allow_shared_dir is true, so its owner and modes are not checked",
                 directory)
    return fd


def _check_ancestors(directory):
    """Every directory above the journal (as written and as resolved) must let nobody but root
    and us rename or replace what is in it."""
    euid = os.geteuid()
    seen = set()
    for path in (directory, os.path.realpath(directory)):
        parent = os.path.dirname(path)
        while True:
            if parent not in seen:
                seen.add(parent)
                st = os.stat(parent)
                fix = f"or choose a journal.dir whose parents only root or {_user(euid)} can change"
                if st.st_uid not in (0, euid):
                    _refuse(directory, parent, f"is above it and belongs to {_user(st.st_uid)}, who could "
                                               "swap the journal for something else",
                            f"chown {_user(euid)} {shlex.quote(parent)}, {fix}")
                if others_can_write(st) and not st.st_mode & stat.S_ISVTX:
                    _refuse(directory, parent, f"is above it and writable by group or others without the "
                                               f"sticky bit (mode {_mode(st)}), so they could swap the "
                                               "journal for something else",
                            f"chmod go-w {shlex.quote(parent)}, {fix}")
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)


class _Walk:
    """Checks the journal directory and everything in it, through descriptors, never a link."""

    def __init__(self, directory, allow_shared):
        self.directory = directory
        self.allow_shared = allow_shared
        self.euid = os.geteuid()
        self.tightened = []

    def run(self, fd):
        if not self.allow_shared:
            self._refuse_foreign(fd)  # before anything is changed
        self._check(fd, self.directory, is_dir=True)
        self._entries(fd, self.directory)
        if self.tightened:
            (path, mode), more = self.tightened[0], len(self.tightened) - 1
            log.warning("journal %s: made %s owner-only (it was %s: others could read it or its group write it)%s; the "
                        "journal holds every event", self.directory, path, mode,
                        f", and {more} more file(s) or directories inside it" if more else "")

    def _refuse_foreign(self, fd):
        """A directory that holds what zspark did not make is not the journal's own (`journal.dir:
        .` in an application's directory): zspark would make all of it owner-only."""
        with os.scandir(fd) as it:
            foreign = sorted(entry.name for entry in it if not _OWN_NAME.match(entry.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            _refuse(self.directory, self.directory,
                    f"holds files zspark did not make ({shown}): it is not a directory of the journal's "
                    "own, and zspark would make everything in it owner-only",
                    "give journal.dir a directory of its own (a new or empty one, such as "
                    f"{shlex.quote(os.path.join(self.directory, 'journal'))}), or set "
                    "journal.allow_shared_dir: true to leave the files' modes alone")

    def _entries(self, dir_fd, path):
        with os.scandir(dir_fd) as it:
            names = [entry.name for entry in it]
        for name in names:
            child = os.path.join(path, name)
            try:
                self._entry(dir_fd, name, child)
            except FileNotFoundError:
                continue  # gone meanwhile: a temporary file of a server already running here

    def _entry(self, dir_fd, name, child):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            _refuse(self.directory, child, f"is {LINK_REFUSED} (it points to {_link_target(dir_fd, name)})",
                    f"remove the link (rm {shlex.quote(child)}); if it stood for a file moved "
                    "elsewhere, move the file back")
        if stat.S_ISDIR(st.st_mode):
            fd = open_dir(name, dir_fd=dir_fd, shown=child)
            try:
                self._check(fd, child, is_dir=True)
                self._entries(fd, child)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            self._check_file(dir_fd, name, child, st)
        else:
            _refuse(self.directory, child, "is neither a regular file nor a directory",
                    f"remove it (rm {shlex.quote(child)})")

    def _check_file(self, dir_fd, name, path, st):
        if st.st_nlink > 1:
            _refuse(self.directory, path, f"has {st.st_nlink} hard links: another name elsewhere is the "
                                          "same file, and writing the journal would change it too",
                    f"replace it with a copy of its own (cp -p {shlex.quote(path)} {shlex.quote(path)}.copy && "
                    f"mv {shlex.quote(path)}.copy {shlex.quote(path)})")
        if self.allow_shared or self._problem(st) is not None or not st.st_mode & 0o077:
            self._check_stat(st, path, is_dir=False)  # nothing to tighten: no need to open it
            return
        fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)  # only to tighten it
        try:
            self._check(fd, path, is_dir=False)
        finally:
            os.close(fd)

    def _check(self, fd, path, is_dir):
        st = os.fstat(fd)
        self._check_stat(st, path, is_dir)
        if not self.allow_shared and st.st_mode & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
            self.tightened.append((path, _mode(st)))

    def _check_stat(self, st, path, is_dir):
        problem = self._problem(st)
        if problem is None:
            return
        owner = st.st_uid != self.euid
        mode = "700" if is_dir else "600"
        if owner:
            fix = (f"chown -R {_user(self.euid)} {shlex.quote(self.directory)} (or run zspark as "
                   f"{_user(st.st_uid)})")
        elif path == self.directory:
            fix = f"chmod {mode} {shlex.quote(path)}"
        else:
            fix = f"chmod {mode} {shlex.quote(path)} (or chmod -R go-w {shlex.quote(self.directory)})"
        _refuse(self.directory, path, problem, fix + ", or set journal.allow_shared_dir: true if the "
                "sharing is on purpose")

    def _problem(self, st):
        if self.allow_shared:
            return None
        if st.st_uid != self.euid:
            return (f"is owned by {_user(st.st_uid)}, not by {_user(self.euid)} who runs zspark: "
                    "another user controls what zspark would write and deliver")
        if others_can_write(st):
            return (f"is writable by group or others (mode {_mode(st)}): they could change what zspark "
                    "writes and delivers")
        return None


def others_can_write(st):
    """Whether anyone but the owner of what `st` describes can write it: others, or a group with
    another user in it. (Debian's and Ubuntu's user private groups hold their owner alone: their
    umask 002 makes a fresh clone group-writable, and that is harmless.)"""
    if st.st_mode & 0o002:
        return True
    return bool(st.st_mode & 0o020) and not _private_group(st.st_gid, st.st_uid)


@functools.lru_cache(maxsize=64)
def _private_group(gid, uid):
    """True if no user but `uid` is in group `gid`, as a member or by primary group."""
    try:
        name = pwd.getpwuid(uid).pw_name
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
    return all(m == name for m in members) and all(p.pw_uid == uid for p in pwd.getpwall() if p.pw_gid == gid)


def _refuse(directory, path, problem, fix):
    where = directory if path == directory else f"{directory}: {path}"
    message = f"journal.dir {where} {problem}; fix: {fix}"
    # Names in the directory and link targets are anybody's text: keep them to one printable line.
    raise UnsafeJournalDir(one_line(message))


def _mode(st):
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _link_target(dir_fd, name):
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return "?"
