"""Rotate the MongoDB event collection, as Zarkov did: event -> event.0 -> event.1 -> ...

Keeps --keep N rotated collections (default 7: a week, rotated daily from cron). A collection
that would become event.N or beyond is first dumped to
`<dump-dir>/<db>.<collection>.<UTC time>.bson.gz` (its documents as concatenated BSON, gzipped:
read it back with bson.decode_file_iter(gzip.open(path)), or mongorestore after gunzip) and then
dropped, only once the file holds as many documents as the collection. With --keep 0 the event
collection itself is renamed, dumped and dropped. The new, empty event collection gets the same
indexes the MongoDB forwarder creates (timestamp, or its TTL index, and type).

  zcmd -y prod.yaml rotate --dry-run              print the plan, change nothing
  zcmd -y prod.yaml rotate --keep 30 --dump-dir /backup/zspark

No event is lost while the forwarder keeps inserting: each step is one renameCollection, which
MongoDB performs atomically under an exclusive lock, so an insert lands either in the collection
before it is renamed or, after it, in a new `event` the server creates on the insert. (The local
SecantusDB supports renameCollection, with the same result: checked under concurrent
insert_many.) Collections are renamed oldest first, so no target name is in use; only then is
`event` renamed, and its indexes created, which may meet events the forwarder inserted meanwhile.
The database given by mongo.uri / mongo.database, collection mongo.collection.

Exit status: 0 rotated (or nothing to rotate); 1 MongoDB unreachable or a step failed (the
message names it; a failed step leaves every document in some collection); 2 bad arguments.
"""
import argparse
import datetime
import gzip
import os
import re
import sys

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from .. import blocking
from ..errors import CommandError
from ..redact import redact

DEFAULT_KEEP = 7
EXIT_OK, EXIT_FAILED = 0, 1
WRITE_CHUNK = 1024 * 1024


class RotateFailed(CommandError):
    pass


def add_arguments(parser):
    parser.add_argument("--keep", type=_keep, default=DEFAULT_KEEP, metavar="N",
                        help=f"rotated collections to keep, event.0 .. event.N-1 (default {DEFAULT_KEEP})")
    parser.add_argument("--dump-dir", metavar="DIR",
                        help="where dropped collections are dumped (default: 'dumps' next to journal.dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")


def run(args, config):
    from pymongo.errors import ConnectionFailure, PyMongoError

    from ..sinks.mongo import connect

    mc = config.mongo
    dump_dir = args.dump_dir or os.path.join(os.path.dirname(config.journal.dir), "dumps")
    client = connect(mc)
    try:
        db = client[mc.database]
        try:
            client.admin.command("ping")
            plan = make_plan(db.list_collection_names(), mc.collection, args.keep)
        except ConnectionFailure as e:  # ServerSelectionTimeoutError included
            print(f"zcmd rotate: cannot reach MongoDB at {redact(mc.uri)} (config key mongo.uri) "
                  f"within {mc.timeout_ms / 1000:g}s: {e}", file=sys.stderr)
            return EXIT_FAILED
        except PyMongoError as e:  # authentication, permissions
            print(f"zcmd rotate: MongoDB at {redact(mc.uri)} refused to list the collections of "
                  f"{mc.database!r}: {e}", file=sys.stderr)
            return EXIT_FAILED
        if plan is None:
            print(f"nothing to rotate: {mc.database}.{mc.collection} does not exist")
            return EXIT_OK
        if args.dry_run:
            for step in plan:
                print("would " + describe(step, db, dump_dir))
            return EXIT_OK
        try:
            done = [execute(step, db, dump_dir, mc.ttl_days) for step in plan]
        except (RotateFailed, PyMongoError, OSError) as e:
            print(f"zcmd rotate: {e}", file=sys.stderr)
            try:
                names = sorted(n for n in db.list_collection_names() if _ours(n, mc.collection))
                print(f"zcmd rotate: collections now: {', '.join(names)}; run it again once the "
                      "cause is fixed", file=sys.stderr)
            except PyMongoError:
                pass
            return EXIT_FAILED
        dumped = [d for d in done if d is not None]
        renames = sum(1 for step in plan if step[0] == "rename")
        print(f"rotated {mc.database}.{mc.collection}: {renames} renamed, {len(dumped)} dumped and "
              f"dropped ({sum(dumped)} documents), keeping {args.keep}")
        return EXIT_OK
    finally:
        client.close()


