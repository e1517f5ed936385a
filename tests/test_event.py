"""event.normalize: the fields every source produces, and a clear reason for each bad input."""
import datetime
import unittest

from bson import ObjectId

from zspark.event import InvalidEvent, Limits, from_query, normalize, sender_fields

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def norm(raw, **kw):
    return normalize(raw, "http", "node-1", now=NOW, **kw)


class Accepts(unittest.TestCase):
    def test_a_minimal_event_gets_receive_time_source_and_node(self):
        self.assertEqual(norm({"type": "click"}),
                         {"type": "click", "timestamp": NOW, "source": "http", "node": "node-1"})

    def test_all_protocol_fields_are_kept(self):
        raw = {"type": "t", "level": "info", "topic": "web", "env": "prod", "version": "1.2",
               "ip": "10.0.0.1", "referrer": "http://a/", "user_agent": "ua", "cookies": {"sid": "x"},
               "context": {"user": "rick", "n": 3, "tags": ["a", {"b": None}]}, "extra": [1, 2.5, True]}
        event = norm(raw)
        for key, value in raw.items():
            self.assertEqual(event[key], value)

    def test_stimestamp_accepts_iso_seconds_and_milliseconds(self):
        expected = datetime.datetime(2026, 1, 1, tzinfo=UTC)
        for value in ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", 1767225600,
                      1767225600000, "1767225600", datetime.datetime(2026, 1, 1)):
            with self.subTest(value=value):
                self.assertEqual(norm({"type": "t", "stimestamp": value})["stimestamp"], expected)

    def test_a_senders_timestamp_becomes_stimestamp(self):
        event = norm({"type": "t", "timestamp": "2026-01-01T00:00:00Z"})
        self.assertEqual(event["timestamp"], NOW)
        self.assertEqual(event["stimestamp"], datetime.datetime(2026, 1, 1, tzinfo=UTC))

    def test_assigned_fields_from_the_sender_are_ignored(self):
        event = norm({"type": "t", "_id": "forged", "source": "forged", "node": "forged"})
        self.assertNotIn("_id", event)
        self.assertEqual((event["source"], event["node"]), ("http", "node-1"))

    def test_trusted_events_keep_unknown_fields(self):
        event = norm({"type": "t", "custom": {"a": 1}, "oid": ObjectId()}, trusted=True)
        self.assertEqual(event["custom"], {"a": 1})

    def test_unknown_fields_go_into_context(self):
        event = norm({"type": "t", "user": "rick", "context": {"page": "/"}, "tags": ["a"]})
        self.assertEqual(event["context"], {"page": "/", "user": "rick", "tags": ["a"]})
        self.assertEqual(set(event), {"type", "context", "timestamp", "source", "node"})
        self.assertEqual(norm({"type": "t", "user": "rick"})["context"], {"user": "rick"})

    def test_null_optional_fields_are_dropped(self):
        self.assertNotIn("level", norm({"type": "t", "level": None}))

    def test_sender_fields_are_the_event_without_what_the_appliance_assigns(self):
        for raw in ({"type": "t", "level": "info", "context": {"a": 1, "b": [True, None]}},
                    {"type": "t", "timestamp": "2026-01-01T00:00:00Z", "level": None, "_id": "x"}):
            with self.subTest(raw=raw):
                event = norm(raw)
                self.assertEqual(list(sender_fields(raw).items()),
                                 [(k, v) for k, v in event.items() if k not in ("timestamp", "source", "node")])

    def test_long_strings_within_the_limits_are_kept(self):
        # Longer than the short fields' limit: not the common case, still valid.
        raw = {"type": "t", "referrer": "http://a/" + "r" * 400, "user_agent": "u" * 300,
               "extra": "free text", "context": {"note": "é" * 300}}
        self.assertEqual({k: v for k, v in norm(raw).items() if k in raw}, raw)


