"""journal/follow.py: a journal directory followed by another process than its owner reads only
what the owner said is durable, across segments, and waits for the owner's word."""
import unittest

import gevent

from zspark.journal import Journal
from zspark.journal.follow import FollowedJournal

from .support import TempDir


class FollowedJournalTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.journal = Journal(self.tmp.join("journal"), segment_bytes=300).open()
        self.addCleanup(self.journal.close)
        self.follower = FollowedJournal(self.journal.directory)

    def tell(self):
        """What the owner tells its forwarder processes (fwdproxy.py)."""
        base = self.journal.segment_bases()[-1]
        self.follower.advance(self.journal.end_offset, base, self.journal.durable_bytes(base))

    def test_nothing_is_read_before_the_owners_word_and_nothing_past_it(self):
        for i in range(5):
            self.journal.append([b"event %d" % i])
        reader = self.follower.reader(0)
        self.addCleanup(reader.close)
        self.assertEqual(reader.read(), [])
        self.tell()
        self.journal.append([b"not told yet"])  # on disk, durable, but the follower was not told
        self.assertEqual([p for _, p in reader.read()], [b"event %d" % i for i in range(5)])
        self.assertEqual(reader.read(), [])
        self.tell()
        self.assertEqual(reader.read(), [(5, b"not told yet")])

    def test_it_reads_across_segments_rolled_meanwhile(self):
        payloads = [b"x" * 100 + b"%d" % i for i in range(12)]
        for payload in payloads:
            self.journal.append([payload])
        self.assertGreater(len(self.journal.segment_bases()), 2)
        self.tell()
        reader = self.follower.reader(0)
        self.addCleanup(reader.close)
        self.assertEqual([p for _, p in reader], payloads)

    def test_a_wait_ends_at_the_owners_word(self):
        self.tell()
        woken = gevent.spawn(self.follower.wait_for_append, self.journal.end_offset, 10)
        gevent.sleep(0.05)
        self.assertFalse(woken.ready())
        self.journal.append([b"e"])
        gevent.sleep(0.05)
        self.assertFalse(woken.ready())  # durable, but not yet told
        self.tell()
        self.assertTrue(woken.get(timeout=5))
        self.follower.close()
        self.assertTrue(self.follower.wait_for_append(self.journal.end_offset, 10))  # at once


if __name__ == "__main__":
    unittest.main()