def make_plan(names, base, keep):
    """The steps, in order: ('dump', coll), ('rename', old, new), ('index', coll); None when the
    collection does not exist."""
    if base not in names:
        return None
    rotated = sorted((int(n[len(base) + 1:]) for n in names if n != base and _ours(n, base)), reverse=True)
    plan = [("dump", f"{base}.{k}") for k in rotated if k >= keep - 1]  # would become .keep or beyond
    plan += [("rename", f"{base}.{k}", f"{base}.{k + 1}") for k in rotated if k < keep - 1]
    plan.append(("rename", base, f"{base}.0"))
    if keep == 0:
        plan.append(("dump", f"{base}.0", base))  # the last item: its name when the plan is made
    plan.append(("index", base))
    return plan


def describe(step, db, dump_dir):
    if step[0] == "rename":
        return f"rename {db.name}.{step[1]} -> {db.name}.{step[2]}"
    if step[0] == "dump":
        return (f"dump {db.name}.{step[1]} ({db[step[-1]].estimated_document_count()} documents now) "
                f"to {dump_dir} and drop it")
    return f"create the forwarder's indexes on the new {db.name}.{step[1]}"


def execute(step, db, dump_dir, ttl_days):
    """Carry out one step, printing what it did; a dump returns its document count."""
    from pymongo.errors import OperationFailure

    from ..sinks.mongo import create_indexes

    kind, name = step[0], step[1]
    if kind == "rename":
        try:
            db[name].rename(step[2])
        except OperationFailure as e:
            reason = (e.details or {}).get("errmsg") or str(e)
            raise RotateFailed(f"renaming {db.name}.{name} to {step[2]} failed: {reason}") from None
        print(f"renamed {db.name}.{name} -> {db.name}.{step[2]}", flush=True)
        return None
    if kind == "dump":
        print(f"dumping {db.name}.{name} ...", flush=True)
        count, path = dump(db[name], dump_dir)
        db.drop_collection(name)
        print(f"dumped {count} documents of {db.name}.{name} to {path}; dropped it", flush=True)
        return count
    create_indexes(db[name], ttl_days)
    print(f"indexed the new {db.name}.{name}: {', '.join(sorted(db[name].index_information()))}", flush=True)
    return None


def dump(collection, dump_dir):
    """Write every document of `collection` to a new .bson.gz file; return (count, path).

    Raises RotateFailed unless the file holds exactly as many documents as the collection."""
    # Disk writes and gzip off the event loop.
    blocking.call(os.makedirs, dump_dir, mode=0o700, exist_ok=True)  # dumps hold events
    path = _new_path(dump_dir, collection)
    part = path + ".part"
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    out = blocking.call(_DumpFile, part)
    count = 0
    try:
        chunk = []
        size = 0
        for doc in raw.find():
            chunk.append(doc.raw)
            size += len(doc.raw)
            count += 1
            if size >= WRITE_CHUNK:
                blocking.call(out.write, b"".join(chunk))
                chunk, size = [], 0
        blocking.call(out.write, b"".join(chunk))
        blocking.call(out.close_synced)
    except BaseException:
        out.abort()
        raise
    expected = collection.count_documents({})
    if count != expected:
        os.unlink(part)
        raise RotateFailed(f"dumping {collection.full_name} read {count} documents but it holds "
                           f"{expected}; not dropped")
    blocking.call(os.rename, part, path)
    blocking.call(blocking.fsync_dir, dump_dir)
    return count, path


def _new_path(dump_dir, collection):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(dump_dir, f"{collection.full_name}.{stamp}.bson.gz")
    n = 1
    while os.path.exists(path) or os.path.exists(path + ".part"):
        n += 1
        path = os.path.join(dump_dir, f"{collection.full_name}.{stamp}-{n}.bson.gz")
    return path


class _DumpFile:
    """A new gzip file readable by its owner only (it holds events); call from the thread pool."""

    def __init__(self, path):
        self.path = path
        self.file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "wb")
        self.gzip = gzip.GzipFile(fileobj=self.file, mode="wb")

    def write(self, data):
        self.gzip.write(data)

    def close_synced(self):
        self.gzip.close()  # writes the gzip trailer; leaves self.file open
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abort(self):
        self.file.close()
        os.unlink(self.path)


def _ours(name, base):
    return name == base or re.fullmatch(re.escape(base) + r"\.\d+", name) is not None


def _keep(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, not {text!r}")
    return value
