"""The journal under SIGKILL and on-disk damage, checked from outside the writing process.

A child process (tests/journal_writer.py) appends from several greenlets and prints each record
only after `append` returned; the test kills it with SIGKILL at a random moment and then reopens
the journal here: every acknowledged record must be there, intact, once, and appending must go
on after them. Then damage made by hand: a torn last record (cut at many points), a corrupt
record in the middle (every header field and the payload), in the last or an older segment.
Cursors the same way: a child (tests/cursor_writer.py) commits offset after offset and is killed;
the cursor must read as the last commit that returned or the one in flight, never anything else.
"""
import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest

from zspark.journal import Journal, Reader, list_segments, read_cursor

from .journal_writer import payload_for, uid_of
from .support import ROOT, TempDir

HEADER = 18  # magic 2, length 4, offset 8, crc 4 (zspark/journal/record.py)
LENGTH_AT = 2
OFFSET_AT = 6
CRC_AT = 14

RNG = random.Random(int(os.environ.get("ZSPARK_TEST_SEED", time.time_ns())))


def segment_name(base):
    return f"{base:020d}.log"


class Killed:
    """What one writer process told us before it was killed."""

    def __init__(self, open_offset, acked, returncode, stderr):
        self.open_offset = open_offset
        self.acked = acked  # offset -> uid
        self.returncode = returncode
        self.stderr = stderr


class CrashCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    # -- the writer child ------------------------------------------------------------------------

    def run_and_kill(self, directory, policy, tag, min_acks, segment_bytes=None, timeout=20):
        """Start the writer, read acknowledgements until a random count past `min_acks`, SIGKILL."""
        args = [sys.executable, "-m", "tests.journal_writer", directory, policy, tag]
        if segment_bytes:
            args.append(str(segment_bytes))
        err_path = self.tmp.join(f"writer-{tag}.err")
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        acked = {}
        try:
            first = proc.stdout.readline().decode()
            if not first.startswith("OPEN "):
                proc.kill()
                proc.wait()
                self.fail(f"writer did not open the journal: {first!r}\n{_read(err_path)}")
            open_offset = int(first.split()[1])
            target = RNG.randint(min_acks, 2 * min_acks)
            while len(acked) < target:
                line = proc.stdout.readline()
                if not line:
                    self.fail(f"writer stopped after {len(acked)} acks (exit {proc.poll()}):\n"
                              f"{_read(err_path)}")
                self._parse_ack(line, acked)
            rest, returncode = _sigkill(proc, RNG.uniform(0, 0.004))  # a random moment, not right after a line
        finally:
            _reap(proc, watchdog)
        for line in rest.split(b"\n")[:-1]:  # the last piece is a partial line or empty
            self._parse_ack(line + b"\n", acked)
        self.assertEqual(returncode, -signal.SIGKILL, "the writer must have died of SIGKILL, not by itself")
        return Killed(open_offset, acked, returncode, _read(err_path))

    def _parse_ack(self, line, acked):
        text = line.decode()
        self.assertTrue(text.startswith("A ") and text.endswith("\n"), f"odd writer line {text!r}")
        for pair in text[2:].split():
            offset, uid = pair.split(":", 1)
            offset = int(offset)
            self.assertNotIn(offset, acked, f"the journal acknowledged offset {offset} twice")
            acked[offset] = uid

    # -- checking a journal ----------------------------------------------------------------------

    def read_everything(self, journal):
        reader = journal.reader(0)
        try:
            records = list(reader)
        finally:
            reader.close()
        return records, reader

    def check_journal(self, directory, acked, policy, segment_bytes=None):
        """Reopen after the kill; check every acknowledged record; return the end offset."""
        kw = {"segment_bytes": segment_bytes} if segment_bytes else {}
        journal = Journal(directory, sync=policy, **kw).open()
        try:
            records, reader = self.read_everything(journal)
            offsets = [o for o, _ in records]
            self.assertEqual(reader.skipped_regions, 0, "a crash must not leave damage readers skip")
            self.assertEqual(len(offsets), len(set(offsets)), "an offset was read twice")
            self.assertEqual(offsets, list(range(len(offsets))),
                             "offsets must run from 0 without gaps or reordering")
            self.assertEqual(journal.end_offset, len(offsets))
            by_offset = {}
            seen_uids = set()
            for offset, payload in records:
                uid = uid_of(payload)
                self.assertEqual(payload, payload_for(uid), f"record {offset} ({uid}) is not intact")
                self.assertNotIn(uid, seen_uids, f"record {uid} is in the journal twice")
                seen_uids.add(uid)
                by_offset[offset] = uid
            missing = sorted((o, u) for o, u in acked.items() if by_offset.get(o) != u)
            if missing:
                self.fail(f"{len(missing)} of {len(acked)} acknowledged records are missing or at "
                          f"another offset after SIGKILL (sync={policy}), e.g. {missing[:5]}; the "
                          f"journal has {len(records)} records")
            return journal.end_offset
        finally:
            journal.close()

    def crash_rounds(self, policy, rounds, min_acks, segment_bytes=None):
        directory = self.tmp.join("journal")
        acked = {}
        end = 0
        for n in range(rounds):
            killed = self.run_and_kill(directory, policy, f"r{n}", min_acks, segment_bytes)
            self.assertEqual(killed.open_offset, end,
                             "after a crash the writer must reopen at the end it had reached")
            self.assertTrue(killed.acked, "the writer acknowledged nothing")
            self.assertGreaterEqual(min(killed.acked), end, "an offset was given out again")
            acked.update(killed.acked)
            end = self.check_journal(directory, acked, policy, segment_bytes)
            self.assertGreater(end, max(acked), "the journal ends before the last acknowledged record")
        # Appending afterwards continues past everything there.
        journal = Journal(directory, sync=policy).open()
        try:
            new = [payload_for(f"after.{i}") for i in range(5)]
            self.assertEqual(journal.append(new[:1]), [end])
            self.assertEqual(journal.append(new[1:]), list(range(end + 1, end + 5)))
        finally:
            journal.close()
        for i in range(5):
            acked[end + i] = f"after.{i}"
        self.assertEqual(self.check_journal(directory, acked, policy), end + 5)
        return directory


