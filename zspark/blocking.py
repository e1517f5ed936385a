"""Blocking calls run in gevent's thread pool, so the event loop keeps serving meanwhile: the one
way zspark uses that pool (disk reads and writes, librdkafka's waits, files under /proc).

`call(func, *args, **kw)` waits cooperatively for `func(*args, **kw)` and returns its result, or
raises its OSError in the calling greenlet. gevent's hub prints a traceback for every exception a
pool task raises; a failing disk (a full one fails every write) would flood the log with them, so
an OSError travels back as a value instead and is raised here. `spawn(func, *args)` starts one
without waiting for it (what it returns or raises is dropped, an OSError silently).

`fsync_dir(directory)` is a blocking call of its own (run it through `call`): it makes a file
created, renamed or removed in `directory` durable.
"""
import os

from gevent.hub import get_hub


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


def _catching(func, args, kw):
    try:
        return func(*args, **kw)
    except OSError as e:
        return _Raised(e)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def call(func, *args, **kw):
    result = get_hub().threadpool.apply(_catching, (func, args, kw))
    if isinstance(result, _Raised):
        raise result.error
    return result


def spawn(func, *args):
    get_hub().threadpool.spawn(_catching, func, args, {})
