"""One meaning of --type / --topic for `zcmd tail`, `GET /tail` (`zcmd tail --server`) and
`zcmd replay` (zspark/recordfilter.py): shell wildcards matched against the whole value; and
`-n N` / `last=N` with a filter is the last N matching events, found within a bounded look back.

Asserted: the events each one prints or streams, and work counted (bytes read), never time."""
import datetime
import json
import os
import unittest
from unittest import mock

from tests.hostile.test_tail_budgets import TailCase
from zspark.journal import JournalView, decode_records, encode_event, reader as reader_module
from zspark.recordfilter import RecordFilter, start_of_last

from .support import TempDir, journal_events, write_journal, zcmd

# (patterns for --type, the types of EVENTS they select): the one meaning every reader must give.
TYPES = ["page.view", "page.click", "pages", "xpage.view", "page", "a*b", "aXb", "Page.view"]
CASES = [
    (["page.*"], ["page.view", "page.click"]),
    (["page.*", "pages"], ["page.view", "page.click", "pages"]),
    (["page?"], ["pages"]),
    (["*.view"], ["page.view", "xpage.view", "Page.view"]),
    (["page"], ["page"]),
    (["a[*]b"], ["a*b"]),
    (["a*b"], ["a*b", "aXb"]),
    (["[!p]*"], ["xpage.view", "a*b", "aXb", "Page.view"]),
    (["PAGE.*"], []),
]


