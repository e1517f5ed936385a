"""Forwarders in processes of their own (`forward.own_process`), against the real broker and
database: events arrive; a SIGKILL of the Kafka or the MongoDB forwarder's process mid-stream is
logged and the process started again, every acknowledged event arrives, MongoDB holds one copy
and Kafka at most a batch more per kill; a SIGKILL of the serving process takes its children
with it and a new `zcmd serve` delivers the rest; SIGTERM to the whole process group lets the
children drain first; a broker outage shows as backing_off and then drains; hour_complete
notices come once per hour and topic with exact counts across a kill of the Kafka process."""
import calendar
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

from zspark.hours import HOUR, hour_text
from zspark.journal import read_cursors

from ..appliance import BATCH, Services, message_id
from ..shifted_clock import CLOCK_OFFSET_ENV, MODULE as SHIFTED_CLOCK
from ..support import ROOT, ServeProcess, journal_events, kafka_read, start_broker, wait_until, zcmd
from .faultcase import FaultCase, scaled

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

KILLS = scaled(2, 8)  # of each forwarder process, under load
OWN_PROCESS = {"own_process": True}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not reaped) is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


class ForwarderProcesses(FaultCase):
    services = SERVICES

    def configure(self, **sections):
        forward = {**OWN_PROCESS, **sections.pop("forward", {})}
        return super().configure(forward=forward, **sections)

    def child_pid(self, name, other_than=None):
        """The pid of forwarder `name`'s process once it runs (and is not `other_than`)."""
        def running():
            status = self.status()
            process = status["processes"][f"forwarder {name}"]
            return (process["state"] == "running" and status["forwarders"][name]["state"] == "running"
                    and process["pid"] != other_than and process["pid"])
        return wait_until(running, timeout=30, message=f"the {name} forwarder's process running")

    def check_delivered_once(self, acknowledged, answered, kills):
        """Every acknowledged event in MongoDB once with its id, in Kafka at most a batch more per kill."""
        docs = list(self.collection().find({}, {"context.uid": 1}))
        delivered = {d["context"]["uid"]: str(d["_id"]) for d in docs}
        missing = acknowledged - set(delivered)
        self.assertFalse(missing, f"{len(missing)} of {len(acknowledged)} acknowledged events are "
                                  f"not in MongoDB, e.g. {sorted(missing)[:5]}")
        self.assertEqual({u: i for u, i in answered.items() if delivered[u] != i}, {},
                         "events stored under another id than the one answered")
        ids = set(delivered.values())
        self.assertEqual(len(docs) - len(ids), 0, "MongoDB holds an event twice")
        messages = self.read_kafka([self.topic, self.default_topic], ids, timeout=90)
        copies = collections.Counter(message_id(m) for m in messages)
        self.assertFalse(ids - set(copies), "events in MongoDB missing in Kafka")
        duplicated = len(messages) - len(copies)
        self.assertLessEqual(duplicated, kills * BATCH, f"more duplicates in Kafka than a batch ({BATCH}) per kill")
        return len(docs), duplicated

    def test_events_reach_kafka_and_mongodb_from_processes_of_their_own(self):
        self.configure(kafka={}, mongo={})
        server = self.serve()
        ids = self.post([{"type": "a", "topic": self.topic, "context": {"uid": f"u{i}"}} for i in range(30)])
        status = self.wait_delivered(["kafka", "mongo"])
        # (HTTP worker processes too, under ZSPARK_TEST_SET=http.workers=N: not these tests' own)
        processes = {name: p for name, p in status["processes"].items() if not name.startswith("http-worker ")}
        self.assertEqual(sorted(processes), ["forwarder kafka", "forwarder mongo", "owner"])
        self.assertEqual(processes["owner"]["pid"], server.proc.pid)
        pids = {p["pid"] for p in processes.values()}
        self.assertEqual(len(pids), 3, processes)
        for name in ("kafka", "mongo"):
            forwarder = status["forwarders"][name]
            self.assertEqual((forwarder["state"], forwarder["delivered"], forwarder["restarts"]),
                             ("running", 30, 0))
            self.assertEqual(forwarder["pid"], processes[f"forwarder {name}"]["pid"])
            with open(f"/proc/{forwarder['pid']}/cmdline", "rb") as f:
                self.assertIn(b"zspark.fwdchild", f.read())
        self.assertEqual(status["kafka_topics"]["taken"], 1)  # learnt from the Kafka process
        with open(os.path.join(self.journal_dir, "kafka", "topics.json")) as f:
            self.assertEqual(json.load(f)["topics"], [self.topic])  # written by the Kafka process
        self.assert_each_once(self.read_kafka([self.topic], ids), ids, "Kafka")
        self.assertEqual(sorted(self.mongo_ids()), sorted(ids))

        shown = zcmd("-y", self.config, "status")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        for name in ("kafka", "mongo"):
            self.assertRegex(shown.stdout, rf"forwarder {name}\s+{processes[f'forwarder {name}']['pid']}\s+running\s+0")
        checked = zcmd("-y", self.config, "check")
        self.assertEqual(checked.returncode, 0, checked.stdout)
        self.assertIn("restarts_forwarder_kafka=0c", checked.stdout)
        metrics = self.metrics()
        self.assertRegex(metrics, rf'zspark_process_up{{pid="{processes["forwarder mongo"]["pid"]}",'
                                  rf'process="forwarder mongo"}} 1.0')
        self.assertIn('zspark_forwarder_delivered_total{forwarder="kafka"} 30.0', metrics)
        self.stop(server)

    def metrics(self):
        from ..support import request
        status, _, body = request(self.port, "GET", "/metrics")
        self.assertEqual(status, 200, body)
        return body.decode()

    def test_a_killed_forwarder_process_is_restarted_and_every_acknowledged_event_arrives(self):
        self.configure(kafka={}, mongo={})
        server = self.serve()
        load = self.load("kill", workers=2, http_pause=0.01, zmq_pause=0.05)
        kills = collections.Counter()
        for round_ in range(KILLS):
            for name in ("kafka", "mongo"):
                wait_until(lambda: self.status()["forwarders"][name]["delivered"] > 0, timeout=30,
                           message=f"{name} delivering")
                time.sleep(self.rng.uniform(0.2, 1.0))
                pid = self.child_pid(name)
                os.kill(pid, signal.SIGKILL)
                kills[name] += 1
                self.child_pid(name, other_than=pid)
                forwarder = self.status()["forwarders"][name]
                self.assertEqual(forwarder["restarts"], kills[name], forwarder)
        self.assertEqual(self.status()["processes"]["forwarder kafka"]["last_exit"], "killed by SIGKILL")
        load.finish()
        self.assertEqual(load.http.bad, [])
        status = self.wait_delivered(["kafka", "mongo"], timeout=120)
        self.assert_no_damage(status)
        acknowledged = load.acknowledged()
        delivered, duplicated = self.check_delivered_once(acknowledged, load.http.acked, kills["kafka"])
        # The counters go on across the restarts: at least every event once.
        self.assertGreaterEqual(status["forwarders"]["mongo"]["delivered"], len(acknowledged))
        log = server.log()
        for name in ("kafka", "mongo"):
            self.assertEqual(len(re.findall(rf"forwarder {name} \(pid \d+\) exited \(killed by SIGKILL\); "
                                            rf"starting it again", log)), kills[name], log[-3000:])
            self.assertIn(f"forwarder {name} started (pid ", log)
            self.assertIn(f", restart {kills[name]}", log)
        self.stop(server)
        self.summary(len(load.sent_uids()), len(acknowledged), delivered, duplicated,
                     load.rejected, kills=dict(kills))

    def test_the_forwarders_die_with_the_serving_process_and_a_new_one_delivers_the_rest(self):
        self.configure(kafka={}, mongo={})
        acknowledged, answered = set(), {}
        for round_ in range(2):
            server = self.serve()
            load = self.load(f"owner{round_}", workers=2, http_pause=0.01, zmq_pause=0.05)
            wait_until(lambda: len(load.http.acked) >= 100, timeout=30, message="100 events acknowledged")
            load.poll()
            children = [self.child_pid(name) for name in ("kafka", "mongo")]
            self.stop(server, signal.SIGKILL)
            load.stop()
            acknowledged |= load.acknowledged()
            answered.update(load.http.acked)
            for pid in children:
                wait_until(lambda: not alive(pid), timeout=10, message=f"forwarder process {pid} to exit")
        server = self.serve()
        self.assert_no_damage(self.wait_delivered(["kafka", "mongo"], timeout=120))
        delivered, duplicated = self.check_delivered_once(acknowledged, answered, 2)
        self.stop(server)
        self.summary(len(acknowledged), len(acknowledged), delivered, duplicated, 0, owner_kills=2)

    def test_sigterm_to_the_process_group_lets_the_forwarders_drain_first(self):
        self.configure(kafka={}, mongo={}, forward={"drain_on_stop_s": 30})
        log = open(self.tmp.join("serve.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", "-y", self.config, "serve"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        log.close()
        server = ServeProcess(self.config, self.port, self.tmp.join("serve.log"))
        server.proc = proc
        self.addCleanup(lambda: proc.poll() is None and os.killpg(proc.pid, signal.SIGKILL))
        wait_until(lambda: self.status_or_none(), timeout=30, message="the server answering")
        children = [self.child_pid(name) for name in ("kafka", "mongo")]
        load = self.load("term", workers=3)
        wait_until(lambda: len(load.http.acked) >= 300, timeout=30, message="300 events acknowledged")
        os.killpg(proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C or a service manager does
        self.assertEqual(proc.wait(60), 0, server.log()[-3000:])
        load.stop()
        for pid in children:
            self.assertFalse(alive(pid))
        self.assertNotRegex(server.log(), r"forwarder \w+ \(pid \d+\) exited",
                            "a forwarder process died of the SIGTERM instead of draining")
        events = journal_events(self.journal_dir)
        self.assertEqual(read_cursors(self.journal_dir), {"kafka": len(events), "mongo": len(events)},
                         "every journaled event delivered before the stop")
        self.assertFalse(load.acknowledged() - {d["context"]["uid"] for d in self.collection().find()})

    def status_or_none(self):
        try:
            return self.status()
        except OSError:
            return None

    def test_a_broker_outage_shows_backing_off_and_then_drains(self):
        broker = start_broker(self.tmp.join("broker"))
        self.addCleanup(lambda: broker.stop())
        self.broker = broker
        self.configure(kafka={}, mongo={})
        server = self.serve()
        ids = self.post([{"type": "a", "topic": self.topic, "context": {"uid": f"a{i}"}} for i in range(10)])
        self.wait_delivered(["kafka", "mongo"])
        self.assertEqual(len(self.read_kafka([self.topic], ids)), 10)
        broker.stop()
        later = self.post([{"type": "a", "topic": self.topic, "context": {"uid": f"b{i}"}} for i in range(20)])
        down = self.wait_backing_off("kafka")["forwarders"]["kafka"]
        self.assertTrue(down["last_error"], down)
        self.assertEqual(self.status()["processes"]["forwarder kafka"]["restarts"], 0)  # the process retries
        broker.start()
        self.wait_delivered(["kafka", "mongo"], timeout=90)
        self.assert_each_once(self.read_kafka([self.topic], later), later, "Kafka after the outage")
        self.stop(server)

    def test_hour_complete_is_said_once_with_exact_counts_across_a_kill_of_the_kafka_process(self):
        clock_file = self.tmp.join("clock-offset")
        with open(clock_file, "w") as f:
            f.write("0")
        notice_topic = f"{self.topic}-notify"
        self.configure(kafka={"notice_topic": notice_topic}, mongo={},
                       notices={"enabled": True, "heartbeat_s": 0, "hour_grace_s": 1.0, "check_s": 0.1})
        server = self.serve(module=SHIFTED_CLOCK, env={CLOCK_OFFSET_ENV: clock_file})
        web, app = f"{self.topic}-web", f"{self.topic}-app"
        sent = collections.Counter()
        for round_ in range(3):
            for topic, count in ((web, 40 + round_), (app, 7)):
                self.post([{"type": "t", "topic": topic, "context": {"n": i}} for i in range(count)])
                sent[topic] += count
            os.kill(self.child_pid("kafka"), signal.SIGKILL)
        self.wait_delivered(["kafka", "mongo"], timeout=60)
        hours = collections.Counter()
        for event in journal_events(self.journal_dir):
            if event.get("source") != "notice":
                hours[hour_text(int(event["timestamp"].timestamp()) // HOUR * HOUR), event["topic"]] += 1
        self.assertEqual(sum(hours.values()), sum(sent.values()))
        last = max(calendar.timegm(time.strptime(h, "%Y-%m-%dT%H:00:00Z")) for h, _ in hours)
        with open(clock_file, "w") as f:
            f.write(repr(last + HOUR + 1.5 - time.time()))

        def said(messages):
            return {(m["context"]["hour"], m["context"]["topic"]) for m in messages
                    if m.get("type") == "hour_complete"} >= set(hours)

        messages = [m.json() for m in kafka_read(self.broker.address, [notice_topic],
                                                  done=lambda ms: said([m.json() for m in ms]), timeout=60)]
        notices = [(m["context"]["hour"], m["context"]["topic"], m["context"]["count"])
                   for m in messages if m.get("type") == "hour_complete"]
        self.assertEqual(sorted(notices), sorted((h, t, n) for (h, t), n in hours.items()),
                         "one notice per hour and topic, with the count of its events")
        self.stop(server)


if __name__ == "__main__":
    unittest.main()
