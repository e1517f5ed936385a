"""The journal in one process: append, read, wait, cursors, segment roll, retention, size cap,
recovery from damage, the lock, and stable event ids."""
import datetime
import errno
import logging
import os
import random
import struct
import time
import unittest
import zlib
from unittest import mock

import bson
import gevent

from zspark.journal import (Cursor, Journal, JournalClosed, JournalError, JournalFull, JournalLocked, JournalView,
                            Reader, TooLargeForJournal, decode_event, encode_event, event_id,
                            list_segments, read_cursor)
from zspark.journal import cursor as cursor_module
from zspark.journal import record
from zspark.event import normalize
from zspark.journal.codec import FrameEvent, encode_batch, encode_events, event_ids
from zspark.journal.damage import Damage

from .support import TempDir


def payloads(n, start=0, size=200):
    return [f"record-{i:08d}-".encode().ljust(size, b".") for i in range(start, start + n)]


class JournalCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.dir = self.tmp.join("journal")

    def open(self, **kw):
        journal = Journal(self.dir, **kw).open()
        self.addCleanup(journal.close)
        return journal

    def read_all(self, directory=None, start=0):
        reader = Reader(directory or self.dir, start)
        self.addCleanup(reader.close)
        return list(reader), reader


class AppendAndRead(JournalCase):
    def test_append_returns_offsets_and_records_read_back_in_order(self):
        journal = self.open()
        self.assertEqual(journal.append(payloads(3)), [0, 1, 2])
        self.assertEqual(journal.append(payloads(2, 3)), [3, 4])
        self.assertEqual(journal.end_offset, 5)
        records = list(journal.reader(0))
        self.assertEqual([o for o, _ in records], [0, 1, 2, 3, 4])
        self.assertEqual([p for _, p in records], payloads(5))

    def test_reader_starts_at_any_offset(self):
        journal = self.open()
        journal.append(payloads(10))
        self.assertEqual([o for o, _ in journal.reader(7)], [7, 8, 9])
        self.assertEqual(list(journal.reader(10)), [])

    def test_many_greenlets_appending_concurrently_share_fsyncs_and_lose_nothing(self):
        journal = self.open(sync="batch", sync_interval=0.002)
        acked = []

        def writer(n):
            for i in range(50):
                (offset,) = journal.append([f"w{n}-{i}".encode()])
                acked.append((offset, f"w{n}-{i}".encode()))

        gevent.joinall([gevent.spawn(writer, n) for n in range(20)], raise_error=True)
        self.assertEqual(sorted(acked), sorted(journal.reader(0)))
        self.assertEqual(len(acked), 1000)
        self.assertLess(journal.stats.syncs, 1000, "appends from concurrent greenlets must share fsyncs")

    def test_every_sync_policy_makes_records_durable_before_append_returns(self):
        for policy in ("always", "batch", "never"):
            with self.subTest(policy=policy):
                directory = self.tmp.join(policy)
                journal = Journal(directory, sync=policy).open()
                journal.append(payloads(5))
                # Another reader (as after a crash) sees them at once: they are in the file.
                records, _ = self.read_all(directory)
                self.assertEqual(len(records), 5)
                journal.close()

    def test_encode_hook_gets_each_records_offset(self):
        journal = self.open()
        journal.append([b"a"])
        offsets = journal.append(["x", "y"], encode=lambda item, offset: f"{item}@{offset}".encode())
        self.assertEqual(offsets, [1, 2])
        self.assertEqual([p for _, p in journal.reader(1)], [b"x@1", b"y@2"])

    def test_append_after_close_fails_clearly(self):
        journal = Journal(self.dir).open()
        journal.close()
        with self.assertRaises(JournalClosed):
            journal.append([b"late"])

    def test_reopen_continues_offsets(self):
        journal = Journal(self.dir).open()
        journal.append(payloads(4))
        journal.close()
        journal = self.open()
        self.assertEqual(journal.end_offset, 4)
        self.assertEqual(journal.append([b"next"]), [4])
        self.assertEqual(len(list(journal.reader(0))), 5)


