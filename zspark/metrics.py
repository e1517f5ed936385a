"""Counters the process keeps about itself, read by `/status`, `/metrics` (zspark/prometheus.py) and
the heartbeat notices.

Per source: events accepted, events rejected (with the last reason), requests refused because
the journal was full or the server stopping, and the rate of accepted events over about the last
minute. The rate costs nothing per event: `Metrics.sample()`, called once a second by the server,
notes each source's `accepted` count, and `rate()` divides the growth since the oldest note by
the time elapsed. `RateLimitedLog` keeps a flood of bad input from flooding the log: it logs
the first few in each interval and then how many it held back.
"""
import collections
import logging
import time

from .safetext import one_line

RATE_WINDOW_S = 60  # the rate covers this many seconds (less just after the start)


class SourceStats:
    def __init__(self, name, started=None):
        self.name = name
        self.accepted = 0
        self.rejected = 0
        self.refused = 0  # valid events the journal could not take (full, write error, stopping)
        self.last_rejection = None
        self.details = None  # () -> more counters for status() (a source's connections)
        self._samples = collections.deque(maxlen=RATE_WINDOW_S)  # (monotonic time, accepted)
        # Counted from the source's start, not from the sampler's first look: events may be
        # accepted before it (an HTTP worker listens while the others and the forwarders start).
        self._samples.append((time.monotonic() if started is None else started, 0))

    def sample(self, now):
        self._samples.append((now, self.accepted))

    def rate(self, now=None):
        """Accepted events per second since the oldest sample (RATE_WINDOW_S seconds ago at most)."""
        then, count = self._samples[0]
        elapsed = (time.monotonic() if now is None else now) - then
        return (self.accepted - count) / elapsed if elapsed > 0 else 0.0

    def reject(self, reason, count=1):
        self.rejected += count
        self.last_rejection = one_line(reason)  # may quote the sender: shown in /status and zcmd status

    def status(self):
        """The source's part of `/status`."""
        return {"accepted": self.accepted, "rejected": self.rejected, "refused": self.refused,
                "last_rejection": self.last_rejection, "rate": round(self.rate(), 3),
                **(self.details() if self.details else {})}


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.sources = {}

    def source(self, name):
        stats = self.sources.get(name)
        if stats is None:
            stats = self.sources[name] = SourceStats(name)
        return stats

    def sample(self):
        """Note every source's count, for its rate; call once a second."""
        now = time.monotonic()
        for stats in self.sources.values():
            stats.sample(now)

    def uptime(self):
        return time.time() - self.started


# The processes that log the same kinds of line, each with its own limits (http.workers): each
# takes its share of every burst, so that together they log about what one process would.
_processes_sharing = 1


def share_log_limits(processes):
    """This process is one of `processes` that log the same lines (an HTTP worker)."""
    global _processes_sharing
    _processes_sharing = max(1, processes)


class RateLimitedLog:
    """Log at most `burst` messages of each kind (format string) per `interval` seconds, then a
    count of the ones held back: a flood of one kind (head timeouts, say) never hides another
    (the descriptors running out). In one of several processes sharing the limits, its share
    of `burst` (at least 1)."""

    def __init__(self, logger, level=logging.WARNING, burst=10, interval=60.0):
        self.logger = logger
        self.level = level
        self.burst = burst
        self.interval = interval
        self._windows = {}  # format string -> [window start, logged in it, held back in it]

    def __call__(self, msg, *args):
        now = time.monotonic()
        window = self._windows.get(msg)
        if window is None:
            window = self._windows[msg] = [now, 0, 0]
        elif now - window[0] >= self.interval:
            if window[2]:
                self.logger.log(self.level, "... %d more like this in the last %.0fs were not logged: %s",
                                window[2], self.interval, msg)
            window[:] = now, 0, 0
        if window[1] < max(1, self.burst // _processes_sharing):
            window[1] += 1
            self.logger.log(self.level, msg, *args)
        else:
            window[2] += 1


def numbers_flat(data, prefix=""):
    """(key, number) pairs of a nested dict (a source's details), nested keys joined by "."."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from numbers_flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + key, value
