"""Shared test helpers: temporary dirs, free ports, configs, an in-process server, and a
`zcmd serve` subprocess that tests can feed, stop with a signal and restart."""
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port():
    """A port of 127.0.0.1 where nothing listens, below the kernel's ephemeral range (32768 up):
    there no listener bound to port 0 can take it meanwhile, and no connection to it can be one
    from that same port to itself (TCP's simultaneous open), which a client retrying a port in
    the range now and then makes, then talks to itself."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no closed port found in 20000-32000")


class TempDir:
    """A temporary directory removed at cleanup: `self.addCleanup(d.remove)`."""

    def __init__(self, prefix="zspark-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def join(self, *parts):
        return os.path.join(self.path, *parts)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def config_data(directory, **sections):
    """A config for a test: journal in `directory`, every listener on a free port.

    The node's notices (node_online, heartbeats...) are off unless a test turns them on
    (`notices={"enabled": True}`), so that the journal holds exactly what the test sent."""
    data = {
        "node": {"id": "test"},
        "journal": {"dir": os.path.join(directory, "journal"), "sync": "batch"},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "zmq": {"bson_bind": f"tcp://127.0.0.1:{free_port()}",
                "json_bind": f"tcp://127.0.0.1:{free_port()}"},
        "log": {"level": "info"},
        "notices": {"enabled": False},
    }
    for name, values in list(test_settings().items()) + list(sections.items()):
        data.setdefault(name, {}).update(values)
    return data


def test_settings():
    """Settings every test config gets unless the test sets them itself: `ZSPARK_TEST_SET`,
    comma-separated `section.key=value` (values read as YAML), e.g.
    `ZSPARK_TEST_SET=http.workers=2,forward.own_process=true scripts/test` runs the suite so."""
    out = {}
    for item in filter(None, os.environ.get("ZSPARK_TEST_SET", "").split(",")):
        key, _, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def write_config(directory, data, name="zspark.yaml"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def request(port, method, path, body=None, headers=None, timeout=10):
    """One HTTP request; returns (status, headers dict (lower-case names), body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class ServeProcess:
    """`zcmd -y CONFIG serve` as a child process. `module` is what `python -m` runs: zspark.cli,
    or a test wrapper that calls its `main` after setting up a fault."""

    def __init__(self, config_path, http_port, log_path, module="zspark.cli", env=None):
        self.config_path = config_path
        self.http_port = http_port
        self.log_path = log_path
        self.module = module
        self.env = env
        self.proc = None

    def spawn(self):
        """Start the process without waiting for it to serve."""
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "-y", self.config_path, "serve"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        return self

    def start(self, timeout=20):
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zcmd serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if request(self.http_port, "GET", "/imok", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"zcmd serve did not answer /imok within {timeout}s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send `sig` and return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self):
        """SIGKILL the process if it still runs (a test's cleanup, whatever happened)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rss_bytes(self):
        """The resident set size now (VmRSS in /proc/<pid>/status) of the process and of its
        children (forwarder processes, with forward.own_process), summed."""
        total = _rss(self.proc.pid)
        if total is None:
            raise AssertionError(f"no VmRSS in /proc/{self.proc.pid}/status")
        for pid in _children(self.proc.pid):
            total += _rss(pid) or 0  # one that exited meanwhile holds nothing
        return total


def _rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return None


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def zcmd(*args, timeout=60, input=None):
    """Run `zcmd ARGS`; returns CompletedProcess with text stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "zspark.cli", *args], capture_output=True, text=True,
                          timeout=timeout, input=input, cwd=ROOT)


def journal_events(journal_dir, offset=0):
    """Every intact event in the journal at `journal_dir` (read from the files), in offset order."""
    from zspark.journal import Reader, decode_event

    reader = Reader(journal_dir, offset)
    try:
        return [decode_event(payload) for _, payload in reader]
    finally:
        reader.close()


def write_journal(directory, events, segment_bytes=2048, chunk=10):
    """Append `events` (complete: with `timestamp` and `node`) as the server would (ids from node
    and offset), `chunk` per append, so that small segments roll (a segment rolls only between
    appended batches). The journal is closed again; its `.lock` file stays."""
    from zspark.journal import Journal, encode_event

    journal = Journal(directory, segment_bytes=segment_bytes).open()
    try:
        for i in range(0, len(events), chunk):
            journal.append(events[i:i + chunk], encode_event)
    finally:
        journal.close()


