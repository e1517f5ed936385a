"""A thin Ming-style view of a pymongo Database, for `zcmd shell`'s `ZM`.

Zarkov's shell had `ZM`, its Ming model, where `ZM.event.m.find().all()` lists the events. Here
`ZM.<collection>` is the pymongo Collection itself (`ZM.event.find()`, `ZM.event.count_documents({})`
work as in pymongo) plus Ming's manager `m`: `m.find(spec)` gives a cursor with `.all()`,
`.first()`, `.one()`, `.count()`, `.limit()`, `.skip()`, `.sort()`, and `m.get(**fields)` the first
matching document or None. Documents read through `m` allow attribute access (`e.type`), as
Ming's did. Nothing here connects: the first query does.
"""
from pymongo.collection import Collection


class Document(dict):
    """A document with its fields also readable as attributes, as Ming's `Object`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Database:
    """`ZM`: collections by attribute or item, each a `ViewCollection`."""

    def __init__(self, database):
        self._database = database

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return ViewCollection(self._database[name])

    def __getitem__(self, name):
        return ViewCollection(self._database[name])

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(dir(self._database)))

    def __repr__(self):
        return f"<ZM: MongoDB database {self._database.name!r} (Ming-style: ZM.event.m.find().all())>"


class ViewCollection:
    """A pymongo Collection (every attribute passes through) with Ming's `m` manager."""

    def __init__(self, collection):
        self._collection = collection
        self.m = Manager(collection)

    def __getattr__(self, name):
        value = getattr(self._collection, name)
        return ViewCollection(value) if isinstance(value, Collection) else value  # ZM.event.stats

    def __getitem__(self, name):
        return ViewCollection(self._collection[name])

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(dir(self._collection)))

    def __repr__(self):
        return f"<ZM collection {self._collection.name!r}>"


class Manager:
    """Ming's `collection.m`."""

    def __init__(self, collection):
        self._collection = collection.with_options(
            codec_options=collection.codec_options.with_options(document_class=Document))

    def find(self, spec=None, *args, **kwargs):
        return Cursor(self._collection, spec or {}, self._collection.find(spec or {}, *args, **kwargs))

    def get(self, **fields):
        return self._collection.find_one(fields)

    def find_one(self, spec=None, *args, **kwargs):
        return self._collection.find_one(spec or {}, *args, **kwargs)


class Cursor:
    """Ming's cursor over a pymongo one: iterate it, or `.all()`, `.first()`, `.one()`, `.count()`."""

    def __init__(self, collection, spec, cursor):
        self._collection = collection
        self._spec = spec
        self._cursor = cursor

    def __iter__(self):
        return iter(self._cursor)

    def all(self):
        return list(self._cursor)

    def first(self):
        return next(iter(self._cursor.limit(1)), None)

    def one(self):
        found = list(self._cursor.limit(2))
        if len(found) != 1:
            raise ValueError(f"one() found {'no' if not found else 'more than one'} document")
        return found[0]

    def count(self):
        """The documents the query matches (as Ming's: limit and skip left aside)."""
        return self._collection.count_documents(self._spec)

    def limit(self, n):
        self._cursor.limit(n)
        return self

    def skip(self, n):
        self._cursor.skip(n)
        return self

    def sort(self, *args, **kwargs):
        self._cursor.sort(*args, **kwargs)
        return self
