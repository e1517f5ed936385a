"""Check a config file and print the settings it gives.

Exits 0 if the config is usable, 2 with a message naming the key and the file if not.
"""
import json

from ..config import describe
from ..safetext import one_line


def add_arguments(parser):
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing when the config is good")


def run(args, config):
    if not args.quiet:
        print(f"{one_line(config.source)}: OK")  # the settings below: JSON, escaped (ensure_ascii)
        print(json.dumps(describe(config), indent=2, sort_keys=True))
    return 0
