"""An owner for tests/test_children.py: starts tests.child_echo, prints its pid, waits for ever."""
import sys

import gevent
from gevent.queue import Queue

from zspark import children


def main():
    hello = Queue()

    def on_link(link):
        while True:
            hello.put(link.recv())

    child = children.Child("echo", "tests.child_echo", {"x": 1}, on_link)
    child.start()
    print(hello.get()[0]["pid"], flush=True)
    gevent.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
