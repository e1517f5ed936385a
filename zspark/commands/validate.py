"""Check a config file and print the settings it gives.

Exits 0 if the config is usable, 2 with a message naming the key and the file if not. Files
holding secrets that others can read, and Zarkov keys that mean nothing here, are warned about on
stderr (as `zcmd serve` logs them), even with --quiet; they do not change the exit status.
"""
import json
import sys

from ..config import config_warnings, describe
from ..safetext import one_line


def add_arguments(parser):
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing when the config is good")


def run(args, config):
    for warning in config_warnings(config):
        print(f"zcmd validate: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(f"{one_line(config.source)}: OK")  # the settings below: JSON, escaped (ensure_ascii)
        print(json.dumps(describe(config), indent=2, sort_keys=True))
    return 0
