"""The hour-complete tracker (zspark/hours.py) on a real journal, with an injected clock and a
stand-in for the Kafka forwarder's cursor: counting, the hour boundary, late events, and saying
each hour exactly once across a restart and across a crash between journaling the notices and
saving that they were sent. (End to end through Kafka and MongoDB: tests/test_notices.py.)"""
import datetime
import errno
import json
import os
import types
import unittest
from unittest import mock

import gevent

from zspark.event import NOTICE_SOURCE
from zspark import hours as hours_module
from zspark.hours import HOUR, HourTracker, hour_text
from zspark.ingest import Ingest
from zspark.journal import Journal
from zspark.metrics import Metrics
from zspark.notices import Notices

from .support import TempDir, journal_events, wait_until

UTC = datetime.timezone.utc
T0 = 1_800_000_000 // HOUR * HOUR  # an hour boundary
GRACE = 30


class Crash(Exception):
    """Stands for the process dying at that point."""


class HourTrackerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.now = T0 + 600  # ten minutes into the hour T0
        self.forwarder = types.SimpleNamespace(cursor=types.SimpleNamespace(offset=0), on_delivered=None)
        self.open_journal()

    def open_journal(self):
        self.journal = Journal(self.tmp.join("journal"))
        self.journal.open()
        self.addCleanup(self.journal.close)
        self.ingest = Ingest(self.journal, "n1", Metrics())
        self.notices = Notices(self.ingest, "n1", dict)

    def tracker(self, publish=None):
        return HourTracker(self.journal, self.forwarder, lambda e: e.get("topic") or "default",
                           publish or self.notices.publish, grace_s=GRACE, clock=lambda: self.now)

    def send(self, at, topic, count):
        """Journal `count` events received at epoch `at`; return their offsets' end."""
        now = datetime.datetime.fromtimestamp(at, UTC)
        events = [self.ingest.normalize_one({"type": "t", "topic": topic}, "http", now=now)
                  for _ in range(count)]
        self.ingest.append_nowait(events, "http").wait()
        return self.journal.end_offset

    def deliver_all(self, tracker):
        """What the forwarder does: move the cursor, then report the events it delivered."""
        start = self.forwarder.cursor.offset
        events = journal_events(self.journal.directory, start)
        self.forwarder.cursor.offset = self.journal.end_offset
        tracker.delivered(start, self.journal.end_offset, events)

    def step(self, tracker):
        tracker.catch_up()
        tracker.close_hours()
        tracker.announce_ready()

    def announced(self):
        return sorted((e["context"]["hour"], e["topic"], e["context"]["count"])
                      for e in journal_events(self.journal.directory)
                      if e.get("source") == NOTICE_SOURCE and e["type"] == "hour_complete")

    def test_a_full_disk_or_no_descriptors_does_not_stop_the_tracker(self):
        # Its state file cannot be written (ENOSPC), then the journal cannot be read (EMFILE):
        # the tracker goes on, announces the hour once, and saves once it can.
        t = self.tracker()
        t.check_s = 0.01
        self.send(T0 + 700, "web", 3)
        self.deliver_all(t)
        self.now = T0 + HOUR + GRACE
        failing = {"write": True}
        real_write = hours_module.write_atomically

        def write(path, data):
            if failing["write"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(path, data)

        def saved_hour():
            try:
                with open(t.path) as f:
                    return json.load(f)["next_hour"]
            except FileNotFoundError:
                return None

        with mock.patch.object(hours_module, "write_atomically", write), \
                self.assertLogs("zspark.hours", "WARNING") as logs:
            runner = gevent.spawn(t.run)
            self.addCleanup(runner.kill)
            wait_until(self.announced, message="the hour announced while its state cannot be saved")
            gevent.sleep(0.1)
            self.assertFalse(runner.dead, f"the tracker died: {runner.exception!r}")
            self.assertNotEqual(saved_hour(), T0 + HOUR)
            real_reader = self.journal.reader
            exhausted = self.journal.reader = mock.Mock(side_effect=OSError(errno.EMFILE, "Too many open files"))
            self.send(T0 + HOUR + 100, "web", 1)
            self.forwarder.cursor.offset = self.journal.end_offset  # delivered: catch_up must read
            wait_until(lambda: exhausted.call_count >= 2, message="catch_up tried twice")
            self.assertFalse(runner.dead, f"the tracker died: {runner.exception!r}")
            self.journal.reader = real_reader
            failing["write"] = False
            wait_until(lambda: saved_hour() == T0 + HOUR, message="the state saved once the disk has room")
        self.assertFalse(runner.dead, f"the tracker died: {runner.exception!r}")
        self.assertEqual(self.announced(), [(hour_text(T0), "web", 3)], "announced once")
        self.assertIn("No space left on device", logs.output[0])

    def test_an_hour_is_announced_per_topic_once_over_and_delivered(self):
        t = self.tracker()
        self.send(T0 + 700, "web", 3)
        self.send(T0 + 800, "app", 2)
        self.deliver_all(t)
        self.now = T0 + HOUR + GRACE - 1  # the hour is over but within the grace: not yet
        self.step(t)
        self.assertEqual(self.announced(), [])
        self.now = T0 + HOUR + GRACE
        self.step(t)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "app", 2),
                                            ("2027-01-15T08:00:00Z", "web", 3)])
        self.step(t)  # nothing new: nothing said twice
        self.assertEqual(len(self.announced()), 2)

    def test_not_before_the_forwarder_passed_every_event_of_the_hour(self):
        t = self.tracker()
        self.send(T0 + 700, "web", 3)
        self.deliver_all(t)
        self.send(T0 + 3000, "web", 2)  # journaled, not yet delivered (the broker is down)
        self.now = T0 + 2 * HOUR
        self.step(t)
        self.assertEqual(self.announced(), [])
        self.deliver_all(t)
        self.step(t)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "web", 5)])

    def test_quiet_hours_are_announced_with_zero_for_known_topics_and_none_is_skipped(self):
        t = self.tracker()
        self.send(T0 + 700, "web", 1)
        self.deliver_all(t)
        self.now = T0 + 3 * HOUR + GRACE
        self.step(t)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "web", 1),
                                            ("2027-01-15T09:00:00Z", "web", 0),
                                            ("2027-01-15T10:00:00Z", "web", 0)])

    def test_what_was_delivered_before_a_restart_is_counted_from_the_journal(self):
        t = self.tracker()
        self.send(T0 + 700, "web", 2)
        self.deliver_all(t)
        t.stop()  # saves counted_to and the counts
        self.send(T0 + 900, "web", 4)
        self.forwarder.cursor.offset = self.journal.end_offset  # delivered while counting was down
        t = self.tracker()
        self.now = T0 + HOUR + GRACE
        self.step(t)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "web", 6)])

    def test_a_crash_after_journaling_the_notices_does_not_repeat_them(self):
        def publish_then_crash(notices):
            self.notices.publish(notices)
            raise Crash()

        t = self.tracker(publish_then_crash)
        self.send(T0 + 700, "web", 2)
        self.deliver_all(t)
        self.now = T0 + HOUR + GRACE
        t.catch_up()
        t.close_hours()
        with self.assertRaises(Crash):
            t.announce_ready()  # notices journaled; the hour not yet marked done on disk
        t = self.tracker()
        t.recover()
        self.step(t)
        self.deliver_all(t)  # the notices themselves
        self.now += HOUR
        self.step(t)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "web", 2),
                                            ("2027-01-15T09:00:00Z", "web", 0)])

    def test_an_event_of_an_hour_already_announced_is_counted_late(self):
        t = self.tracker()
        self.send(T0 + 700, "web", 1)
        self.deliver_all(t)
        self.now = T0 + HOUR + GRACE
        self.step(t)
        self.send(T0 + 3500, "web", 1)  # stamped in the announced hour, journaled after it
        self.deliver_all(t)
        self.step(t)
        self.assertEqual(t.as_dict()["late_events"], 1)
        self.assertEqual(self.announced(), [("2027-01-15T08:00:00Z", "web", 1)])

    def test_the_state_file_is_owner_only(self):
        t = self.tracker()
        t.close_hours()
        t.stop()
        t._save()
        self.assertEqual(os.stat(t.path).st_mode & 0o777, 0o600)


if __name__ == "__main__":
    unittest.main()