class SameMeaningEverywhere(TailCase):
    def setUp(self):
        super().setUp()
        events = [{"type": t, "topic": "web" if i % 2 else "app", "context": {"i": i}} for i, t in enumerate(TYPES)]
        self.ids = self.assert_accepted(self.post(events), len(events))
        self.type_of = dict(zip(self.ids, TYPES))

    def tail_files(self, *args):
        result = zcmd("tail", "--journal", self.journal_dir, "-n", "100", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return self.types(json.loads(line)["_id"] for line in result.stdout.splitlines())

    def types(self, ids):
        """The types of the test's events among `ids` (not the markers tail_http posts)."""
        return [self.type_of[i] for i in ids if i in self.type_of]

    def replay(self, *args):
        result = zcmd("replay", "--to", "stdout", "--journal", self.journal_dir, "--no-progress", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return self.types(json.loads(line)["_id"] for line in result.stdout.splitlines())

    def tail_http(self, query):
        """The types GET /tail?last=100&QUERY streams from the journal's history: a marker
        (type end-marker, topic zz: QUERY must let it through) is posted after the stream starts,
        and what came before it is the history."""
        client = self.tail(f"last=100&{query}")
        self.assertEqual(client.status, 200)
        client.chunk()  # the stream has started
        marker = self.assert_accepted(self.post({"type": "end-marker", "topic": "zz"}), 1)[0]
        seen = []
        while marker not in seen:
            seen += [e["_id"] for e in client.events()]
        client.close()
        return self.types(seen)

    def test_type_patterns(self):
        for patterns, expected in CASES:
            with self.subTest(patterns=patterns):
                args = [a for p in patterns for a in ("--type", p)]
                self.assertEqual(self.tail_files(*args), expected, "zcmd tail")
                self.assertEqual(self.replay(*args), expected, "zcmd replay")
                query = "&".join(f"type={p}" for p in patterns + ["end-marker"])
                self.assertEqual(self.tail_http(query), expected, "GET /tail")

    def test_type_and_topic_together(self):
        # Types are OR-ed, and the topic must hold too.
        args = ["--type", "page.*", "--type", "a?b", "--topic", "w*"]
        expected = [t for i, t in enumerate(TYPES) if i % 2 and t in ("page.view", "page.click", "a*b", "aXb")]
        self.assertEqual(self.tail_files(*args), expected)
        self.assertEqual(self.replay(*args), expected)
        self.assertEqual(self.tail_http("type=page.*&type=a?b&type=end-marker&topic=w*&topic=zz"), expected)


class LastMatchingOverHttp(TailCase):
    """`GET /tail?last=N&type=T` (`zcmd tail --server -n N --type T`): the last N T events,
    looked for back over at most http.tail_max_last records."""

    http_settings = {"tail_max_last": 40}

    def history(self, query):
        """The ids GET /tail?QUERY streams before a marker (type marker: QUERY lets it through)
        posted once the stream has started."""
        client = self.tail(query)
        self.addCleanup(client.close)
        client.chunk()
        (marker,) = self.assert_accepted(self.post({"type": "marker"}), 1)
        seen = []
        while marker not in seen:
            seen += [e["_id"] for e in client.events()]
        return seen[:seen.index(marker)]

    def test_the_last_n_matching_within_the_cap(self):
        ids = self.assert_accepted(self.post([{"type": "wanted" if i < 10 else "noise", "context": {"i": i}}
                                              for i in range(35)]), 35)
        self.assertEqual(self.history("last=3&type=want*&type=marker"), ids[7:10])
        self.assert_accepted(self.post([{"type": "noise"} for _ in range(10)]), 10)
        # 46 records now: the last 40 hold wanted ones 6..9 and the first marker.
        (first_marker,) = [str(e["_id"]) for e in journal_events(self.journal_dir) if e["type"] == "marker"]
        self.assertEqual(self.history("last=20&type=wanted&type=marker"), ids[6:10] + [first_marker])


class Help(unittest.TestCase):
    def test_each_help_says_what_a_pattern_means(self):
        for command in ("tail", "replay"):
            with self.subTest(command=command):
                result = zcmd(command, "--help")
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn("wildcards such as 'page.*'", " ".join(result.stdout.split()))


class LastMatching(unittest.TestCase):
    """`zcmd tail -n 5 --type T` (issue 12): the last 5 T events, however many others follow."""

    @classmethod
    def setUpClass(cls):  # the tests only read the journal: one for all of them
        cls.tmp = TempDir()
        cls.addClassCleanup(cls.tmp.remove)
        cls.dir = cls.tmp.join("journal")
        stamp = {"timestamp": datetime.datetime(2026, 1, 1), "node": "n", "source": "http"}
        # About 12 MiB in one segment: far more than a reader reads at once (1 MiB).
        events = [{"type": "wanted" if i < 500 else "noise", "context": {"i": i, "pad": "x" * 4000}, **stamp}
                  for i in range(3000)]
        write_journal(cls.dir, events, segment_bytes=64 * 1024**2, chunk=500)

    def tail(self, *args):
        result = zcmd("tail", "--journal", self.dir, *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return [json.loads(line)["context"]["i"] for line in result.stdout.splitlines()]

    def test_the_last_n_of_a_type_are_found_behind_others(self):
        self.assertEqual(self.tail("-n", "5", "--type", "wanted"), [495, 496, 497, 498, 499])
        self.assertEqual(self.tail("-n", "2", "--type", "w*"), [498, 499])
        self.assertEqual(self.tail("-n", "3"), [2997, 2998, 2999], "no filter: the last 3 records")
        self.assertEqual(self.tail("-n", "600", "--type", "wanted"), list(range(500)), "fewer there: all of them")

    def test_the_look_back_is_bounded(self):
        self.assertEqual(self.tail("-n", "5", "--type", "wanted", "--lookback", "2400"), [])
        self.assertEqual(self.tail("-n", "5", "--type", "wanted", "--lookback", "2502"), [498, 499])
        result = zcmd("tail", "--server", "--lookback", "10")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--lookback", result.stderr)

    def test_a_directory_reader_parses_its_segment_from_the_start_once(self):
        # All 3000 events in one segment; the wanted ones at its start, so the look back goes
        # window after window towards the start. end_offset() parses the segment once; each
        # window's start is then found by the view's offset index, not by parsing the segment
        # from its beginning again (which read it about five times over).
        size = os.path.getsize(os.path.join(self.dir, "00000000000000000000.log"))
        read = [0]
        real = os.pread

        def counting(fd, n, position):
            data = real(fd, n, position)
            read[0] += len(data)
            return data

        view = JournalView(self.dir)
        reader = view.reader()
        with mock.patch.object(reader_module.os, "pread", counting):
            start = start_of_last(reader, view.first_offset(), view.end_offset(), 5,
                                  RecordFilter({"type": ["wanted"]}), 100000)
        reader.close()
        self.assertEqual(start, 495)
        self.assertLess(read[0], 2 * size, f"read {read[0]} bytes of a {size}-byte segment")


class DecodeOrSkip(unittest.TestCase):
    def test_records_that_are_not_events_are_named_and_passed_over(self):
        good = [(offset, encode_event({"type": "t", "timestamp": datetime.datetime(2026, 1, 1),
                                       "node": "n", "context": {"n": offset}}, offset)) for offset in (3, 5)]
        records = [good[0], (4, b"\x05\x00\x00\x00junk"), good[1], (6, b"")]
        skipped = []
        decoded = decode_records(records, lambda offset, payload, error: skipped.append((offset, payload)))
        self.assertEqual([(o, e["context"]["n"]) for o, e in decoded], [(3, 3), (5, 5)])
        self.assertEqual(skipped, [(4, b"\x05\x00\x00\x00junk"), (6, b"")])
        self.assertEqual([o for o, _ in decode_records(good)], [3, 5])
        self.assertEqual(decode_records([]), [])


if __name__ == "__main__":
    unittest.main()