class SigkillMidStream(CrashCase):
    def test_sync_batch_keeps_every_acknowledged_record(self):
        self.crash_rounds("batch", rounds=3, min_acks=2000)

    def test_sync_always_keeps_every_acknowledged_record(self):
        self.crash_rounds("always", rounds=3, min_acks=1500)

    def test_segments_rolling_while_killed_keep_every_acknowledged_record(self):
        segment_bytes = 16 * 1024
        directory = self.crash_rounds("batch", rounds=2, min_acks=1500, segment_bytes=segment_bytes)
        bases = list_segments(directory)
        self.assertGreater(len(bases), 10, "small segments must have rolled many times")
        # Each segment is named by the offset of its first record.
        for base in bases:
            with open(os.path.join(directory, segment_name(base)), "rb") as f:
                head = f.read(HEADER)
            if head:
                self.assertEqual(int.from_bytes(head[OFFSET_AT:OFFSET_AT + 8], "big"), base,
                                 f"segment {segment_name(base)} does not start with its own offset")
        # And a directory reader (as `zcmd tail` uses) sees the same across all segments.
        reader = Reader(directory, 0, use_threadpool=False)
        offsets = [o for o, _ in reader]
        reader.close()
        self.assertEqual(offsets, list(range(len(offsets))))
        self.assertEqual(reader.skipped_regions, 0)


