"""Blocking disk calls run in gevent's thread pool, so the event loop keeps serving meanwhile.

`call(func, *args)` waits cooperatively for `func(*args)` and returns its result, or raises its
OSError in the calling greenlet. gevent's hub prints a traceback for every exception a pool task
raises; a failing disk (a full one fails every write) would flood the log with them, so an
OSError travels back as a value instead and is raised here.

`fsync_dir(directory)` is a blocking call of its own (run it through `call`): it makes a file
created, renamed or removed in `directory` durable.
"""
import os

from gevent.hub import get_hub


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


def _catching(func, args):
    try:
        return func(*args)
    except OSError as e:
        return _Raised(e)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def call(func, *args):
    result = get_hub().threadpool.apply(_catching, (func, args))
    if isinstance(result, _Raised):
        raise result.error
    return result
