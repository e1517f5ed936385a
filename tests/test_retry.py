"""The one retry policy (zspark/retry.py): waits that double from `initial` up to `maximum`,
jittered down by at most `jitter`, for ever or until a deadline; a wake ends a wait at once, a
stop ends every wait, a reset starts over."""
import time
import unittest
from unittest import mock

import gevent

from zspark.retry import Backoff


class Delays(unittest.TestCase):
    def test_waits_double_up_to_the_cap(self):
        backoff = Backoff(0.1, 1.0, jitter=0.0)
        self.assertEqual([round(backoff.failed(), 6) for _ in range(7)], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        self.assertEqual(backoff.attempt, 7)

    def test_jitter_shortens_a_wait_by_at_most_its_share(self):
        backoff = Backoff(1.0, 1.0, jitter=0.5)
        delays = [backoff.failed() for _ in range(200)]
        self.assertTrue(all(0.5 <= d <= 1.0 for d in delays), (min(delays), max(delays)))
        self.assertGreater(len(set(delays)), 1, "no jitter at all")

    def test_a_long_run_of_failures_stays_at_the_cap(self):
        backoff = Backoff(0.1, 30.0, jitter=0.0)
        for _ in range(500):
            delay = backoff.failed()
        self.assertEqual(delay, 30.0)

    def test_reset_starts_over(self):
        backoff = Backoff(0.1, 1.0, jitter=0.0)
        for _ in range(4):
            backoff.failed()
        backoff.reset()
        self.assertEqual(round(backoff.failed(), 6), 0.1)
        self.assertEqual(backoff.attempt, 1)


class Deadline(unittest.TestCase):
    def test_no_deadline_retries_for_ever(self):
        backoff = Backoff(0.1, 1.0)
        with mock.patch("zspark.retry.time.monotonic", return_value=time.monotonic() + 10 ** 9):
            self.assertIsNotNone(backoff.failed())

    def test_a_wait_never_goes_past_the_deadline_and_after_it_there_is_none(self):
        start = time.monotonic()
        with mock.patch("zspark.retry.time.monotonic", return_value=start):
            backoff = Backoff(4.0, 8.0, jitter=0.0, timeout=5.0)
        with mock.patch("zspark.retry.time.monotonic", return_value=start + 3.0):
            self.assertEqual(backoff.failed(), 2.0, "4 s capped at the 2 s left")
        with mock.patch("zspark.retry.time.monotonic", return_value=start + 5.0):
            self.assertIsNone(backoff.failed(), "past the deadline: give up")
        with mock.patch("zspark.retry.time.monotonic", return_value=start + 5.0):
            backoff.reset()
            self.assertEqual(backoff.failed(), 4.0, "a reset starts a new deadline")


class Waiting(unittest.TestCase):
    def waiting(self, then=None):
        """A Backoff in a minute-long wait; `then` is called on it a moment later."""
        backoff = Backoff(60.0, 60.0)
        backoff.failed()
        if then is not None:
            gevent.spawn_later(0.05, then, backoff)
        return backoff

    def test_wake_ends_the_wait_in_progress(self):
        backoff = self.waiting(then=Backoff.wake)
        with gevent.Timeout(10):
            self.assertTrue(backoff.wait())

    def test_a_wake_before_the_wait_ends_the_next_one_only(self):
        backoff = self.waiting()
        backoff.wake()
        with gevent.Timeout(10):
            self.assertTrue(backoff.wait())
        with self.assertRaises(gevent.Timeout), gevent.Timeout(0.1):
            backoff.wait()

    def test_stop_ends_every_wait(self):
        backoff = self.waiting(then=Backoff.stop)
        with gevent.Timeout(10):
            self.assertFalse(backoff.wait())
            self.assertFalse(backoff.wait())


if __name__ == "__main__":
    unittest.main()
