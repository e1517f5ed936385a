"""A journal writer to be killed: `python -m tests.journal_writer DIR POLICY TAG [SEGMENT_BYTES]`.

Opens `zspark.journal.Journal(DIR, sync=POLICY)` and appends for ever from several greenlets,
single records and small batches. Each payload encodes a unique id (`payload_for`). Only after
`append` has returned does it print one line per call to stdout:

    A <offset>:<uid> <offset>:<uid> ...

written with a single os.write, so a complete line means every record on it was acknowledged.
The first line is `OPEN <end_offset>` once the journal is open. tests/test_crash.py reads these
lines, SIGKILLs this process and checks the journal afterwards.
"""
from gevent import monkey

monkey.patch_all()

import hashlib  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

WORKERS = 8
BATCH_SIZES = (1, 1, 1, 1, 2, 3, 5, 8)


def payload_for(uid):
    """The payload for `uid`: the uid, then filler derived from it (16..400 bytes in all)."""
    digest = hashlib.sha256(uid.encode()).hexdigest()
    length = 16 + int(digest[:4], 16) % 385
    body = (uid + "|" + digest * 8).encode()
    return body[:max(length, len(uid) + 1)]


def uid_of(payload):
    return payload.split(b"|", 1)[0].decode()


def main(argv):
    from zspark.journal import Journal

    directory, policy, tag = argv[:3]
    kw = {}
    if len(argv) > 3:
        kw["segment_bytes"] = int(argv[3])
    journal = Journal(directory, sync=policy, sync_interval=0.002, **kw).open()
    os.write(1, f"OPEN {journal.end_offset}\n".encode())

    def worker(w):
        rng = random.Random(f"{tag}-{w}")
        n = 0
        while True:
            size = rng.choice(BATCH_SIZES)
            uids = [f"{tag}.w{w}.{n + k}" for k in range(size)]
            n += size
            offsets = journal.append([payload_for(u) for u in uids])
            os.write(1, ("A " + " ".join(f"{o}:{u}" for o, u in zip(offsets, uids)) + "\n").encode())

    greenlets = [gevent.spawn(worker, w) for w in range(WORKERS)]
    gevent.joinall(greenlets, raise_error=True)


if __name__ == "__main__":
    main(sys.argv[1:])
