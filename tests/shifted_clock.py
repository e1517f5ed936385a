"""`zcmd` with the hour-complete clock shifted, so that a test can move it past an hour's end:
`python -m tests.shifted_clock -y CONFIG serve`, with $ZSPARK_TEST_CLOCK_OFFSET_FILE naming a file
that holds the seconds to add to the real time (read at every look; a test rewrites it to move
the clock). Only the hour tracker's clock moves: events are still stamped with the real time."""
import os
import sys
import time

from gevent import monkey

monkey.patch_all()

from zspark import hours, server  # noqa: E402
from zspark import cli  # noqa: E402

CLOCK_OFFSET_ENV = "ZSPARK_TEST_CLOCK_OFFSET_FILE"
MODULE = "tests.shifted_clock"


def shifted_clock(path):
    """time.time, plus the seconds in the file at `path` (0 while it cannot be read)."""
    def clock():
        try:
            with open(path, encoding="ascii") as f:
                return time.time() + float(f.read().strip() or 0)
        except (OSError, ValueError):
            return time.time()
    return clock


class ShiftedHourTracker(hours.HourTracker):
    def __init__(self, *args, **kw):
        super().__init__(*args, **{**kw, "clock": shifted_clock(os.environ[CLOCK_OFFSET_ENV])})


def main():
    server.HourTracker = ShiftedHourTracker
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
