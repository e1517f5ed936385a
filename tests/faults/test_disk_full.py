"""A real out-of-space error: the journal on a small tmpfs that fills up under mixed load. HTTP
answers 503 naming the journal's disk and the log says so; nothing journaled is harmed (every
record intact, no torn tail at the next start); once space is freed ingest resumes by itself, and
every acknowledged event arrives in Kafka and MongoDB.

Mounting needs root (or CAP_SYS_ADMIN). Where the suite cannot mount (or ZSPARK_FAULTS_INJECT_ENOSPC
is set), the same test runs the server with an injected ENOSPC instead (tests/faults/enospc_serve.py)
and says so in its output."""
import collections
import os
import subprocess
import unittest

from zspark.journal import Reader, decode_event

from ..appliance import Services, message_id
from ..support import wait_until
from .faultcase import MiB, FaultCase, report, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

DISK = scaled(4 * MiB, 64 * MiB)  # the tmpfs
FILLER = DISK - scaled(1 * MiB, 16 * MiB)  # taken before the server starts; the journal gets the rest


def mount_tmpfs(directory, size):
    """Mount a tmpfs of `size` bytes on `directory`; None, or why it could not."""
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", directory],
                            capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return (result.stderr or result.stdout).strip() or f"mount exited with {result.returncode}"


class DiskFull(FaultCase):
    services = SERVICES

    def setUp(self):
        super().setUp()
        self.disk = self.tmp.join("disk")
        os.mkdir(self.disk)
        if os.environ.get("ZSPARK_FAULTS_INJECT_ENOSPC"):
            why = "ZSPARK_FAULTS_INJECT_ENOSPC is set"
        else:
            why = mount_tmpfs(self.disk, DISK)
        if why is None:
            self.addCleanup(subprocess.run, ["umount", "-l", self.disk], check=True)
            self.mode = f"a real ENOSPC from a {DISK // MiB} MiB tmpfs"
            self.filler = os.path.join(self.disk, "filler")
            with open(self.filler, "wb") as f:
                f.write(b"\0" * FILLER)
            self.serve_options = {}
        else:
            self.mode = f"an INJECTED ENOSPC (no tmpfs: {why})"
            self.filler = self.tmp.join("disk-full.flag")  # while it exists, journal writes fail
            self.serve_options = {"module": "tests.faults.enospc_serve",
                                  "env": {"ZSPARK_TEST_ENOSPC_FLAG": self.filler}}
        report(f"{self.name}: {self.mode}")

    def fill_disk(self):
        if self.serve_options:  # injected: the disk is "full" from now on
            open(self.filler, "w").close()

    def test_out_of_space_503_naming_the_disk_then_recovery_once_space_is_freed(self):
        self.configure(kafka={}, mongo={}, journal={"dir": os.path.join(self.disk, "journal")})
        server = self.serve(**self.serve_options)
        load = self.load("disk", workers=2, pad=200, http_pause=0.01, zmq_pause=0.05)
        wait_until(lambda: len(load.http.acked) >= 100, timeout=30, message="100 events acknowledged")
        self.fill_disk()
        wait_until(lambda: load.http.refused >= 5, timeout=60, message="503 answers: the disk full")

        # Full: a clear refusal naming the disk, in the answer and in the log.
        headers, error, probes, probes_sent = self.refused_probe()
        self.assertIn("no space left", error)
        self.assertIn(self.journal_dir, error, "the answer names the journal's disk")
        self.assertIn("retry-after", headers)
        full_log = [line for line in server.log().splitlines() if "no space left" in line.lower()]
        self.assertTrue(full_log, "the log says the disk is full")
        self.assertIn(self.journal_dir, full_log[0], "the log names the journal's disk")
        self.assertIsNone(server.proc.poll(), "a full disk does not stop the server")

        # Nothing journaled is harmed: every record intact, every acknowledged event there.
        acked_while_full = {**load.http.acked, **probes}
        journal = self.read_journal()
        harmed = {u: i for u, i in acked_while_full.items() if journal.get(u) != i}
        self.assertEqual(harmed, {}, "acknowledged events missing or changed in the journal")

        # Space freed: ingest resumes by itself.
        os.unlink(self.filler)
        acked_at_resume = len(load.http.acked)
        wait_until(lambda: len(load.http.acked) >= acked_at_resume + 200, timeout=60,
                   message="HTTP ingest resuming without a restart")
        load.finish()
        self.assert_no_damage(self.wait_delivered(["kafka", "mongo"], timeout=60))
        self.assertEqual(load.http.bad, [], "answers other than 200 and 503")
        self.stop(server)

        # Neither while full nor at a restart was anything cut or skipped; every acknowledged
        # event was delivered.
        server = self.serve(**self.serve_options)
        for word in ("torn", "damaged", "skipped"):
            self.assertNotIn(word, server.log(), "damage reported in the journal around the full disk")
        self.stop(server)
        journal = self.read_journal()
        acknowledged = load.acknowledged() | set(probes)
        self.assertFalse(acknowledged - set(journal), "acknowledged events missing in the journal")
        docs = list(self.collection().find({}, {"context.uid": 1}))
        delivered = {d["context"]["uid"]: str(d["_id"]) for d in docs}
        self.assertEqual(delivered, journal, "MongoDB holds exactly the journal")
        self.assertEqual(len(docs), len(delivered), "MongoDB holds an event twice")
        messages = self.read_kafka([self.topic, self.default_topic], journal.values())
        kafka = collections.Counter(message_id(m) for m in messages)
        self.assertEqual(set(kafka), set(journal.values()), "Kafka holds the journal's events")
        self.summary(sent=len(load.sent_uids()) + probes_sent, acknowledged=len(acknowledged),
                     delivered={"kafka": len(kafka), "mongo": len(delivered)},
                     duplicated={"kafka": len(messages) - len(kafka), "mongo": len(docs) - len(delivered)},
                     rejected=load.rejected, refused_503=load.http.refused, disk=self.mode.split(" (")[0])

    def read_journal(self):
        """{uid: id} of the journal's records, asserting every one is intact."""
        reader = Reader(self.journal_dir, 0, use_threadpool=False)
        try:
            events = [decode_event(payload) for _, payload in reader]
        finally:
            reader.close()
        self.assertEqual((reader.skipped_regions, reader.skipped_bytes), (0, 0),
                         "damaged bytes in the journal after the disk was full")
        return {e["context"]["uid"]: str(e["_id"]) for e in events}


if __name__ == "__main__":
    unittest.main()
