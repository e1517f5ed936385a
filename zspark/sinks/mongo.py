"""The MongoDB sink: `insert_many(ordered=False)` of events with their journal-assigned `_id`.

A duplicate-key error on an `_id` means the event is already there (a replay, or a batch resent
after a crash), so it counts as delivered: MongoDB ends with exactly one copy of each event.
Datetimes are stored as BSON dates. Indexes on `timestamp` and `type` (and the TTL, if
`ttl_days` is set) are created before the first insert. The node's own notices (source
"notice": node_online, heartbeat, hour_complete...) go to `notice_collection` instead.

A network error, a timeout, a server that is down or any other error of the driver is transient
(TransientDeliveryError: the forwarder retries); a document the server refuses for good goes to
the dead-letter file.

pymongo is cooperative under gevent only once `gevent.monkey.patch_all()` ran, which `zcmd`
does before anything else; this module refuses to load otherwise.
"""
import dataclasses
import logging
import time

import bson
import gevent
import gevent.monkey
import pymongo
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

from ..errors import TransientDeliveryError
from ..event import NOTICE_SOURCE
from ..redact import redact
from . import Unreachable, first_line

log = logging.getLogger("zspark.sinks.mongo")

DUPLICATE_KEY = 11000
# Write errors that no retry can mend: the document itself is unacceptable to the server.
PERMANENT_CODES = {
    2,  # BadValue
    10334,  # BSONObjectTooLarge
    17419,  # document too large after update
    52,  # DollarPrefixedFieldName
    55,  # InvalidDBRef
    57,  # DottedFieldName (old servers)
    121,  # DocumentValidationFailure
}

if not gevent.monkey.is_module_patched("socket"):
    raise ImportError("zspark.sinks.mongo needs gevent.monkey.patch_all() first (zcmd does it), "
                      "or pymongo would block the event loop")


def build(section, context):
    """The MongoDB sink for the registry (zspark/sinks/__init__.py)."""
    if context.timeout_ms is not None:
        section = dataclasses.replace(section, timeout_ms=min(section.timeout_ms or context.timeout_ms,
                                                              context.timeout_ms))
    return MongoSink(section)


class MongoSink:
    name = "mongo"

    def __init__(self, config):
        self.config = config
        self.client = connect(config)
        database = self.client[config.database]
        self.collection = database[config.collection]
        self.notice_collection = database[config.notice_collection]
        self._indexed = False

    def describe(self):
        return f"MongoDB {self.config.database}.{self.config.collection} at {redact(self.config.uri)}"

    def send(self, items):
        try:
            return self._send(items)
        except pymongo.errors.PyMongoError as e:
            raise TransientDeliveryError(f"{type(e).__name__}: {e}") from e  # as the driver said it

    def _send(self, items):
        if not self._indexed:
            self._create_indexes()
        if not any(event.get("source") == NOTICE_SOURCE for _, event in items):
            return self._insert(self.collection, items)
        notices = [item for item in items if item[1].get("source") == NOTICE_SOURCE]
        events = [item for item in items if item[1].get("source") != NOTICE_SOURCE]
        rejected = self._insert(self.notice_collection, notices)
        if events:
            rejected += self._insert(self.collection, events)
        return rejected

    def _insert(self, collection, items):
        try:
            collection.insert_many([event for _, event in items], ordered=False)
            return []
        except BulkWriteError as e:
            return self._sort_write_errors(items, e.details)
        except DocumentTooLarge:
            return self._send_one_by_one(collection, items)

    def _sort_write_errors(self, items, details):
        if details.get("writeConcernErrors"):
            raise TransientDeliveryError(f"MongoDB: write concern not satisfied: "
                                         f"{details['writeConcernErrors'][0]}")
        rejected = []
        transient = []
        for error in details.get("writeErrors", []):
            code = error.get("code")
            if code == DUPLICATE_KEY:
                continue  # already delivered
            offset, event = items[error["index"]]
            if code in PERMANENT_CODES:
                rejected.append((offset, event, f"MongoDB refused it: {error.get('errmsg')} (code {code})"))
            else:
                transient.append(error)
        if transient:
            # Inserts that did go in are duplicates on the retry, so retrying the batch is safe.
            raise TransientDeliveryError(f"MongoDB: {len(transient)} insert(s) failed: "
                                         f"{transient[0].get('errmsg')} (code {transient[0].get('code')})")
        return rejected

    def _send_one_by_one(self, collection, items):
        rejected = []
        for offset, event in items:
            try:
                collection.insert_one(event)
            except DocumentTooLarge as e:
                rejected.append((offset, event, f"too large for MongoDB: {e}"))
            except pymongo.errors.DuplicateKeyError:
                pass
        return rejected

    def _create_indexes(self):
        create_indexes(self.collection, self.config.ttl_days)
        _index(self.notice_collection, "timestamp")
        self._indexed = True

    def healthcheck(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.admin.command("ping")
                return
            except Exception as e:
                last = e
            if time.monotonic() >= deadline:
                break
            gevent.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        raise Unreachable(f"cannot reach MongoDB at {redact(self.config.uri)} (config mongo.uri) "
                          f"within {timeout:g}s: {first_line(last)}")

    def close(self, abandon=False):
        self.client.close()


def connect(config, **options):
    """A MongoClient for the `mongo` config section. It connects lazily, at the first operation,
    so nothing hangs here when the server is down; `options` override the timeouts."""
    timeout = config.timeout_ms
    options = {"serverSelectionTimeoutMS": timeout, "connectTimeoutMS": timeout,
               "socketTimeoutMS": timeout, **options}
    return pymongo.MongoClient(config.uri, tz_aware=True, connect=False, **options)


def create_indexes(collection, ttl_days):
    """The indexes the event collection has: `timestamp` (a TTL index when `ttl_days` is set) and
    `type`. Also used by `zcmd rotate` for the collection it starts afresh.

    The collection is first made to exist by an update that matches nothing: the local SecantusDB
    deadlocks for good when createIndexes creates a collection while an insert is creating it
    too (the insert holds the collection's lock in an open transaction and waits for the
    server-wide lock, which createIndexes holds while it retries the write the insert has not
    committed), as right after `zcmd rotate` renamed it under the forwarder, or when `zcmd replay`
    starts beside `zcmd serve`. The update takes the collection's lock first, as an insert does,
    so it queues behind one; afterwards createIndexes only adds indexes. On MongoDB the update is
    a no-op: without upsert it creates nothing."""
    collection.update_one({"_id": bson.ObjectId()}, {"$unset": {"_": ""}})
    if ttl_days:
        _index(collection, "timestamp", expireAfterSeconds=int(ttl_days * 86400))
    else:
        _index(collection, "timestamp")
    _index(collection, "type")


def _index(collection, key, **options):
    try:
        collection.create_index([(key, pymongo.ASCENDING)], **options)
    except OperationFailure as e:
        if e.code in (85, 86):  # IndexOptionsConflict / IndexKeySpecsConflict: one exists
            log.warning("MongoDB: an index on %s with other options already exists in %s; "
                        "leaving it as it is (%s)", key, collection.full_name, e)
        else:
            raise
