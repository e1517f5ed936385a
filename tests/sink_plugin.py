"""A sink that lives only in the tests, registered the way a new sink is: its config class, its
`build`, and one `register` line. `python -m tests.sink_plugin -y CONFIG serve|replay ...` is
`zcmd` with it registered (tests/test_sink_registry.py).

It appends each event as a JSON line to `jsonfile.path`; its healthcheck fails while the file's
directory does not exist."""
import json
import os
import sys
from dataclasses import dataclass

from gevent import monkey

monkey.patch_all()

from zspark import cli, sinks  # noqa: E402
from zspark.journal import event_to_json  # noqa: E402


@dataclass
class JsonFileConfig:
    enabled: bool = False
    path: str = ""


class JsonFileSink:
    name = "jsonfile"

    def __init__(self, config):
        self.path = config.path
        self.closed = False

    def describe(self):
        return f"JSON lines in {self.path}"

    def send(self, items):
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
    register()
    sys.exit(cli.main())