def wait_until(predicate, timeout=15.0, interval=0.02, message="condition"):
    """Poll `predicate` (cooperatively) until it returns something truthy; return that value.

    Raises AssertionError naming `message` if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)  # gevent-patched in the test process: other greenlets run meanwhile


# -- the real local services (Kafka-compatible broker, MongoDB-compatible server) -------------

VENV_ROOT = os.path.join(ROOT, ".state", "venvs")  # one install of each service, shared by all tests


def start_broker(state_dir, port=None):
    """Start the local Kafka-compatible broker (Tansu, memory storage) on a free port; stop it
    with `.stop()` (by pid). Its data is lost when it stops."""
    from zspark.localservices import Broker

    broker = Broker(state_dir, port or free_port(), venv_root=VENV_ROOT)
    broker.start()
    return broker


def start_mongo(state_dir, port=None):
    """Start the local MongoDB-compatible server (SecantusDB, data under `state_dir`) on a free
    port; stop it with `.stop()` (by pid). Its data survives a restart on the same `state_dir`."""
    from zspark.localservices import Mongo

    mongo = Mongo(state_dir, port or free_port(), venv_root=VENV_ROOT)
    mongo.start(timeout=120)
    return mongo


def mongo_client(uri, **options):
    import pymongo

    options.setdefault("serverSelectionTimeoutMS", 10000)
    return pymongo.MongoClient(uri, **options)


class KafkaMessage:
    __slots__ = ("topic", "partition", "offset", "key", "value")

    def __init__(self, msg):
        self.topic = msg.topic()
        self.partition = msg.partition()
        self.offset = msg.offset()
        self.key = msg.key()
        self.value = msg.value()

    def json(self):
        return json.loads(self.value)

    def __repr__(self):
        return f"<{self.topic}[{self.partition}]@{self.offset} key={self.key!r} {self.value[:120]!r}>"


def kafka_topics(brokers, timeout=5):
    """The topic names the broker lists now."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": brokers})
    return set(admin.list_topics(timeout=timeout).topics)


def kafka_read(brokers, topics, done=None, timeout=30.0, settle=1.0):
    """Read `topics` from the beginning with a fresh consumer and return every message
    (`KafkaMessage`s) in the order read.

    The broker's end offsets are not trusted, so this reads and counts: it stops once `done(messages)`
    is true and nothing more came for `settle` seconds (so that duplicates behind the expected
    messages are read too), or when `timeout` passes. A topic that does not exist yet is waited
    for until the timeout. Blocking calls run in gevent's thread pool, so greenlets in the test
    process (producers) keep running meanwhile."""
    import uuid

    import gevent
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    pool = gevent.get_hub().threadpool
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"zspark-test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "topic.metadata.refresh.interval.ms": 1000})
    messages = []
    deadline = time.monotonic() + timeout
    try:
        assigned = set()
        last_message = time.monotonic()
        while time.monotonic() < deadline:
            missing = [t for t in topics if t not in assigned]
            if missing:
                metadata = pool.apply(consumer.list_topics, (None, 5))
                new = []
                for topic in missing:
                    t = metadata.topics.get(topic)
                    if t is not None and t.error is None and t.partitions:
                        new += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in t.partitions]
                        assigned.add(topic)
                if new:
                    consumer.incremental_assign(new)
            batch = pool.apply(consumer.consume, (1000, 0.2))
            for msg in batch:
                if msg.error() is None:
                    messages.append(KafkaMessage(msg))
                    last_message = time.monotonic()
            if (not missing and done is not None and done(messages)
                    and time.monotonic() - last_message >= settle):
                break
    finally:
        pool.apply(consumer.close)
    return messages