class Rejects(unittest.TestCase):
    def assertRejected(self, raw, *fragments, **kw):
        with self.assertRaises(InvalidEvent) as ctx:
            norm(raw, **kw)
        for fragment in fragments:
            self.assertIn(fragment, str(ctx.exception))

    def test_not_an_object(self):
        self.assertRejected([1, 2], "an event must be")
        self.assertRejected("text", "an event must be")

    def test_type_is_required_and_a_string(self):
        self.assertRejected({}, "type", "required")
        self.assertRejected({"type": ""}, "type", "empty")
        self.assertRejected({"type": 5}, "type", "must be a string")
        self.assertRejected({"type": "x" * 300}, "type", "longer than")

    def test_unknown_fields_are_named(self):
        self.assertRejected({"type": "t", "colour": "red"}, "unknown field 'colour'",
                            limits=Limits(unknown_fields="refuse"))

    def test_unknown_fields_going_into_context_are_checked_there(self):
        self.assertRejected({"type": "t", "user": "a", "context": {"user": "b"}},
                            "unknown field 'user' is also in context")
        self.assertRejected({"type": "t", "n": 2**70}, "context.n", "64-bit")
        self.assertRejected({"type": "t", "$set": 1}, "must not start with '$'")
        # Moved into context, a value is one level deeper, and counts among context's values.
        self.assertEqual(norm({"type": "t", "extra": {"e": {}}}, limits=Limits(max_depth=2))["extra"], {"e": {}})
        self.assertRejected({"type": "t", "d": {"e": {}}}, "context.d.e: nested deeper than 2",
                            limits=Limits(max_depth=2))
        self.assertRejected({"type": "t", "a": 1, "context": {"b": 2}}, "more than 2 values",
                            limits=Limits(max_fields=2))

    def test_wrong_types(self):
        self.assertRejected({"type": "t", "context": [1]}, "context", "must be an object")
        self.assertRejected({"type": "t", "context": "text"}, "context", "must be an object")
        self.assertRejected({"type": "t", "level": "info", "context": {"a": 1}, "topic": None,
                             "env": 5}, "env", "must be a string")
        self.assertRejected({"type": "t", "cookies": "a=b"}, "cookies")
        self.assertRejected({"type": "t", "cookies": {"a": 1}}, "cookies.a")
        self.assertRejected({"type": "t", "level": 3}, "level")
        self.assertRejected({"type": "t", "stimestamp": "yesterday"}, "stimestamp", "ISO 8601")
        self.assertRejected({"type": "t", "stimestamp": [1]}, "stimestamp")
        self.assertRejected({"type": "t", "ip": "999.1.1.1"}, "ip", "not an IP address")

    def test_values_bson_and_mongodb_cannot_hold(self):
        self.assertRejected({"type": "t", "context": {"n": 2**70}}, "context.n", "64-bit")
        self.assertRejected({"type": "t", "context": {"n": float("nan")}}, "context.n", "finite")
        self.assertRejected({"type": "t", "context": {"$where": 1}}, "must not start with '$'")
        self.assertRejected({"type": "t", "context": {"a\x00b": 1}}, "NUL")
        self.assertRejected({"type": "t", "context": {"s": "\ud800"}}, "UTF-8")
        self.assertRejected({"type": "t", "context": {"s": {1, 2}}}, "unsupported value type")

    def test_what_was_valid_once_is_checked_the_same_again(self):
        for _ in range(2):  # normalize remembers valid texts: the second time must decide alike
            self.assertEqual(norm({"type": "t", "level": "$lvl", "context": {"k": 1}})["level"], "$lvl")
            self.assertRejected({"type": "t", "context": {"$lvl": 1}}, "must not start with '$'")
            self.assertRejected({"type": "t", "context": {"k": 1, "$k": 1}}, "must not start with '$'")
            self.assertRejected({"type": "t", "level": "k", "topic": "x" * 257}, "topic", "longer than")
            self.assertRejected({"type": "t", "context": "k"}, "context", "must be an object")

    def test_limits_on_depth_size_and_count(self):
        deep = {}
        node = deep
        for _ in range(40):
            node["d"] = {}
            node = node["d"]
        self.assertRejected({"type": "t", "context": deep}, "nested deeper than 32")
        self.assertRejected({"type": "t", "context": {"s": "x" * 100}}, "context.s", "longer than 50",
                            limits=Limits(max_string_bytes=50))
        self.assertRejected({"type": "t", "context": {str(i): i for i in range(20)}}, "more than 10",
                            limits=Limits(max_fields=10))


class FromQuery(unittest.TestCase):
    def test_fields_and_context(self):
        self.assertEqual(from_query([("type", "t"), ("ver", "1"), ("user", "rick"), ("type2", "")]),
                         {"type": "t", "version": "1", "context": {"user": "rick", "type2": ""}})

    def test_a_repeated_parameter_is_a_list_of_its_values(self):
        self.assertEqual(from_query([("type", "t"), ("tag", "a"), ("x", "1"), ("tag", "b"), ("tag", "a")]),
                         {"type": "t", "context": {"tag": ["a", "b", "a"], "x": "1"}})

    def test_a_repeated_field_is_refused_naming_it(self):
        for pairs, field in (([("type", "a"), ("type", "b")], "type"),
                             ([("type", "a"), ("ver", "1"), ("version", "2")], "version"),
                             ([("type", "a"), ("stimestamp", "1"), ("stimestamp", "1")], "stimestamp")):
            with self.subTest(pairs=pairs):
                with self.assertRaises(InvalidEvent) as ctx:
                    from_query(pairs)
                self.assertIn(f"{field}: given more than once", str(ctx.exception))

    def test_unknown_parameters_refused_when_so_configured(self):
        with self.assertRaises(InvalidEvent) as ctx:
            from_query([("type", "a"), ("user", "rick")], Limits(unknown_fields="refuse"))
        self.assertIn("unknown field 'user'", str(ctx.exception))
        self.assertEqual(from_query([("type", "a")], Limits(unknown_fields="refuse")), {"type": "a"})


if __name__ == "__main__":
    unittest.main()
