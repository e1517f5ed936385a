"""The one retry policy: how long to wait before the next attempt after a failure.

`Backoff` waits `initial * 2**(n-1)` seconds after the n-th failure in a row, at most `maximum`,
jittered down to between `1 - jitter` and 1 of that (so that many retrying at once spread out),
for ever, or until `timeout` seconds after it was made or last reset (`failed` then says so). The forwarder,
`zcmd replay` and the ZeroMQ source retry with it:

    backoff = Backoff(0.1, 30.0)
    while True:
        try:
            result = attempt()
            break
        except TransientDeliveryError:
            if backoff.failed() is None or not backoff.wait():  # past the deadline, or stopping
                ...give up...
    backoff.reset()

`wake()` ends the wait in progress (or the next one) at once: a stop, or a destination known to
be back. The waits are gevent sleeps: nothing blocks the event loop.
"""
import random
import time

from gevent.event import Event


class Backoff:
    def __init__(self, initial, maximum, jitter=0.5, timeout=None):
        """`initial`, `maximum` and `timeout` in seconds; `timeout` None: retry for ever."""
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.timeout = timeout
        self.attempt = 0  # failures in a row so far
        self.delay = 0.0  # the wait chosen after the last failure
        self._deadline = None
        self._start_deadline()
        self._woken = Event()
        self.stopped = False

    def failed(self):
        """Count a failure; return how long to wait before the next attempt (None: the deadline
        has passed, give up)."""
        now = time.monotonic()
        self.attempt += 1
        delay = min(self.maximum, self.initial * 2 ** min(self.attempt - 1, 30))
        delay *= random.uniform(1.0 - self.jitter, 1.0)
        if self._deadline is not None:
            remaining = self._deadline - now
            if remaining <= 0:
                self.delay = 0.0
                return None
            delay = min(delay, remaining)
        self.delay = delay
        return delay

    def wait(self, delay=None):
        """Wait `delay` (default: the one `failed()` chose); False if stopped meanwhile (or
        before). A `wake()` ends the wait early."""
        if self.stopped:
            return False
        if delay is None:
            delay = self.delay
        if self._woken.wait(delay):
            self._woken.clear()
        return not self.stopped

    def wake(self):
        """End the current wait now (or the next one, if none is in progress)."""
        self._woken.set()

    def stop(self):
        """End every wait now and from now on."""
        self.stopped = True
        self._woken.set()

    def reset(self):
        """An attempt succeeded: the next failure waits `initial` again, the deadline starts over."""
        self.attempt = 0
        self.delay = 0.0
        self._start_deadline()

    def _start_deadline(self):
        if self.timeout is not None:
            self._deadline = time.monotonic() + self.timeout
