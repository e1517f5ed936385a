"""`zcmd` under a small open-files limit, as a service manager may start it:
`python -m tests.faults.limited_serve -y CONFIG serve`, with ZSPARK_TEST_NOFILE=SOFT[,HARD]
(HARD defaults to SOFT: then the server cannot raise its soft limit either)."""
import os
import resource
import sys

from gevent import monkey

monkey.patch_all()

from zspark import cli  # noqa: E402


def main():
    soft, _, hard = os.environ["ZSPARK_TEST_NOFILE"].partition(",")
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(soft), int(hard or soft)))
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
