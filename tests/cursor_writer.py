"""A cursor committer to be killed: `python -m tests.cursor_writer JOURNAL_DIR NAME`.

Opens `zspark.journal.Cursor(JOURNAL_DIR, NAME)`, prints `OPEN <offset>`, then commits the next
offset, and the next, for ever (through the thread pool, as a forwarder does), printing
`C <offset>` with a single os.write only after each commit returned. tests/test_crash.py
SIGKILLs it and checks that the cursor reads as the last printed offset or the one in flight.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402


def main(argv):
    from zspark.journal import Cursor

    cursor = Cursor(argv[0], argv[1])
    os.write(1, f"OPEN {cursor.offset}\n".encode())
    offset = cursor.offset
    while True:
        offset += 1
        cursor.commit(offset)
        os.write(1, f"C {offset}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1:])