class SigkillCursor(CrashCase):
    def commit_and_kill(self, journal_dir, min_commits, timeout=20):
        """Start the committer, read commits until a random count past `min_commits`, SIGKILL.
        Return (the offset it opened at, the last offset whose commit returned)."""
        args = [sys.executable, "-m", "tests.cursor_writer", journal_dir, "kafka"]
        err_path = self.tmp.join("cursor-writer.err")
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            first = proc.stdout.readline().decode()
            self.assertTrue(first.startswith("OPEN "),
                            f"committer did not open: {first!r}\n{_read(err_path)}")
            opened = last = int(first.split()[1])
            for _ in range(RNG.randint(min_commits, 2 * min_commits)):
                line = proc.stdout.readline().decode()
                self.assertTrue(line.startswith("C "), f"committer stopped: {line!r}\n{_read(err_path)}")
                last = int(line.split()[1])
            rest, returncode = _sigkill(proc, RNG.uniform(0, 0.002))
        finally:
            _reap(proc, watchdog)
        for line in rest.split(b"\n")[:-1]:
            last = int(line.split()[1])
        self.assertEqual(returncode, -signal.SIGKILL, "the committer must have died of SIGKILL")
        return opened, last

    def test_a_killed_commit_leaves_the_last_committed_offset_or_the_one_in_flight(self):
        journal_dir = self.tmp.join("journal")
        cursor_file = os.path.join(journal_dir, "cursors", "kafka")
        expected = 0
        for round_ in range(12):
            if round_ in (0, 6):  # a new file, and an old-format file converted, killed early
                min_commits = RNG.randint(0, 3)
                if round_ == 6:
                    with open(cursor_file, "w") as f:
                        f.write(f"{expected + 1000}\n")
                    expected += 1000
            else:
                min_commits = RNG.randint(20, 400)
            opened, last = self.commit_and_kill(journal_dir, min_commits)
            self.assertEqual(opened, expected, f"round {round_}: the committer opened elsewhere")
            with captured_logs("zspark.journal") as logs:
                saved = read_cursor(journal_dir, "kafka")
            self.assertEqual([r.getMessage() for r in logs], [],
                             f"round {round_}: the cursor read with complaints")
            self.assertIn(saved, (last, last + 1), f"round {round_}: the last commit that returned "
                                                   f"was {last}; the cursor reads {saved}")
            expected = saved


