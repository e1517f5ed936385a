"""`zcmd` with an injected full disk, for machines where the fault suite cannot mount a small
tmpfs: `python -m tests.faults.enospc_serve -y CONFIG serve`.

While the file named by the environment variable ZSPARK_TEST_ENOSPC_FLAG exists, every write the
journal makes (records, cursors, dead letters) fails with ENOSPC, as on a full file system;
deleting the file frees the space."""
import errno
import os
import sys

from gevent import monkey

monkey.patch_all()

from zspark import cli, forwarder  # noqa: E402
from zspark.journal import cursor, journal  # noqa: E402


def failing_while(flag, write):
    def wrapper(*args, **kw):
        if os.path.exists(flag):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(*args, **kw)
    return wrapper


def main():
    flag = os.environ["ZSPARK_TEST_ENOSPC_FLAG"]
    journal._write_at = failing_while(flag, journal._write_at)
    cursor.write_atomically = failing_while(flag, cursor.write_atomically)
    cursor._write_slot = failing_while(flag, cursor._write_slot)
    forwarder._append_lines = failing_while(flag, forwarder._append_lines)
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
