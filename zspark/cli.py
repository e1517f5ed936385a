"""`zcmd`: the one command that runs and inspects zspark.

    zcmd [-y CONFIG] serve | validate | tail | replay | shell | status | check | rotate ...

The config file comes from -y/--config, else $ZSPARK_CONFIG, else the built-in defaults. A bad
config exits with status 2 and a message naming the key and the file. The global options may
also come after the command (`zcmd tail -y development.yaml`). Ctrl-C (SIGINT) ends a command
quietly with exit status 130, as a shell reports a command the interrupt killed (`zcmd serve`
handles SIGINT itself: a clean stop, exit 0).
"""
from gevent import monkey

monkey.patch_all()  # before anything imports socket, threading or pymongo

import argparse  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from . import __version__, config as config_module, logsetup  # noqa: E402
from .commands import COMMANDS  # noqa: E402

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser. A command module may define `usage_error(message) -> exit code` to
    report bad arguments and a bad config its own way (`zcmd check` must answer UNKNOWN, 3, on
    stdout, where argparse would exit 2, which a monitoring system reads as CRITICAL)."""

    usage_error = None

    def error(self, message):
        if self.usage_error is None:
            super().error(message)
        self.print_usage(sys.stderr)
        self.exit(self.usage_error(f"{self.prog}: {message}"))


def add_global_options(parser, default):
    """The options every command takes before or after its name. `default` is the value for an
    option not given: the real defaults on the top-level parser; argparse.SUPPRESS on a
    command's, so that an option given only before the command is not reset after it."""
    config_default = os.environ.get("ZSPARK_CONFIG") if default is None else default
    parser.add_argument("-y", "--config", metavar="FILE", default=config_default,
                        help="YAML config file (default: $ZSPARK_CONFIG, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"zspark {__version__}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="zcmd",
        description="Run and inspect zspark, the event ingestion appliance.",
        epilog="Run 'zcmd COMMAND --help' for a command's options.")
    add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name in COMMANDS:
        module = importlib.import_module(f"zspark.commands.{name}")
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(name, help=summary, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.usage_error = getattr(module, "usage_error", None)
        add_global_options(p.add_argument_group("global options"), argparse.SUPPRESS)
        module.add_arguments(p)
        p.set_defaults(run=module.run, usage_error=p.usage_error)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as e:
        if args.usage_error is not None:
            return args.usage_error(f"bad config: {e}")
        print(f"zcmd: bad config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:  # one line per record, whatever a sender put in it
        logsetup.setup(config.log.level, format=config.log.format, path=config.log.file)
    except OSError as e:
        print(f"zcmd: cannot open the log file {config.log.file} (config key log.file): {e.strerror}",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        return args.run(args, config)
    except KeyboardInterrupt:  # Ctrl-C: the user's choice, not an error to report
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
