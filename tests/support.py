"""Shared test helpers: temporary dirs, free ports, configs, an in-process server, and a
`zcmd serve` subprocess that tests can feed, stop with a signal and restart."""
import http.client
import json
import os
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


class TempDir:
    """A temporary directory removed at cleanup: `self.addCleanup(d.remove)`."""

    def __init__(self, prefix="zspark-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def join(self, *parts):
        return os.path.join(self.path, *parts)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def config_data(directory, **sections):
    """A config for a test: journal in `directory`, every listener on a free port."""
    data = {
        "node": {"id": "test"},
        "journal": {"dir": os.path.join(directory, "journal"), "sync": "batch"},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "zmq": {"bson_bind": f"tcp://127.0.0.1:{free_port()}",
                "json_bind": f"tcp://127.0.0.1:{free_port()}"},
        "log": {"level": "info"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


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
    """`zcmd -y CONFIG serve` as a child process."""

    def __init__(self, config_path, http_port, log_path):
        self.config_path = config_path
        self.http_port = http_port
        self.log_path = log_path
        self.proc = None

    def start(self, timeout=20):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "zspark.cli", "-y", self.config_path, "serve"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
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

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


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
