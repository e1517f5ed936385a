"""Coverage-guided fuzzing (atheris) of every compiled entry point that network bytes reach,
against the pure-Python reference (tests/native_reference.py).

    .venv/bin/python -m tests.fuzz.fuzz_native -max_total_time=60 [corpus_dir ...]

The input's first three bytes choose the limits, the rest is a ZeroMQ BSON frame. Without a
corpus directory it starts from a few events' frames (in a temporary one). A failure prints the
input and leaves it in crash-<hash>; `python -m tests.fuzz.fuzz_native crash-<hash>` replays it.
"""
import datetime
import os
import sys
import tempfile

import atheris
import bson

with atheris.instrument_imports():
    from zspark.event import Limits
    from tests.native_reference import check_plain_frame

SEED_EVENTS = [
    {"type": "page_view", "level": "info", "topic": "web", "context": {"user": "u1", "n": 1, "ok": True}},
    {"type": "t", "extra": [1.5, None, {"a": bson.ObjectId(b"012345678901")}], "env": "prod"},
    {"type": "t", "context": {"deep": {"er": {"still": [b"\x00\x01", bson.Int64(2**40)]}}}},
    {"type": "t", "ip": "10.0.0.1", "timestamp": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},
]


def limits_of(data):
    return Limits(max_string_bytes=1 + data[0] * 4, max_depth=data[1] % 8, max_fields=1 + data[2] * 2)


def one_input(data):
    if len(data) >= 3:
        check_plain_frame(data[3:], limits_of(data))


def main(argv):
    if not any(os.path.isdir(a) or os.path.isfile(a) for a in argv[1:] if not a.startswith("-")):
        corpus = tempfile.mkdtemp(prefix="zspark-fuzz-")
        for i, event in enumerate(SEED_EVENTS):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(b"\xff\x20\xff" + bson.encode(event))
        argv = argv + [corpus]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
