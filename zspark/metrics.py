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
    def __init__(self, name):
        self.name = name
        self.accepted = 0
        self.rejected = 0
        self.refused = 0  # valid events the journal could not take (full, write error, stopping)
        self.last_rejection = None
        self.details = None  # () -> more counters for as_dict (a source's connections)
        self._samples = collections.deque(maxlen=RATE_WINDOW_S)  # (monotonic time, accepted)

    def sample(self, now):
        self._samples.append((now, self.accepted))

    def rate(self, now=None):
        """Accepted events per second since the oldest sample (RATE_WINDOW_S seconds ago at most)."""
        if not self._samples:
            return 0.0
        then, count = self._samples[0]
        elapsed = (time.monotonic() if now is None else now) - then
        return (self.accepted - count) / elapsed if elapsed > 0 else 0.0

    def reject(self, reason, count=1):
        self.rejected += count
        self.last_rejection = one_line(reason)  # may quote the sender: shown in /status and zcmd status

    def as_dict(self):
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


class RateLimitedLog:
    """Log at most `burst` messages per `interval` seconds, then a count of the ones held back."""

    def __init__(self, logger, level=logging.WARNING, burst=10, interval=60.0):
        self.logger = logger
        self.level = level
        self.burst = burst
        self.interval = interval
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0

    def __call__(self, msg, *args):
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                self.logger.log(self.level, "... %d more like this in the last %.0fs were not logged",
                                self._suppressed, self.interval)
            self._window_start = now
            self._in_window = 0
            self._suppressed = 0
        if self._in_window < self.burst:
            self._in_window += 1
            self.logger.log(self.level, msg, *args)
        else:
            self._suppressed += 1
