"""Positioning a reader at an offset through the journal's sparse index (journal/index.py): the
right records, for a bounded amount of parsing, in a large segment, after recovery, past damaged
records, across segments, and when the index is wrong (the file changed behind it).

Work is counted (records parsed), never timed. Every answer is checked against a reader on the
directory alone, which parses each segment from its start.
"""
import os
import random
from unittest import mock

from zspark.journal import Reader, read_cursor, record
from zspark.journal.index import SPACING, OffsetIndex

from .test_journal import JournalCase, payloads

SIZE = 100  # payload bytes: a record is 118 bytes, so SPACING holds about 555 of them
PER_SPACING = SPACING // (SIZE + record.HEADER_SIZE) + 1


class Counted:
    """Counts record.parse calls while active: the records parsed, also in runs (the Python
    reader of runs is used meanwhile, which parses each record of a run with record.parse)."""

    def __enter__(self):
        self.calls = 0
        real = record.parse

        def parse(buf, pos):
            self.calls += 1
            return real(buf, pos)

        self._patches = [mock.patch.object(record, "parse", parse),
                         mock.patch.object(record, "parse_run", record._parse_run)]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in self._patches:
            patch.stop()


class IndexedReaderTest(JournalCase):
    def fill(self, journal, n, batch=100):
        for start in range(0, n, batch):
            journal.append(payloads(batch, start, SIZE))

    def read_at(self, journal, offset, n=10):
        """(records read from `offset`, parse calls it took)."""
        reader = journal.reader(offset)
        self.addCleanup(reader.close)
        with Counted() as counted:
            records = reader.read(max_records=n)
        return records, counted.calls

    def assert_positioned(self, journal, offsets, n=10):
        """Each offset reads what a directory reader from the segment's start reads, parsing at
        most about twice SPACING bytes of records before it (entries are SPACING apart, or a
        small batch more)."""
        for offset in offsets:
            records, calls = self.read_at(journal, offset, n)
            expected = Reader(self.dir, offset, use_threadpool=False)
            self.addCleanup(expected.close)
            self.assertEqual(records, expected.read(max_records=n), offset)
            self.assertLessEqual(calls, 2 * PER_SPACING + n + 5, offset)

    def test_a_reader_starts_at_its_offset_in_a_large_segment_without_scanning_it(self):
        journal = self.open(segment_bytes=64 * 1024**2)
        self.fill(journal, 20000)
        self.assertEqual(len(journal.segment_bases()), 1)
        offsets = [0, 1, 554, 555, 556, 9999, 10000, 19990, 19999] + random.Random(7).sample(range(20000), 20)
        self.assert_positioned(journal, offsets)
        records, _ = self.read_at(journal, 12345, 3)
        self.assertEqual(records, list(zip([12345, 12346, 12347], payloads(3, 12345, SIZE))))
        self.assertEqual(self.read_at(journal, 20000), ([], 0))

    def test_after_recovery_the_index_is_rebuilt_from_the_scan_of_the_last_segment(self):
        journal = self.open(segment_bytes=64 * 1024**2)
        self.fill(journal, 20000)
        journal.close()
        journal = self.open(segment_bytes=64 * 1024**2)
        self.assertGreater(len(journal.index.entries(0)), 20)
        self.assert_positioned(journal, [0, 7777, 19999])
        self.fill(journal, 5000)  # and new appends are indexed as they are written
        self.assert_positioned(journal, [20000, 22222, 24999])

    def test_damaged_records_are_skipped_as_from_the_start(self):
        journal = self.open(segment_bytes=64 * 1024**2)
        self.fill(journal, 20000)
        journal.close()
        path = os.path.join(self.dir, record.segment_name(0))
        with open(path, "r+b") as f:
            for damaged in (3000, 3001, 15000):  # flip a payload byte: the checksum fails
                f.seek(damaged * (SIZE + record.HEADER_SIZE) + record.HEADER_SIZE + 10)
                f.write(b"\xff")
        journal = self.open(segment_bytes=64 * 1024**2)
        for offset in (2999, 3000, 3001, 3002, 14990, 15000, 15001, 19999):
            records, _ = self.read_at(journal, offset, 20)
            expected = [o for o in range(offset, min(offset + 20 + 3, 20000)) if o not in (3000, 3001, 15000)]
            self.assertEqual([o for o, _ in records], expected[:20], offset)
            self.assertEqual([p for _, p in records], [payloads(1, o, SIZE)[0] for o in expected[:20]])

    def test_across_segments_old_ones_are_scanned_once_then_indexed(self):
        journal = self.open(segment_bytes=256 * 1024)
        self.fill(journal, 20000)
        bases = journal.segment_bases()
        self.assertGreater(len(bases), 5)
        self.assert_positioned(journal, [bases[2] + 1000, bases[-1] + 10, bases[3] - 1, bases[3]])
        journal.close()
        journal = self.open(segment_bytes=256 * 1024)
        # After a restart only the last segment is known; the first reader of an older segment
        # parses it from its start, and tells the index on its way.
        target = bases[2] + 2000
        records, first_calls = self.read_at(journal, target)
        self.assertEqual([o for o, _ in records], list(range(target, target + 10)))
        self.assertGreater(first_calls, 2 * PER_SPACING + 15)
        self.assert_positioned(journal, [target, target - 500, bases[2] + 1, bases[-1] + 5])

    def test_a_wrong_index_is_found_out_and_the_segment_read_from_its_start(self):
        journal = self.open(segment_bytes=64 * 1024**2)
        self.fill(journal, 5000)
        entries = journal.index.entries(0)
        self.assertGreater(len(entries), 2)
        wrong = OffsetIndex()
        for offset, position in entries:
            wrong.note(0, offset + 1, position + 3)  # neither the record nor a record start
        journal.index = wrong
        with self.assertLogs("zspark.journal", "WARNING") as logs:
            reader = journal.reader(4000)
            self.addCleanup(reader.close)
            self.assertEqual([o for o, _ in reader.read(max_records=5)], [4000, 4001, 4002, 4003, 4004])
        self.assertIn("index of segment", logs.output[0])

    def test_forwarder_cursors_are_positioned_by_the_index(self):
        journal = self.open(segment_bytes=64 * 1024**2)
        self.fill(journal, 20000)
        cursor = journal.cursor("fwd")
        self.addCleanup(cursor.close)
        cursor.commit(17777)
        reader = journal.reader(read_cursor(self.dir, "fwd"))
        self.addCleanup(reader.close)
        with Counted() as counted:
            self.assertEqual(reader.read(max_records=1)[0][0], 17777)
        self.assertLessEqual(counted.calls, 2 * PER_SPACING + 5)


class OffsetIndexTest(JournalCase):
    def test_entries_are_sparse_ordered_and_forgotten_with_their_segment(self):
        index = OffsetIndex()
        for offset in range(0, 10000, 10):
            index.note(0, offset, offset * 100)
        entries = index.entries(0)
        self.assertTrue(all(b[1] - a[1] >= SPACING for a, b in zip(entries, entries[1:])))
        self.assertEqual(index.floor(0, 5), (0, 0))
        offset, position = index.floor(0, 7000)
        self.assertLessEqual(offset, 7000)
        self.assertLess(7000 * 100 - position, SPACING + 1000)
        index.note(0, 1, 100)  # too close to (0, 0): not kept
        self.assertEqual(index.floor(0, 5), (0, 0))
        self.assertIsNone(index.floor(5, 3))
        index.forget(0)
        self.assertIsNone(index.floor(0, 7000))
