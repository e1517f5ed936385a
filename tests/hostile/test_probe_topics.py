"""What an independent probe found in the topic rules after issue 10 (zcmd serve with the local
broker): zspark's test of a legal Kafka topic name, `^[A-Za-z0-9._-]{1,249}$`, took a name ending
in a newline (`$` matches before a final newline), so `web\n` counted as legal: it took one of
`kafka.max_topics` for ever (kept in journal/kafka/topics.json), went to the broker, was refused
there ("Invalid topic") and dead-lettered. A sender could fill the cap with names no broker takes,
and every later topic went to the default one.
"""
import json
import os

from ..support import journal_events
from .test_topics import SERVICES, TopicsCase

setUpModule, tearDownModule = SERVICES.start, SERVICES.stop


class IllegalNamesTest(TopicsCase):
    def test_names_ending_in_a_newline_are_illegal_and_take_no_room(self):
        cap = 3
        server = self.start(max_topics=cap)
        bad = [f"zs-{self.uid}-{c}\n" for c in "abc"]
        self.post([{"type": "t", "topic": topic} for topic in bad])
        good = f"zs-{self.uid}-ok"
        ids = self.post({"type": "t", "topic": good})
        self.wait_delivered(["kafka"])
        topics = self.kafka_topics_status()
        self.assertEqual(topics["taken"], 1, topics)
        found, _ = self.where([good, self.default_topic], ids)
        self.assertEqual(found[ids[0]], [good])
        reasons = [d["reason"] for d in self.dead_letters("kafka")]
        self.assertEqual(len(reasons), 3, reasons)
        for reason in reasons:
            self.assertIn("not a legal Kafka topic name", reason)
        with open(os.path.join(self.journal_dir, "kafka", "topics.json")) as f:
            self.assertEqual(json.load(f)["topics"], [good])
        self.assertEqual(len(journal_events(self.journal_dir)), 5)  # 4 events and node_online
        self.stop(server)

    def test_the_policy_calls_a_trailing_newline_illegal(self):
        from zspark.topics import legal_topic as is_legal_topic
        for name in ("web\n", "web\r\n", "\nweb", "we\nb"):
            self.assertFalse(is_legal_topic(name), repr(name))
        self.assertTrue(is_legal_topic("web.a-b_c"))