class Waiting(JournalCase):
    def test_reader_wait_wakes_when_records_arrive(self):
        journal = self.open()
        reader = journal.reader(0)
        got = []

        def consume():
            while len(got) < 3:
                batch = reader.read()
                if not batch:
                    reader.wait(5)
                got.extend(batch)

        consumer = gevent.spawn(consume)
        gevent.sleep(0.05)
        self.assertEqual(got, [])
        journal.append([b"one"])
        journal.append([b"two", b"three"])
        consumer.join(5)
        self.assertEqual([p for _, p in got], [b"one", b"two", b"three"])

    def test_a_reader_at_offsets_missing_before_the_end_waits_for_new_records(self):
        # Cut short, then opened again past a forwarder's cursor: offsets 3..9 are missing, so a
        # reader at 3 finds nothing below the end (10). Its wait must wait for records past 10,
        # not return at once for ever (a loop that never yields: nothing else runs, not even
        # the append that would end it).
        journal = self.open()
        journal.append(payloads(3))
        journal.cursor("mongo").commit(10)
        journal.close()
        journal = self.open()
        self.assertEqual(journal.end_offset, 10)
        reader = journal.reader(0)
        got, waits = [], []

        def consume():
            while len(got) < 5 and len(waits) < 20:
                batch = reader.read()
                if not batch:
                    waits.append(reader.wait(5))
                got.extend(batch)

        consumer = gevent.spawn(consume)
        gevent.sleep(0.05)
        journal.append(payloads(2, start=10))
        consumer.join(5)
        self.assertEqual([o for o, _ in got], [0, 1, 2, 10, 11])
        self.assertLessEqual(len(waits), 2, "the reader's wait returned without records to read")

    def test_wait_times_out_when_nothing_arrives(self):
        journal = self.open()
        reader = journal.reader(0)
        self.assertFalse(reader.wait(0.05))

    def test_directory_reader_follows_a_journal_written_elsewhere(self):
        journal = self.open()
        journal.append([b"first"])
        reader = Reader(self.dir, 0, poll_interval=0.01)
        self.addCleanup(reader.close)
        self.assertEqual([p for _, p in reader.read()], [b"first"])
        self.assertEqual(reader.read(), [])
        journal.append([b"second"])
        reader.wait(1)
        self.assertEqual([p for _, p in reader.read()], [b"second"])


class Cursors(JournalCase):
    def test_cursor_starts_at_zero_and_commits_durably(self):
        journal = self.open()
        cursor = journal.cursor("kafka")
        self.assertEqual(cursor.offset, 0)
        cursor.commit(42)
        self.assertEqual(Cursor(self.dir, "kafka").offset, 42)
        self.assertEqual(journal.cursors(), {"kafka": 42})
        leftovers = [n for n in os.listdir(os.path.join(self.dir, "cursors")) if n.endswith(".tmp")]
        self.assertEqual(leftovers, [])

    def test_damaged_cursor_file_restarts_from_zero_and_says_so(self):
        journal = self.open()
        journal.cursor("mongo").commit(10)
        with open(os.path.join(self.dir, "cursors", "mongo"), "w") as f:
            f.write("garbage")
        with self.assertLogs("zspark.journal", logging.ERROR) as logs:
            self.assertEqual(Cursor(self.dir, "mongo").offset, 0)
        self.assertIn("re-sent", logs.output[0])

    def test_cursor_names_are_checked(self):
        with self.assertRaises(ValueError):
            Cursor(self.dir, "../escape")
        with self.assertRaises(ValueError):
            read_cursor(self.dir, "../escape")


# The cursor file's layout, as zspark/journal/cursor.py documents it, read here independently.
CURSOR_FILE_SIZE = 8192
SLOT_AT = (0, 4096)
SLOT_RECORD = struct.Struct("<8sQQI")  # magic, sequence, offset, CRC-32 of the first 24 bytes


def cursor_slots(path):
    """[(sequence, offset) or None for a slot that is not intact, per slot]."""
    with open(path, "rb") as f:
        data = f.read()
    slots = []
    for at in SLOT_AT:
        raw = data[at:at + SLOT_RECORD.size]
        if len(raw) < SLOT_RECORD.size:
            slots.append(None)
            continue
        magic, sequence, offset, crc = SLOT_RECORD.unpack(raw)
        intact = magic == b"zsCurs01" and crc == zlib.crc32(raw[:24])
        slots.append((sequence, offset) if intact else None)
    return slots


