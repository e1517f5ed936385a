"""The forwarder loop in one process, against a real journal and a scripted in-process sink: the
cursor moves only after `send` returned, transient failures are retried with capped backoff,
permanent refusals go to the dead-letter file and the stream goes on, a stop in the middle of a
retry leaves the cursor where it was, and the lag counts what is not yet delivered."""
import errno
import json
import os
import time
import unittest
from unittest import mock

import gevent
from gevent.event import Event

from zspark import forwarder as forwarder_module
from zspark.errors import PermanentDeliveryError, TransientDeliveryError
from zspark.event import normalize
from zspark.forwarder import BACKING_OFF, FAILED, RUNNING, STOPPED, Forwarder
from zspark.journal import Journal, encode_event
from zspark.journal import cursor as cursor_module

from .support import TempDir, wait_until


class FakeSink:
    """A sink whose behaviour the test scripts. Each `send` call is recorded with the offsets it
    was given and the forwarder's cursor at that moment; `failures` exceptions are raised first
    (one per call), then `gate` (if set) is waited on, then offsets in `refuse` are refused."""

    name = "fake"

    def __init__(self, failures=(), refuse=None, gate=None, fail_forever=None):
        self.failures = list(failures)
        self.fail_forever = fail_forever
        self.refuse = dict(refuse or {})
        self.gate = gate
        self.calls = []  # (monotonic time, [offsets], cursor offset at call time)
        self.delivered = []  # (offset, event) confirmed, in order
        self.closed = False
        self.forwarder = None

    def send(self, items):
        cursor = self.forwarder.cursor.offset if self.forwarder else None
        self.calls.append((time.monotonic(), [o for o, _ in items], cursor))
        if self.fail_forever is not None:
            raise self.fail_forever
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None:
            self.gate.wait()
        rejected = [(o, e, self.refuse[o]) for o, e in items if o in self.refuse]
        refused = {o for o, _, _ in rejected}
        self.delivered.extend((o, e) for o, e in items if o not in refused)
        return rejected

    def close(self):
        self.closed = True


def make_events(n, start=0):
    return [normalize({"type": "unit", "level": "info", "context": {"n": i}}, "http", "test")
            for i in range(start, start + n)]


class ForwarderCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.dir = self.tmp.join("journal")
        self.journal = Journal(self.dir, sync="batch", sync_interval=0.001).open()
        self.addCleanup(self.journal.close)

    def append(self, n, start=0):
        events = make_events(n, start)
        offsets = self.journal.append(events, encode_event)
        return [(o, e["_id"]) for o, e in zip(offsets, events)]

    def forwarder(self, sink, start=True, **kw):
        kw.setdefault("batch_wait", 0)
        kw.setdefault("backoff_initial", 0.01)
        kw.setdefault("backoff_max", 0.05)
        forwarder = Forwarder(self.journal, sink, **kw)
        sink.forwarder = forwarder
        self.addCleanup(forwarder.stop, 2)
        if start:
            forwarder.start()
        return forwarder

    def cursor_file(self, name="fake"):
        path = os.path.join(self.dir, "cursors", name)
        if not os.path.exists(path):
            return None
        return cursor_module.read_cursor(self.dir, name)

    def dead_letters(self, name="fake"):
        path = os.path.join(self.dir, "dead-letter", f"{name}.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f]


class Delivery(ForwarderCase):
    def test_the_cursor_advances_only_after_send_returned(self):
        gate = Event()
        sink = FakeSink(gate=gate)
        forwarder = self.forwarder(sink)
        ids = self.append(5)
        wait_until(lambda: sink.calls, message="the sink called")
        gevent.sleep(0.2)  # time enough to move a cursor it must not move
        self.assertEqual(forwarder.cursor.offset, 0, "cursor moved while send had not returned")
        self.assertIsNone(self.cursor_file(), "cursor file written while send had not returned")
        self.assertEqual(forwarder.lag, 5)
        self.assertEqual(forwarder.as_dict()["delivered"], 0)

        gate.set()
        wait_until(lambda: forwarder.cursor.offset == 5, message="cursor at 5")
        self.assertEqual(self.cursor_file(), 5, "the cursor file must hold the next offset to send")
        self.assertEqual(forwarder.lag, 0)
        self.assertEqual(forwarder.delivered, 5)
        self.assertEqual([(o, e["_id"]) for o, e in sink.delivered], ids)
        self.assertEqual([e["context"]["n"] for _, e in sink.delivered], list(range(5)))
        self.assertEqual(sink.calls[0][2], 0, "the cursor when send was called")

    def test_batches_are_bounded_ordered_and_each_event_is_sent_once(self):
        sink = FakeSink()
        forwarder = self.forwarder(sink, batch_size=7)
        ids = self.append(30)
        wait_until(lambda: forwarder.cursor.offset == 30, message="all 30 delivered")
        self.assertEqual([(o, e["_id"]) for o, e in sink.delivered], ids)
        for _, offsets, cursor in sink.calls:
            self.assertLessEqual(len(offsets), 7)
            self.assertEqual(offsets, list(range(offsets[0], offsets[0] + len(offsets))))
            self.assertEqual(cursor, offsets[0], "a batch starts at the cursor")
        self.assertEqual(forwarder.as_dict()["delivered"], 30)

    def test_a_trickle_is_delivered_as_it_comes(self):
        sink = FakeSink()
        forwarder = self.forwarder(sink, batch_wait=0.01)
        for i in range(5):
            self.append(1, i)
            wait_until(lambda: forwarder.cursor.offset == i + 1, timeout=5,
                       message=f"event {i} delivered without more events behind it")
        self.assertEqual([o for o, _ in sink.delivered], list(range(5)))

    def test_a_restart_resumes_at_the_saved_cursor(self):
        sink = FakeSink()
        forwarder = self.forwarder(sink)
        self.append(10)
        wait_until(lambda: forwarder.cursor.offset == 10, message="first 10 delivered")
        forwarder.stop(2)
        self.assertTrue(sink.closed)
        self.assertEqual(forwarder.state, STOPPED)
        self.append(4, 10)

        again = FakeSink()
        second = self.forwarder(again, start=False)
        self.assertEqual(second.cursor.offset, 10)
        self.assertEqual(second.lag, 4)
        second.start()
        wait_until(lambda: second.cursor.offset == 14, message="the 4 new events delivered")
        self.assertEqual([o for o, _ in again.delivered], [10, 11, 12, 13],
                         "a restart must not send again what was confirmed")


class Retry(ForwarderCase):
    def test_transient_failures_are_retried_with_growing_backoff_until_delivered(self):
        failures = [ConnectionError("broker down"), TimeoutError("no answer"), ConnectionError("still down")]
        gate = Event()
        sink = FakeSink(failures=failures, gate=gate)
        states = []
        forwarder = self.forwarder(sink, backoff_initial=0.1, backoff_max=10)

        def watch():
            while True:
                if not states or states[-1] != forwarder.state:
                    states.append(forwarder.state)
                gevent.sleep(0.002)

        watcher = gevent.spawn(watch)
        self.addCleanup(watcher.kill)
        self.append(3)
        wait_until(lambda: len(sink.calls) == 4, timeout=10, message="the fourth attempt")
        # Blocked in the successful attempt: the failures are counted, the cursor has not moved.
        self.assertEqual(forwarder.failed, 3)
        self.assertEqual(forwarder.last_error, "ConnectionError: still down")
        self.assertIsNotNone(forwarder.last_error_time)
        self.assertEqual(forwarder.cursor.offset, 0)
        self.assertEqual(forwarder.as_dict()["lag"], 3)
        gate.set()
        wait_until(lambda: forwarder.cursor.offset == 3, message="delivered after retries")
        gevent.sleep(0.02)
        watcher.kill()

        self.assertEqual([c[1] for c in sink.calls], [[0, 1, 2]] * 4, "every attempt resends the same batch")
        self.assertEqual(forwarder.state, RUNNING)
        self.assertEqual(states[0], RUNNING)
        self.assertIn(BACKING_OFF, states)
        self.assertEqual(states[-1], RUNNING)
        self.assertEqual(states[states.index(BACKING_OFF):], [BACKING_OFF, RUNNING],
                         f"running -> backing_off -> running, got {states}")
        # Delays are initial * 2^(n-1), jittered down to no less than half: >= 0.05, 0.1, 0.2 s.
        gaps = [b[0] - a[0] for a, b in zip(sink.calls, sink.calls[1:])]
        for gap, least in zip(gaps, (0.05, 0.1, 0.2)):
            self.assertGreaterEqual(gap, least * 0.95, f"retry came too early: gaps {gaps}")
        self.assertEqual(forwarder.delivered, 3)
        self.assertEqual(forwarder.as_dict()["failed"], 3, "failed attempts stay counted")
        self.assertEqual(forwarder.as_dict()["last_error"], "ConnectionError: still down")
        self.assertEqual(self.dead_letters(), [], "a transient failure is never dead-lettered")

    def test_backoff_is_capped_at_backoff_max(self):
        # An initial delay of 60 s capped at 0.05 s: without the cap the second attempt would
        # not come for at least 30 s.
        sink = FakeSink(failures=[TransientDeliveryError("x")] * 5)
        forwarder = self.forwarder(sink, backoff_initial=60, backoff_max=0.05)
        self.append(1)
        wait_until(lambda: forwarder.cursor.offset == 1, timeout=10,
                   message="delivery after 5 failures with backoff capped at 0.05 s")
        self.assertEqual(len(sink.calls), 6)
        self.assertEqual(forwarder.failed, 5)

    def test_stop_in_the_middle_of_a_retry_leaves_the_cursor(self):
        sink = FakeSink(fail_forever=ConnectionError("refused"))
        forwarder = self.forwarder(sink)
        self.append(6)
        wait_until(lambda: forwarder.failed >= 3, message="three failed attempts")
        self.assertEqual(forwarder.state, BACKING_OFF)
        self.assertEqual(forwarder.as_dict()["lag"], 6)
        forwarder.stop(2)
        self.assertEqual(forwarder.state, STOPPED)
        self.assertTrue(sink.closed)
        self.assertEqual(forwarder.cursor.offset, 0)
        self.assertIsNone(self.cursor_file(), "no cursor may be saved for an undelivered batch")
        self.assertEqual(self.dead_letters(), [])

        # The next forwarder on this journal sends all of them.
        again = FakeSink()
        second = self.forwarder(again)
        wait_until(lambda: second.cursor.offset == 6, message="resent after the restart")
        self.assertEqual([o for o, _ in again.delivered], list(range(6)))

    def test_stop_lets_the_batch_in_flight_finish(self):
        gate = Event()
        sink = FakeSink(gate=gate)
        forwarder = self.forwarder(sink)
        self.append(4)
        wait_until(lambda: sink.calls, message="send called")
        gevent.spawn_later(0.1, gate.set)
        forwarder.stop(5)
        self.assertEqual(forwarder.cursor.offset, 4, "the confirmed batch in flight must be saved")
        self.assertEqual(self.cursor_file(), 4)

    def test_stop_gives_up_on_a_batch_that_does_not_finish_in_time(self):
        sink = FakeSink(gate=Event())  # never set
        forwarder = self.forwarder(sink)
        self.append(4)
        wait_until(lambda: sink.calls, message="send called")
        forwarder.stop(0.2)
        self.assertEqual(forwarder.state, STOPPED)
        self.assertEqual(forwarder.cursor.offset, 0)
        self.assertIsNone(self.cursor_file())


class Failures(ForwarderCase):
    """Only transient errors are retried; a sink's bug or a permanent refusal stops the
    forwarder loudly, its cursor where it was, and a restart after the fix delivers it all."""

    def test_a_bug_in_the_sink_stops_the_forwarder_loudly_and_nothing_is_lost(self):
        sink = FakeSink(fail_forever=TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
        with self.assertLogs("zspark.forwarder", "ERROR") as logs:
            forwarder = self.forwarder(sink, batch_size=4)
            self.append(6)
            wait_until(lambda: forwarder.state == FAILED, message="the forwarder failed")
            gevent.sleep(0.2)  # time enough for retries it must not make
        self.assertEqual(len(sink.calls), 1, "a bug is not retried")
        self.assertEqual(forwarder.as_dict()["state"], "failed")
        self.assertEqual(forwarder.last_error, "TypeError: unsupported operand type(s) for +: 'int' and 'str'")
        self.assertEqual((forwarder.failed, forwarder.cursor.offset, forwarder.lag), (1, 0, 6))
        self.assertIsNone(self.cursor_file())
        text = "\n".join(logs.output)
        self.assertIn("Traceback (most recent call last)", text, "a bug is logged with its traceback")
        self.assertIn("TypeError: unsupported operand", text)
        self.assertIn("CRITICAL:zspark.forwarder:forwarder fake: FAILED", text)
        self.assertFalse(forwarder._greenlet.dead, "a failed forwarder waits for the stop, it does not end")
        self.append(2, 6)
        gevent.sleep(0.1)
        self.assertEqual((len(sink.calls), forwarder.lag), (1, 8), "nothing more is sent")
        forwarder.stop(2)
        self.assertEqual(forwarder.state, STOPPED)

        fixed = FakeSink()
        again = self.forwarder(fixed, batch_size=4)
        wait_until(lambda: again.cursor.offset == 8, message="all 8 delivered after the fix")
        self.assertEqual([o for o, _ in fixed.delivered], list(range(8)))
        self.assertEqual(self.dead_letters(), [], "a failure is never dead-lettered")

    def test_a_permanent_refusal_that_names_no_record_stops_the_forwarder_without_a_traceback(self):
        sink = FakeSink(fail_forever=PermanentDeliveryError("Kafka: refused for good, matched to no event"))
        with self.assertLogs("zspark.forwarder", "ERROR") as logs:
            forwarder = self.forwarder(sink)
            self.append(3)
            wait_until(lambda: forwarder.state == FAILED, message="the forwarder failed")
        self.assertEqual(forwarder.last_error, "Kafka: refused for good, matched to no event")
        self.assertEqual((len(sink.calls), forwarder.cursor.offset), (1, 0))
        self.assertNotIn("Traceback", "\n".join(logs.output), "not a bug: no traceback")
        self.assertEqual(self.dead_letters(), [])

    def test_transient_errors_and_os_errors_are_retried_then_delivered(self):
        failures = [TransientDeliveryError("Kafka: 3 of 3 message(s) not delivered: timed out"),
                    OSError(28, "No space left on device")]
        sink = FakeSink(failures=failures)
        forwarder = self.forwarder(sink)
        self.append(3)
        wait_until(lambda: forwarder.cursor.offset == 3, message="delivered after two failures")
        self.assertEqual((len(sink.calls), forwarder.failed, forwarder.state), (3, 2, RUNNING))
        self.assertEqual(forwarder.last_error, "OSError: [Errno 28] No space left on device")

    def test_a_destination_the_sink_knows_is_down_shows_at_once_and_its_return_ends_the_backoff(self):
        gate = Event()
        sink = FakeSink(gate=gate)
        sink.on_destination = None  # the attribute that says: this sink reports outages
        forwarder = self.forwarder(sink, backoff_initial=60, backoff_max=60)
        self.assertIsNotNone(sink.on_destination, "the forwarder hands the sink its callback")
        self.append(2)
        wait_until(lambda: sink.calls, message="the batch in flight")
        sink.on_destination("Kafka: 1/1 brokers are down")
        self.assertEqual((forwarder.state, forwarder.last_error), (BACKING_OFF, "Kafka: 1/1 brokers are down"))
        self.assertEqual(forwarder.failed, 0, "no attempt has failed yet")
        gate.set()
        wait_until(lambda: forwarder.cursor.offset == 2, message="the batch delivered")
        self.assertEqual(forwarder.state, RUNNING)

        # A failed attempt backs off for at least 30 s; the destination's return ends that wait.
        sink.failures = [TransientDeliveryError("Kafka: 1 of 1 message(s) not delivered")]
        self.append(1, 2)
        wait_until(lambda: forwarder.failed == 1, message="a failed attempt")
        sink.on_destination(None)
        wait_until(lambda: forwarder.cursor.offset == 3, timeout=20,
                   message="delivered without waiting out the backoff")
        self.assertEqual((forwarder.state, len(sink.calls)), (RUNNING, 3))

    def test_an_idle_forwarder_whose_destination_was_down_and_came_back_shows_running(self):
        """Nothing to deliver meanwhile: no batch's success will set it back, the return must."""
        sink = FakeSink()
        sink.on_destination = None
        forwarder = self.forwarder(sink)
        wait_until(lambda: forwarder.state == RUNNING, message="the forwarder running")
        sink.on_destination("Kafka: 1/1 brokers are down")
        self.assertEqual(forwarder.state, BACKING_OFF)
        sink.on_destination(None)
        self.assertEqual(forwarder.state, RUNNING)
        self.assertEqual(forwarder.last_error, "Kafka: 1/1 brokers are down", "the last error stays on record")
        self.append(1)
        wait_until(lambda: forwarder.cursor.offset == 1, message="delivered")
        self.assertEqual((forwarder.state, len(sink.calls)), (RUNNING, 1))


class DeadLetter(ForwarderCase):
    def test_refused_records_are_dead_lettered_with_reason_and_offset_and_the_stream_goes_on(self):
        sink = FakeSink(refuse={2: "too large for the destination", 5: "bad topic name"})
        forwarder = self.forwarder(sink, batch_size=4)
        ids = dict(self.append(8))
        wait_until(lambda: forwarder.cursor.offset == 8, message="all 8 passed")
        self.assertEqual([o for o, _ in sink.delivered], [0, 1, 3, 4, 6, 7])
        self.assertEqual(forwarder.delivered, 6)
        self.assertEqual(forwarder.dead_lettered, 2)
        lines = self.dead_letters()
        self.assertEqual([(d["offset"], d["sink"], d["reason"]) for d in lines],
                         [(2, "fake", "too large for the destination"), (5, "fake", "bad topic name")])
        for d in lines:
            self.assertEqual(d["event"]["_id"], str(ids[d["offset"]]))
            self.assertEqual(d["event"]["context"], {"n": d["offset"]})
            self.assertEqual(d["event"]["type"], "unit")
            self.assertIsInstance(d["time"], float)

        # Later events still flow.
        more = self.append(3, 8)
        wait_until(lambda: forwarder.cursor.offset == 11, message="later events delivered")
        self.assertEqual([o for o, _ in sink.delivered][-3:], [o for o, _ in more])
        self.assertEqual(len(self.dead_letters()), 2)
        self.assertEqual(forwarder.as_dict()["dead_lettered"], 2)

    def test_an_intact_record_that_is_not_an_event_is_dead_lettered(self):
        sink = FakeSink()
        forwarder = self.forwarder(sink)
        self.append(1)
        self.journal.append([b"\x00not bson at all"])
        self.append(1, 1)
        wait_until(lambda: forwarder.cursor.offset == 3, message="past the bad record")
        self.assertEqual([o for o, _ in sink.delivered], [0, 2])
        (line,) = self.dead_letters()
        self.assertEqual(line["offset"], 1)
        self.assertIn("undecodable", line["reason"])
        self.assertEqual(bytes.fromhex(line["event"]["payload_hex"]), b"\x00not bson at all")
        self.assertEqual(forwarder.dead_lettered, 1)
        self.assertEqual(forwarder.delivered, 2)


class FullDisk(ForwarderCase):
    """The journal's disk full: cursor and dead-letter files cannot be written."""

    def setUp(self):
        super().setUp()
        self.full = True
        for module, name in ((cursor_module, "write_atomically"), (cursor_module, "_write_slot"),
                             (forwarder_module, "_append_lines")):
            patcher = mock.patch.object(module, name, side_effect=self.enospc(getattr(module, name)))
            patcher.start()
            self.addCleanup(patcher.stop)

    def enospc(self, write):
        def fail_while_full(*args):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(*args)
        return fail_while_full

    def test_a_cursor_that_cannot_be_saved_does_not_stop_delivery(self):
        sink = FakeSink()
        forwarder = self.forwarder(sink, batch_size=4)
        with self.assertLogs("zspark.forwarder", "ERROR") as logs:
            self.append(10)
            wait_until(lambda: forwarder.cursor.offset == 10, message="all 10 delivered")
        self.assertIn("cannot save its cursor", logs.output[0])
        self.assertEqual([o for o, _ in sink.delivered], list(range(10)), "each event once, in order")
        self.assertIsNone(self.cursor_file(), "nothing could be saved")
        self.assertIn("cannot save the cursor", forwarder.last_error)
        self.full = False
        self.append(2, 10)
        wait_until(lambda: self.cursor_file() == 12, message="the cursor saved once there is space")
        self.assertEqual(forwarder.state, RUNNING)

    def test_a_cursor_file_that_exists_but_cannot_be_written_keeps_its_last_saved_offset(self):
        self.full = False
        sink = FakeSink()
        forwarder = self.forwarder(sink, batch_size=4)
        self.append(4)
        wait_until(lambda: self.cursor_file() == 4, message="the cursor saved while there is space")
        self.full = True
        with self.assertLogs("zspark.forwarder", "ERROR") as logs:
            self.append(6, 4)
            wait_until(lambda: forwarder.cursor.offset == 10, message="all 10 delivered")
        self.assertIn("cannot save its cursor", logs.output[0])
        self.assertEqual(self.cursor_file(), 4, "the file keeps the last offset saved")
        self.full = False
        self.append(2, 10)
        wait_until(lambda: self.cursor_file() == 12, message="the cursor saved once there is space")
        self.assertEqual([o for o, _ in sink.delivered], list(range(12)), "each event once, in order")

    def test_a_refused_record_is_passed_over_only_once_dead_lettered(self):
        sink = FakeSink(refuse={1: "too large"})
        forwarder = self.forwarder(sink, batch_size=5)
        with self.assertLogs("zspark.forwarder", "ERROR"):
            self.append(3)
            wait_until(lambda: forwarder.state == BACKING_OFF, message="backing off: no dead-letter file")
            gevent.sleep(0.1)
        self.assertEqual(forwarder.cursor.offset, 0, "not passed while the dead letter is unwritten")
        self.assertIn("dead-letter", forwarder.last_error)
        self.full = False
        wait_until(lambda: forwarder.cursor.offset == 3, message="passed once written")
        self.assertEqual([d["offset"] for d in self.dead_letters()], [1])
        self.assertEqual((forwarder.dead_lettered, forwarder.state), (1, RUNNING))



class OutOfDescriptors(ForwarderCase):
    """EMFILE (or any OS error) while reading the journal is not fatal: the forwarder backs off,
    reads again from its cursor and delivers each event once."""

    def test_a_segment_that_cannot_be_opened_is_retried_and_nothing_is_lost(self):
        from zspark.journal import reader as reader_module, record

        real_open = os.open
        failures = [0]

        def open_while_exhausted(path, *args, **kw):
            if failures[0] < 5 and str(path).endswith(record.SEGMENT_SUFFIX):
                failures[0] += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return real_open(path, *args, **kw)

        self.append(3)
        sink = FakeSink()
        with mock.patch.object(reader_module.os, "open", open_while_exhausted):
            with self.assertLogs("zspark.forwarder", "WARNING") as logs:
                forwarder = self.forwarder(sink, batch_size=2)
                wait_until(lambda: failures[0] >= 5, message="the segment refused five times")
                self.append(4, 3)
                wait_until(lambda: forwarder.cursor.offset == 7, message="all 7 delivered")
        self.assertFalse(forwarder._greenlet.dead, "the forwarder died of EMFILE")
        self.assertEqual([o for o, _ in sink.delivered], list(range(7)), "each event once, in order")
        self.assertIn("Too many open files", "\n".join(logs.output))
        self.assertIn("cannot read the journal", forwarder.last_error)
        self.assertEqual(forwarder.state, RUNNING)


class Lag(ForwarderCase):
    def test_lag_counts_durable_records_not_yet_confirmed(self):
        gate = Event()
        sink = FakeSink(gate=gate)
        forwarder = self.forwarder(sink, start=False, batch_size=5)
        self.append(12)
        self.assertEqual(forwarder.lag, 12)
        self.assertEqual(forwarder.as_dict(), {
            "state": STOPPED, "cursor": 0, "lag": 12, "delivered": 0, "failed": 0,
            "dead_lettered": 0, "last_error": None, "last_error_time": None,
            "last_delivery_time": None})
        forwarder.start()
        wait_until(lambda: sink.calls, message="first batch sent")
        self.assertEqual(forwarder.lag, 12, "a batch in flight is still lag")
        gate.set()
        wait_until(lambda: forwarder.lag == 0, message="lag back to 0")
        self.assertEqual(forwarder.cursor.offset, 12)
        self.append(3, 12)
        wait_until(lambda: forwarder.lag == 0 and forwarder.cursor.offset == 15, message="lag 0 again")
        self.assertEqual(forwarder.as_dict()["state"], RUNNING)


if __name__ == "__main__":
    unittest.main()
