"""Check a config file and print the settings it gives.

Exits 0 if the config is usable, 2 with a message naming the key and the file if not.
"""
import json

from ..config import describe


def add_arguments(parser):
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing when the config is good")


def run(args, config):
    if not args.quiet:
        print(f"{config.source}: OK")
        print(json.dumps(describe(config), indent=2, sort_keys=True))
    return 0