class HttpFeeder:
    """Producers: greenlets sending events with unique `context.uid`s, recording the id of each
    event answered 200. `make(uid)` builds the event; `forms` are the request forms used in turn:
    "single" (one JSON object), "array" (a JSON array), "ndjson", and "get" (GET /log?type=load&uid=).
    Arrays hold 5 events, or 2-6 drawn from `rng` when one is given."""

    def __init__(self, port, tag, make=None, workers=3, pause=0.0, forms=("single", "array"), rng=None):
        self.port = port
        self.tag = tag
        self.make = make or (lambda uid: {"type": "load", "context": {"uid": uid}})
        self.workers = workers
        self.pause = pause
        self.forms = forms
        self.rng = rng
        self.acked = {}  # uid -> _id (hex) from the 200 answer
        self.sent = set()  # every uid put on the wire
        self.refused = 0  # 503 answers
        self.errors = 0  # connection errors (the server is gone)
        self.bad = []  # answers other than 200 and 503
        self._stop = False
        self._greenlets = []

    def start(self):
        import gevent

        self._greenlets = [gevent.spawn(self._run, w) for w in range(self.workers)]
        return self

    def stop(self):
        import gevent

        self._stop = True
        gevent.joinall(self._greenlets, timeout=15, raise_error=True)

    def _request(self, form, uids):
        events = [self.make(u) for u in uids]
        if form == "single":
            return ("POST", "/log", events[0])
        if form == "array":
            return ("POST", "/log", events)
        if form == "ndjson":
            body = "\n".join(json.dumps(e) for e in events).encode()
            return ("POST", "/log", body, {"Content-Type": "application/x-ndjson"})
        return ("GET", f"/log?type=load&uid={uids[0]}")

    def _run(self, w):
        n = 0
        turn = 0
        while not self._stop:
            form = self.forms[turn % len(self.forms)]
            turn += 1
            count = 1 if form in ("single", "get") else (self.rng.randint(2, 6) if self.rng else 5)
            uids = [f"{self.tag}-{w}-{n + i}" for i in range(count)]
            n += count
            args = self._request(form, uids)
            self.sent.update(uids)
            try:
                status, _, body = request(self.port, *args, timeout=10)
            except (OSError, http.client.HTTPException):  # the server went away mid-answer: no ack
                self.errors += 1
                time.sleep(0.02)
                continue
            if status == 200:
                ids = json.loads(body)["ids"]
                if len(ids) != len(uids):
                    self.bad.append((status, body))
                self.acked.update(zip(uids, ids))
            elif status == 503:
                self.refused += 1
                time.sleep(0.02)
            else:
                self.bad.append((status, body))
            if self.pause:
                time.sleep(self.pause)


class ZmqFeeder:
    """A producer greenlet sending events over ZeroMQ PUSH (`fmt` "bson" or "json") in bursts
    of `burst` with `pause` seconds between them. Event n has `context.uid` "TAG-n" and
    `context.n` n; `make(uid, n)` builds it. `sent` lists the uids ZeroMQ took, in order.

    PUSH has no acknowledgement: a sender cannot know which events were journaled. A server
    journals one socket's frames in order and counts them as accepted once durable, so with one
    feeder per socket the first `accepted` uids (its /status figure) are the ones it holds."""

    def __init__(self, address, tag, fmt="bson", make=None, burst=20, pause=0.01, context=None):
        import zmq.green

        from zspark.client import ZSparkClient

        self.tag = tag
        self.make = make or (lambda uid, n: {"type": "load", "context": {"uid": uid, "n": n}})
        self.burst = burst
        self.pause = pause
        self.client = ZSparkClient(address, context=context or zmq.green.Context.instance(), format=fmt,
                                   linger_ms=0)
        self.sent = []
        self._stop = False
        self._greenlet = None

    def start(self):
        import gevent

        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        """Stop sending (the socket stays open: what it queues still goes out)."""
        if self._greenlet is not None:
            self._stop = True
            self._greenlet.join(2)
            self._greenlet.kill()  # blocked on a full queue (no server to take the frames)
            self._greenlet = None

    def close(self):
        """Stop sending and close the socket, dropping what it still queues."""
        self.stop()
        self.client.close(0)

    def acknowledged(self, accepted):
        """The uids a server that accepted `accepted` events from this feeder's socket holds."""
        return self.sent[:accepted]

    def _run(self):
        while not self._stop:
            for _ in range(self.burst):
                n = len(self.sent)
                uid = f"{self.tag}-{n}"
                self.client.send(self.make(uid, n))
                self.sent.append(uid)
            time.sleep(self.pause)