class CursorSlots(JournalCase):
    """A commit is one write into one of two checksummed slots of a file that never changes size;
    a damaged slot falls back to the other; the old decimal format is read and converted."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.dir, "cursors", "kafka")

    def cursor(self):
        cursor = Cursor(self.dir, "kafka")
        self.addCleanup(cursor.close)
        return cursor

    def overwrite(self, at, data):
        with open(self.path, "r+b") as f:
            f.seek(at)
            f.write(data)

    def test_commits_alternate_slots_in_a_file_that_never_changes_size_or_inode(self):
        cursor = self.cursor()
        cursor.commit(5)
        self.assertEqual(os.path.getsize(self.path), CURSOR_FILE_SIZE)
        self.assertEqual(cursor_slots(self.path), [(1, 5), None])
        inode = os.stat(self.path).st_ino
        for n in range(2, 201):
            cursor.commit(n * 10)
            self.assertEqual(read_cursor(self.dir, "kafka"), n * 10)
            self.assertEqual(Cursor(self.dir, "kafka").offset, n * 10)
            slots = cursor_slots(self.path)
            self.assertEqual(slots[(n - 1) % 2], (n, n * 10), "the new record goes to the other slot")
            self.assertEqual(slots[n % 2], (n - 1, (n - 1) * 10 if n > 2 else 5),
                             "the previous record stays intact")
            st = os.stat(self.path)
            self.assertEqual((st.st_size, st.st_ino), (CURSOR_FILE_SIZE, inode), "rewritten in place")
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), ["kafka"])

    def test_the_file_is_created_with_real_bytes_not_a_hole(self):
        self.cursor().commit(1)
        self.assertGreaterEqual(os.stat(self.path).st_blocks * 512, CURSOR_FILE_SIZE)

    def test_a_torn_newest_slot_reads_as_the_previous_offset(self):
        rng = random.Random(7)
        damages = [lambda at: self.overwrite(at, bytes(rng.randrange(256) for _ in range(4096))),
                   lambda at: self.overwrite(at + rng.randrange(24), bytes([rng.randrange(1, 256)])),
                   lambda at: self.overwrite(at, b"\0" * 64)]
        for commits in (2, 3):  # the newest record in slot 1, then in slot 0
            for damage in damages:
                with self.subTest(commits=commits, damage=damages.index(damage)):
                    if os.path.exists(self.path):
                        os.unlink(self.path)
                    cursor = self.cursor()
                    for i in range(commits):
                        cursor.commit(100 + i)
                    damage(SLOT_AT[(commits - 1) % 2])
                    # Zeros beside sequence 1 look like a new file's blank slot: nothing to say.
                    blank = commits == 2 and damage is damages[2]
                    expect = self.assertNoLogs if blank else self.assertLogs
                    with expect("zspark.journal", logging.WARNING):
                        self.assertEqual(read_cursor(self.dir, "kafka"), 100 + commits - 2)
                    reopened = self.cursor()
                    self.assertEqual(reopened.offset, 100 + commits - 2)
                    reopened.commit(500)  # into the damaged slot, the intact one untouched
                    self.assertEqual(read_cursor(self.dir, "kafka"), 500)
                    self.assertIn((commits - 1, 100 + commits - 2), cursor_slots(self.path))
                    cursor.close()

    def test_a_truncated_file_reads_as_the_surviving_slot_and_is_rewritten_whole(self):
        cursor = self.cursor()
        cursor.commit(10)
        cursor.commit(20)  # slot 1
        os.truncate(self.path, SLOT_AT[1] + 10)
        self.assertEqual(read_cursor(self.dir, "kafka"), 10)
        reopened = self.cursor()
        reopened.commit(30)
        self.assertEqual(os.path.getsize(self.path), CURSOR_FILE_SIZE)
        self.assertEqual(read_cursor(self.dir, "kafka"), 30)
        reopened.commit(40)
        self.assertEqual(read_cursor(self.dir, "kafka"), 40)

    def test_both_slots_damaged_starts_from_zero_and_says_so(self):
        for damage in ("garbage", "truncated"):
            with self.subTest(damage):
                cursor = self.cursor()
                cursor.commit(10)
                cursor.commit(20)
                if damage == "garbage":
                    self.overwrite(SLOT_AT[0] + 12, b"\xff")
                    self.overwrite(SLOT_AT[1] + 3, b"\xff")
                else:
                    os.truncate(self.path, 20)
                with self.assertLogs("zspark.journal", logging.ERROR) as logs:
                    self.assertEqual(read_cursor(self.dir, "kafka"), 0)
                self.assertIn("re-sent", logs.output[0])
                with self.assertLogs("zspark.journal", logging.ERROR):
                    reopened = self.cursor()
                self.assertEqual(reopened.offset, 0)
                reopened.commit(7)
                self.assertEqual(cursor_slots(self.path), [(1, 7), None], "rewritten whole")
                cursor.close()
                os.unlink(self.path)

    def test_the_old_decimal_format_is_read_and_converted_on_the_first_commit(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("123\n")
        journal = self.open()
        self.assertEqual(journal.cursors(), {"kafka": 123})
        self.assertEqual(JournalView(self.dir).cursors(), {"kafka": 123})
        self.assertEqual(read_cursor(self.dir, "kafka"), 123)
        with open(self.path) as f:
            self.assertEqual(f.read(), "123\n", "reading never converts")
        cursor = journal.cursor("kafka")
        self.addCleanup(cursor.close)
        self.assertEqual(cursor.offset, 123)
        cursor.commit(130)
        self.assertEqual(os.path.getsize(self.path), CURSOR_FILE_SIZE)
        self.assertEqual(cursor_slots(self.path), [(1, 130), None])
        cursor.commit(131)
        self.assertEqual(journal.cursors(), {"kafka": 131})
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), ["kafka"])

    def test_failed_commits_never_touch_the_newest_intact_record(self):
        cursor = self.cursor()
        cursor.commit(10)
        cursor.commit(11)  # the newest: slot 1

        def torn_then_failed(fd, record, position):  # a write cut short, then the sync failing
            os.pwrite(fd, b"\xee" * len(record), position)
            raise OSError(errno.EIO, "Input/output error")
        with mock.patch.object(cursor_module, "_write_slot", torn_then_failed):
            for attempt in range(3):
                with self.assertRaises(OSError):
                    cursor.commit(12 + attempt)
        with self.assertLogs("zspark.journal", logging.WARNING):
            self.assertEqual(read_cursor(self.dir, "kafka"), 11)
        cursor.commit(20)
        self.assertEqual(cursor_slots(self.path), [(3, 20), (2, 11)])

    def test_a_cursor_file_deleted_or_replaced_while_open_is_written_anew(self):
        cursor = self.cursor()
        cursor.commit(1)
        cursor.commit(2)  # the file is now held open
        os.unlink(self.path)
        cursor.commit(3)
        self.assertEqual(read_cursor(self.dir, "kafka"), 3, "a deleted cursor file comes back")
        cursor.commit(4)
        with open(self.path + ".new", "w") as f:  # an operator puts an old-format file in place
            f.write("1\n")
        os.replace(self.path + ".new", self.path)
        cursor.commit(5)
        self.assertEqual(read_cursor(self.dir, "kafka"), 5)
        self.assertEqual(os.path.getsize(self.path), CURSOR_FILE_SIZE)
        cursor.commit(6)
        self.assertEqual(read_cursor(self.dir, "kafka"), 6)

    def test_close_releases_the_file_and_a_later_commit_reopens_it(self):
        def open_on_path():
            return sum(os.readlink(f"/proc/self/fd/{fd}") == self.path
                       for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
        cursor = self.cursor()
        cursor.commit(1)
        cursor.commit(2)
        self.assertEqual(open_on_path(), 1, "kept open between commits")
        cursor.close()
        self.assertEqual(open_on_path(), 0)
        cursor.commit(3)
        self.assertEqual(read_cursor(self.dir, "kafka"), 3)
        cursor.close()
        cursor.close()
        self.assertEqual(open_on_path(), 0)


class SegmentsAndRetention(JournalCase):
    def test_segments_roll_at_the_configured_size_and_are_named_by_first_offset(self):
        journal = self.open(segment_bytes=2000)
        for i in range(10):
            journal.append(payloads(5, i * 5))
        bases = list_segments(self.dir)
        self.assertGreater(len(bases), 3)
        for base in bases:
            records, _ = self.read_all(start=base)
            self.assertEqual(records[0][0], base, "a segment's name is its first record's offset")
        self.assertEqual([o for o, _ in journal.reader(0)], list(range(50)))

    def test_retention_deletes_only_segments_every_cursor_passed_and_old_enough(self):
        journal = self.open(segment_bytes=2000, retain_hours=1)
        for i in range(10):
            journal.append(payloads(5, i * 5))
        bases = list_segments(self.dir)
        journal.cursor("kafka").commit(50)
        journal.cursor("mongo").commit(bases[2])  # mongo has passed the first two segments only
        now = time.time()
        self.assertEqual(journal.apply_retention(["kafka", "mongo"], now=now), [],
                         "segments younger than retain_hours stay")
        deleted = journal.apply_retention(["kafka", "mongo"], now=now + 2 * 3600)
        self.assertEqual(deleted, bases[:2])
        self.assertEqual(list_segments(self.dir), bases[2:])
        self.assertEqual(journal.first_offset, bases[2])
        self.assertEqual([o for o, _ in journal.reader(0)], list(range(bases[2], 50)))

    def test_retention_waits_for_a_consumer_that_never_started(self):
        journal = self.open(segment_bytes=2000, retain_hours=0)
        for i in range(10):
            journal.append(payloads(5, i * 5))
        journal.cursor("kafka").commit(50)
        self.assertEqual(journal.apply_retention(["kafka", "mongo"]), [])

    def test_retention_never_deletes_the_active_segment(self):
        journal = self.open(retain_hours=0)
        journal.append(payloads(5))
        journal.cursor("kafka").commit(5)
        self.assertEqual(journal.apply_retention(["kafka"]), [])
        self.assertEqual(len(list(journal.reader(0))), 5)


class SizeCap(JournalCase):
    def test_full_journal_refuses_new_records_and_keeps_old_ones(self):
        journal = self.open(max_bytes=5000, segment_bytes=2000, retain_hours=0)
        stored = 0
        with self.assertRaises(JournalFull):
            for i in range(100):
                journal.append(payloads(1, i))
                stored += 1
        self.assertGreater(stored, 5)
        self.assertLessEqual(journal.size_bytes, 5000)
        self.assertEqual([p for _, p in journal.reader(0)], payloads(stored))
        # Once consumers pass old segments and retention frees them, appends succeed again.
        journal.cursor("kafka").commit(journal.end_offset)
        self.assertTrue(journal.apply_retention(["kafka"]))
        self.assertEqual(journal.append([b"after"]), [stored])


    def test_a_full_journal_that_is_all_active_segment_frees_itself_once_consumers_passed(self):
        # The cap below one segment: no write ever rolls it, since every write is refused.
        journal = self.open(max_bytes=5000, retain_hours=0)
        stored = 0
        with self.assertRaises(JournalFull):
            for i in range(100):
                journal.append(payloads(1, i))
                stored += 1
        self.assertEqual(len(journal.segment_bases()), 1)
        self.assertEqual(journal.apply_retention({"kafka": stored - 1}), [], "a record not yet passed stays")
        self.assertEqual(journal.apply_retention({"kafka": stored}), [0])
        self.assertEqual(journal.size_bytes, 0)
        self.assertEqual(journal.append([b"after"]), [stored])
        self.assertEqual([o for o, _ in journal.reader(0)], [stored])

    def test_records_larger_than_the_whole_cap_are_refused_as_such(self):
        journal = self.open(max_bytes=1000)
        with self.assertRaises(TooLargeForJournal) as ctx:
            journal.append(payloads(10))
        self.assertIn("journal.max_bytes", str(ctx.exception))
        self.assertIsInstance(ctx.exception, JournalFull)
        self.assertEqual(journal.append(payloads(1)), [0], "nothing was taken, and smaller appends go in")


class DiskFull(JournalCase):
    def test_a_full_disk_refuses_the_batch_naming_the_directory_and_leaves_no_torn_record(self):
        journal = self.open()
        journal.append(payloads(3))
        segment = os.path.join(self.dir, record.segment_name(0))
        size = os.path.getsize(segment)
        real_pwrite = os.pwrite
        calls = []

        def pwrite_until_full(fd, data, position):
            calls.append(len(data))
            if len(calls) == 1:  # the disk fills up in the middle of the write
                return real_pwrite(fd, bytes(data[:len(data) // 2]), position)
            raise OSError(errno.ENOSPC, "No space left on device")

        with mock.patch.object(os, "pwrite", side_effect=pwrite_until_full), \
                self.assertLogs("zspark.journal", logging.ERROR) as logs:
            with self.assertRaises(JournalFull) as ctx:
                journal.append(payloads(4, 3))
        self.assertEqual(len(calls), 2)
        self.assertEqual(os.path.getsize(segment), size, "the half-written batch is cut off again")
        self.assertIn(f"no space left on the journal's disk ({journal.directory})", str(ctx.exception))
        self.assertIn(journal.directory, logs.output[0])
        self.assertEqual(journal.stats.write_errors, 1)
        # Space again: appending goes on; the files hold only whole records.
        offsets = journal.append(payloads(1, 7))
        records, reader = self.read_all()
        self.assertEqual([p for _, p in records], payloads(3) + payloads(1, 7))
        self.assertEqual([o for o, _ in records], [0, 1, 2] + offsets)
        self.assertEqual(reader.skipped_bytes, 0)


    def test_offsets_refused_while_a_new_segment_could_not_be_created_are_not_reported_missing(self):
        # Out of descriptors (or space) at a roll: the batches are refused, their offsets never
        # used; the segment made once it works starts past them. Nothing acknowledged is missing.
        from zspark.journal import journal as journal_module

        journal = self.open(segment_bytes=100)
        journal.append(payloads(3))  # fills the first segment
        real_create = journal_module._create_segment

        def create_while_exhausted(*args):
            raise OSError(errno.EMFILE, "Too many open files")

        with mock.patch.object(journal_module, "_create_segment", create_while_exhausted), \
                self.assertLogs("zspark.journal", logging.ERROR):
            for start in (3, 5):
                with self.assertRaises(JournalError):
                    journal.append(payloads(2, start))
        self.assertIs(journal_module._create_segment, real_create)
        offsets = journal.append(payloads(2, 7))
        records, reader = self.read_all()
        self.assertEqual([p for _, p in records], payloads(3) + payloads(2, 7))
        self.assertEqual([o for o, _ in records], [0, 1, 2] + offsets)
        bound = journal.reader(0)
        self.addCleanup(bound.close)
        self.assertEqual([o for o, _ in bound.read()], [0, 1, 2] + offsets)
        self.assertEqual(journal.damage.as_dict()["missing_offsets"], 0, journal.damage.as_dict())


    def test_a_reader_never_reads_the_bytes_of_a_write_in_progress(self):
        journal = self.open()
        journal.append(payloads(3))
        reader = journal.reader(0)
        self.addCleanup(reader.close)
        segment = os.path.join(self.dir, record.segment_name(0))
        size = os.path.getsize(segment)
        # A write in progress: half a record in the file, not durable yet, as a reader reads
        # the records before it...
        with open(segment, "r+b") as f:
            f.seek(size)
            f.write(record.frame(3, b"x" * 300)[:150])
        self.assertEqual(reader.read(), list(enumerate(payloads(3))))
        # ...that fails (ENOSPC): cut off again, and the next records written in its place.
        os.truncate(segment, size)
        offsets = journal.append(payloads(2, 3))
        self.assertEqual(reader.read(), list(zip(offsets, payloads(2, 3))), "a record was lost")
        self.assertEqual(reader.skipped_bytes, 0)


class Recovery(JournalCase):
    def segment_path(self, base=None):
        bases = list_segments(self.dir)
        return os.path.join(self.dir, record.segment_name(bases[-1] if base is None else base))

    def test_a_torn_last_record_is_cut_at_open_and_logged(self):
        journal = Journal(self.dir).open()
        journal.append(payloads(10))
        journal.close()
        path = self.segment_path()
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size - 50)  # half of the last record
        with self.assertLogs("zspark.journal", logging.WARNING) as logs:
            journal = self.open()
        self.assertTrue(any("torn record" in line for line in logs.output), logs.output)
        self.assertEqual(journal.end_offset, 9)
        self.assertEqual([p for _, p in journal.reader(0)], payloads(9))
        self.assertEqual(journal.append([b"new"]), [9])
        self.assertEqual([p for _, p in journal.reader(8)], [payloads(9)[8], b"new"])

    def test_a_corrupt_record_in_the_middle_is_skipped_and_counted(self):
        journal = Journal(self.dir).open()
        journal.append(payloads(10))
        journal.close()
        frame_size = record.HEADER_SIZE + 200
        with open(self.segment_path(), "r+b") as f:
            f.seek(4 * frame_size + record.HEADER_SIZE + 20)  # inside record 4's payload
            f.write(b"XXXX")
        journal = self.open()
        self.assertEqual(journal.end_offset, 10, "damage in the middle is not a torn tail")
        with self.assertLogs("zspark.journal", logging.WARNING):
            records, reader = self.read_all()
        self.assertEqual([o for o, _ in records], [0, 1, 2, 3, 5, 6, 7, 8, 9])
        self.assertEqual(reader.skipped_regions, 1)
        self.assertEqual(reader.skipped_bytes, frame_size)

    def test_garbage_at_the_end_of_an_older_segment_is_skipped(self):
        journal = Journal(self.dir, segment_bytes=1000).open()
        for i in range(5):
            journal.append(payloads(5, i * 5))
        journal.close()
        first = list_segments(self.dir)[0]
        with open(self.segment_path(first), "ab") as f:
            f.write(b"\x00garbage-after-a-crash")
        with self.assertLogs("zspark.journal", logging.WARNING):
            records, _ = self.read_all()
        self.assertEqual([o for o, _ in records], list(range(25)))

    def test_a_deleted_segment_loses_only_its_records(self):
        journal = Journal(self.dir, segment_bytes=1000).open()
        for i in range(5):
            journal.append(payloads(5, i * 5))
        journal.close()
        bases = list_segments(self.dir)
        os.unlink(self.segment_path(bases[1]))
        journal = self.open()
        expected = [o for o in range(25) if not bases[1] <= o < bases[2]]
        with self.assertLogs("zspark.journal", logging.WARNING) as logs:
            self.assertEqual([o for o, _ in journal.reader(0)], expected)
        self.assertIn(f"offsets {bases[1]}..{bases[2] - 1} are missing", logs.output[0])
        # Reported once and counted, however many readers pass the gap.
        with self.assertNoLogs("zspark.journal", logging.WARNING):
            self.assertEqual([o for o, _ in journal.reader(0)], expected)
        self.assertEqual(journal.damage.as_dict()["missing_offsets"], bases[2] - bases[1])

    def test_damage_in_the_middle_reports_the_offsets_lost(self):
        journal = Journal(self.dir).open()
        journal.append(payloads(10))
        journal.close()
        frame_size = record.HEADER_SIZE + 200
        with open(self.segment_path(), "r+b") as f:  # records 3 and 4
            for victim in (3, 4):
                f.seek(victim * frame_size + record.HEADER_SIZE + 20)
                f.write(b"XXXX")
        journal = self.open()
        with self.assertLogs("zspark.journal", logging.WARNING) as logs:
            self.assertEqual([o for o, _ in journal.reader(0)], [0, 1, 2, 5, 6, 7, 8, 9])
        self.assertTrue(any("offsets 3..4 are missing" in line for line in logs.output), logs.output)
        self.assertEqual(journal.damage.as_dict(), {
            "cut_bytes": 0, "regions": 1, "bytes": 2 * frame_size, "missing_offsets": 2,
            "last": journal.damage.last})

    def test_missing_offsets_reported_twice_count_once(self):
        damage = Damage()
        with self.assertLogs("zspark.journal", logging.WARNING) as logs:
            damage.missing(10, 20, "recovery: 10..19")
            damage.missing(5, 20, "a reader: 5..19")  # 5 new ones
            damage.missing(12, 15, "another reader: 12..14")  # nothing new: not logged
        self.assertEqual(damage.missing_offsets, 15)
        self.assertEqual(len(logs.output), 2)

    def test_a_journal_cut_below_a_cursor_never_gives_those_offsets_out_again(self):
        journal = Journal(self.dir, segment_bytes=1000).open()
        for i in range(5):
            journal.append(payloads(5, i * 5))
        journal.cursor("mongo").commit(25)
        journal.close()
        bases = list_segments(self.dir)
        os.unlink(self.segment_path(bases[-1]))  # the last segment lost
        with self.assertLogs("zspark.journal", logging.WARNING) as logs:
            journal = self.open()
        self.assertTrue(any(f"offsets {bases[-1]}..24 are missing" in line for line in logs.output))
        self.assertEqual(journal.end_offset, 25)
        self.assertEqual(journal.append([b"new"]), [25], "new records come after the cursor")
        self.assertEqual([p for _, p in journal.reader(25)], [b"new"])
        self.assertEqual(journal.damage.missing_offsets, 25 - bases[-1])

    def test_a_second_writer_is_refused(self):
        self.open()
        with self.assertRaises(JournalLocked) as ctx:
            Journal(self.dir).open()
        self.assertIn(str(os.getpid()), str(ctx.exception))


class EventIds(JournalCase):
    def test_ids_are_stable_and_derive_from_node_time_and_offset(self):
        ts = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        a = event_id(ts, "node-a", 7)
        self.assertEqual(a, event_id(ts, "node-a", 7))
        self.assertNotEqual(a, event_id(ts, "node-b", 7))
        self.assertNotEqual(a, event_id(ts, "node-a", 8))
        self.assertEqual(a.generation_time, ts)

    def test_journaled_events_carry_their_id(self):
        journal = self.open()
        ts = datetime.datetime.now(datetime.timezone.utc)
        events = [{"timestamp": ts, "type": "t", "node": "n", "source": "test"} for _ in range(3)]
        offsets = journal.append(events, encode=encode_event)
        stored = [decode_event(p) for _, p in journal.reader(0)]
        self.assertEqual([e["_id"] for e in stored], [event_id(ts, "n", o) for o in offsets])
        self.assertEqual(len({e["_id"] for e in stored}), 3)

    def test_a_bson_frame_is_journaled_as_the_event_normalize_makes_of_it(self):
        ts = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
        docs = [{"type": "t", "ip": "10.0.0.1", "cookies": {"a": "b"}, "context": {"i": i, "l": [1, {"x": "é"}]}}
                for i in range(3)]
        plain = {"timestamp": ts, "type": "plain", "source": "zmq_json", "node": "n"}
        expected = [normalize(doc, "zmq_bson", "n", ts) for doc in docs]
        expected.insert(1, dict(plain))
        items = [FrameEvent(bson.encode(doc), ts, "zmq_bson", "n") for doc in docs]
        items.insert(1, plain)
        payloads = encode_events(items, 40)
        self.assertEqual(payloads, [encode_event(item, 40 + i) for i, item in enumerate(items)])
        for i, (payload, event) in enumerate(zip(payloads, expected)):
            self.assertEqual(decode_event(payload), {"_id": event_id(ts, "n", 40 + i), **event})
            self.assertEqual(list(decode_event(payload))[:2], ["_id", "timestamp"])

    def test_a_batch_encodes_to_the_bytes_of_its_events_one_by_one(self):
        ts = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
        fields = [{"type": f"t{i}", "context": {"i": i, "s": "é" * (i % 3), "l": [1, {"x": None}]}}
                  for i in range(1005)]  # index keys of 1 to 4 digits
        offset = 2**40 - 3  # the id keeps the offset's low 5 bytes
        payloads = encode_batch(fields, ts, "http", "nodé", offset)
        events = [{"timestamp": ts, **f, "source": "http", "node": "nodé"} for f in fields]
        self.assertEqual(payloads, [encode_event(e, offset + i) for i, e in enumerate(events)])
        self.assertEqual(event_ids(ts, "nodé", range(offset, offset + len(fields))),
                         [str(e["_id"]) for e in events])


if __name__ == "__main__":
    unittest.main()
