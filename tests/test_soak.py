"""The short soak: `scripts/soak` for 20 s at 200 events/s (half HTTP, half ZeroMQ) against its own
broker and database. Nothing acknowledged may be missing from Kafka or MongoDB, MongoDB holds no
duplicate, and the server's RSS and open files do not grow beyond the script's bounds."""
import json
import os
import subprocess
import sys
import unittest

from .support import ROOT


class ShortSoak(unittest.TestCase):
    def test_steady_load_loses_nothing_and_does_not_grow(self):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "soak"), "--duration", "20",
                                 "--rate", "200", "--every", "2", "--json"],
                                capture_output=True, text=True, timeout=600)
        print(result.stderr.strip().splitlines()[-2] if result.stderr.strip() else "", file=sys.stderr)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertGreaterEqual(summary["acknowledged"], 0.8 * 20 * 200)
        self.assertEqual((summary["mongo_missing"], summary["kafka_missing"], summary["mongo_duplicates"]), (0, 0, 0))
        self.assertLess(summary["rss_mib_end"] - summary["rss_mib_baseline"], 40)
        self.assertLessEqual(summary["fds_end"] - summary["fds_baseline"], 10)
        self.assertGreaterEqual(len(summary["samples"]), 5)


if __name__ == "__main__":
    unittest.main()