class DamageOnDisk(CrashCase):
    """Journals built here, closed cleanly, then damaged by hand."""

    def build(self, directory, count, segment_bytes=None, prefix="rec"):
        kw = {"segment_bytes": segment_bytes} if segment_bytes else {}
        payloads = [payload_for(f"{prefix}{i}") for i in range(count)]
        journal = Journal(directory, sync="batch", **kw).open()
        try:
            for i, p in enumerate(payloads):
                self.assertEqual(journal.append([p]), [i])
        finally:
            journal.close()
        return payloads

    def locate(self, directory, payloads):
        """{offset: (segment path, byte position, record size)}, checked against the files."""
        bases = list_segments(directory)
        where = {}
        sizes = {b: 0 for b in bases}
        for offset, p in enumerate(payloads):
            base = max(b for b in bases if b <= offset)
            where[offset] = (os.path.join(directory, segment_name(base)), sizes[base], HEADER + len(p))
            sizes[base] += HEADER + len(p)
        for base in bases:
            self.assertEqual(os.path.getsize(os.path.join(directory, segment_name(base))), sizes[base],
                             "segment size does not match the documented record framing")
        return where

    def open_logged(self, directory, **kw):
        """Open the journal, expecting it to log at least one warning; return (journal, messages)."""
        with self.assertLogs("zspark", level="WARNING") as logs:
            journal = Journal(directory, **kw).open()
        self.addCleanup(journal.close)
        return journal, [r.getMessage() for r in logs.records]

    def copy(self, source, name):
        target = self.tmp.join(name)
        shutil.copytree(source, target)
        return target

    # -- torn last record ----------------------------------------------------------------------

    def check_torn(self, pristine, payloads, cut_at, name, **kw):
        """Cut the last record `cut_at` bytes into it and check open, read, append, reopen."""
        n = len(payloads)
        directory = self.copy(pristine, name)
        path, start, size = self.locate(directory, payloads)[n - 1]
        self.assertTrue(0 < cut_at < size)
        os.truncate(path, start + cut_at)

        journal, messages = self.open_logged(directory, **kw)
        self.assertTrue(any("torn" in m or "cut" in m for m in messages),
                        f"opening must say it cut a torn record; logged: {messages}")
        self.assertEqual(os.path.getsize(path), start, "the torn bytes must be cut off the file")
        self.assertEqual(journal.end_offset, n - 1)
        records, reader = self.read_everything(journal)
        self.assertEqual(records, list(enumerate(payloads[:-1])), "records before the torn one changed")
        self.assertEqual(reader.skipped_regions, 0)

        fresh = payload_for(f"fresh-{name}")
        self.assertEqual(journal.append([fresh]), [n - 1], "the next append must take the torn offset")
        self.assertEqual(journal.append([fresh + b"2"]), [n])
        records, _ = self.read_everything(journal)
        self.assertEqual(records, list(enumerate(payloads[:-1] + [fresh, fresh + b"2"])))
        journal.close()

        with self.assertNoLogs("zspark", level="WARNING"):
            journal = Journal(directory, **kw).open()
        try:
            records, reader = self.read_everything(journal)
            self.assertEqual(records, list(enumerate(payloads[:-1] + [fresh, fresh + b"2"])))
            self.assertEqual(reader.skipped_regions, 0)
        finally:
            journal.close()

    def test_torn_last_record_is_cut_at_open_wherever_it_was_cut(self):
        pristine = self.tmp.join("pristine")
        payloads = self.build(pristine, 40)
        size = HEADER + len(payloads[-1])
        cuts = {1, 2, 3, 5, LENGTH_AT + 4, OFFSET_AT + 8, HEADER - 1, HEADER, HEADER + 1,
                HEADER + len(payloads[-1]) // 2, size - 1}
        cuts |= {RNG.randint(1, size - 1) for _ in range(10)}
        for cut in sorted(cuts):
            with self.subTest(cut=cut, record_size=size):
                self.check_torn(pristine, payloads, cut, f"cut{cut}")

    def test_torn_first_record_of_a_just_rolled_segment(self):
        pristine = self.tmp.join("pristine")
        payloads = self.build(pristine, 60, segment_bytes=2048)
        bases = list_segments(pristine)
        self.assertGreater(len(bases), 3)
        # Make the last record the only one in the last segment: drop the later ones.
        last_base = bases[-1]
        payloads = payloads[:last_base + 1]
        path = os.path.join(pristine, segment_name(last_base))
        os.truncate(path, HEADER + len(payloads[-1]))
        size = HEADER + len(payloads[-1])
        for cut in sorted({1, HEADER - 1, HEADER, size - 1, RNG.randint(1, size - 1)}):
            with self.subTest(cut=cut):
                self.check_torn(pristine, payloads, cut, f"roll{cut}", segment_bytes=2048)

    def test_empty_last_segment_after_a_crash_during_roll(self):
        directory = self.tmp.join("journal")
        payloads = self.build(directory, 30, segment_bytes=1024)
        bases = list_segments(directory)
        # A crash right after the new segment was created, before its first record was written.
        os.truncate(os.path.join(directory, segment_name(bases[-1])), 0)
        payloads = payloads[:bases[-1]]
        journal = Journal(directory, segment_bytes=1024).open()
        self.addCleanup(journal.close)
        self.assertEqual(journal.end_offset, bases[-1])
        self.assertEqual(journal.append([b"next"]), [bases[-1]])
        records, _ = self.read_everything(journal)
        self.assertEqual(records, list(enumerate(payloads + [b"next"])))

    # -- a corrupt record in the middle --------------------------------------------------------

    DAMAGE = {
        # name: (byte position inside the record, xor mask)
        "magic": (0, 0xFF),
        "length-larger": (LENGTH_AT, 0x01),  # +16 MiB: past the end of the file
        "length-smaller": (LENGTH_AT + 3, 0x08),
        "offset": (OFFSET_AT + 7, 0x01),
        "crc": (CRC_AT + 1, 0x40),
        "payload": (None, 0xA5),
    }

    def damage(self, path, start, size, field):
        at, mask = self.DAMAGE[field]
        positions = [at] if at is not None else RNG.sample(range(HEADER, size), 3)
        with open(path, "r+b") as f:
            for pos in positions:
                f.seek(start + pos)
                byte = f.read(1)[0]
                f.seek(start + pos)
                f.write(bytes([byte ^ mask]))

    def check_corrupt_middle(self, pristine, payloads, victim, field, name, **kw):
        n = len(payloads)
        directory = self.copy(pristine, name)
        where = self.locate(directory, payloads)
        path, start, size = where[victim]
        sizes_before = {p: os.path.getsize(p) for p in {w[0] for w in where.values()}}
        self.damage(path, start, size, field)

        with captured_logs():  # it may warn about the damage; what matters is that it opens
            journal = Journal(directory, **kw).open()  # opens fine: damage is never fatal
        self.addCleanup(journal.close)
        self.assertEqual({p: os.path.getsize(p) for p in sizes_before}, sizes_before,
                         "open must not cut intact records that follow a damaged one")
        self.assertEqual(journal.end_offset, n)
        expected = [(o, p) for o, p in enumerate(payloads) if o != victim]
        with self.assertLogs("zspark", level="WARNING"):
            records, reader = self.read_everything(journal)
        self.assertEqual(records, expected, f"the reader must skip exactly record {victim}")
        self.assertEqual(reader.skipped_regions, 1)
        self.assertEqual(reader.skipped_bytes, size, "the skipped bytes are exactly the damaged record")

        # A directory reader (zcmd tail's) skips it the same way.
        with self.assertLogs("zspark", level="WARNING"):
            plain = Reader(directory, 0, use_threadpool=False)
            self.assertEqual(list(plain), expected)
            plain.close()
        self.assertEqual(plain.skipped_regions, 1)

        # Appending goes on after the last intact record, and survives a reopen.
        self.assertEqual(journal.append([b"after-damage"]), [n])
        journal.close()
        with captured_logs():
            journal = Journal(directory, **kw).open()
        self.addCleanup(journal.close)
        self.assertEqual(journal.end_offset, n + 1)
        with self.assertLogs("zspark", level="WARNING"):
            records, reader = self.read_everything(journal)
        self.assertEqual(records, expected + [(n, b"after-damage")])
        self.assertEqual(reader.skipped_regions, 1)
        journal.close()

    def test_corrupt_record_in_the_middle_of_the_last_segment_is_skipped(self):
        pristine = self.tmp.join("pristine")
        payloads = self.build(pristine, 50)
        for field in self.DAMAGE:
            victim = RNG.randint(5, 44)
            with self.subTest(field=field, victim=victim):
                self.check_corrupt_middle(pristine, payloads, victim, field, f"mid-{field}")

    def test_corrupt_record_in_an_older_segment_is_skipped(self):
        pristine = self.tmp.join("pristine")
        payloads = self.build(pristine, 80, segment_bytes=4096)
        bases = list_segments(pristine)
        self.assertGreater(len(bases), 3)
        first, second = bases[1], bases[2]  # a record in the middle of the second segment
        for field in self.DAMAGE:
            victim = RNG.randint(first + 1, second - 2)
            with self.subTest(field=field, victim=victim):
                self.check_corrupt_middle(pristine, payloads, victim, field, f"old-{field}",
                                          segment_bytes=4096)


@contextlib.contextmanager
def captured_logs(name="zspark"):
    """Collect (and keep off stderr) what `name` logs inside the block; yields the records."""
    logger = logging.getLogger(name)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate, level = saved
        logger.setLevel(level)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _sigkill(proc, pause):
    """SIGKILL `proc` after `pause` seconds; what it still wrote to stdout, and its return code."""
    time.sleep(pause)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.stdout.read(), proc.wait()


def _reap(proc, watchdog):
    watchdog.cancel()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
