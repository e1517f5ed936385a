"""A sink that lives only in the tests, registered the way a new sink is: its config class, its
`build`, and one `register` line. `python -m tests.sink_plugin -y CONFIG serve|replay ...` is
`zcmd` with it registered (tests/test_sink_registry.py).

It appends each event as a JSON line to `jsonfile.path`; its healthcheck fails while the file's
directory does not exist. Faults on demand (tests/test_sink_registry.py): `jsonfile.bug` makes
every send raise a TypeError, as a bug in a sink would; `jsonfile.transient_failures: N` makes the
first N sends fail with a TransientDeliveryError, as a destination that is down for a while."""
import json
import os
import sys
from dataclasses import dataclass

from gevent import monkey

monkey.patch_all()

from zspark import cli, sinks  # noqa: E402
from zspark.errors import TransientDeliveryError  # noqa: E402
from zspark.journal import event_to_json  # noqa: E402


@dataclass
class JsonFileConfig:
    enabled: bool = False
    path: str = ""
    bug: bool = False
    transient_failures: int = 0


class JsonFileSink:
    name = "jsonfile"

    def __init__(self, config):
        self.path = config.path
        self.bug = config.bug
        self.transient_failures = config.transient_failures
        self.closed = False

    def describe(self):
        return f"JSON lines in {self.path}"

    def send(self, items):
        if self.bug:
            return len(items) + "records"  # TypeError
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientDeliveryError(f"JSON lines: the disk is away ({self.transient_failures} "
                                         "more failure(s) to come)")
        with open(self.path, "a") as f:
            for _, event in items:
                f.write(json.dumps(json.loads(event_to_json(event))) + "\n")
        return []

    def healthcheck(self, timeout):
        if not os.path.isdir(os.path.dirname(self.path) or "."):
            raise sinks.Unreachable(f"cannot reach {os.path.dirname(self.path)} (config jsonfile.path)")

    def close(self, abandon=False):
        self.closed = True


def build(section, context):
    return JsonFileSink(section)


def register():
    sinks.register(sinks.SinkType("jsonfile", JsonFileConfig, build))


if __name__ == "__main__":
    # Registered from the module by its name, not as __main__, so that the child processes of
    # serve (forward.own_process, http.workers) can import what the Config holds of it.
    from tests import sink_plugin
    sink_plugin.register()
    sys.exit(cli.main())
