"""The HTTP source end to end: a real `Server` in this process, real sockets, the journal read back.

Every test asserts what a sender sees (status, JSON body, headers) and what lands in the journal
(fields, types, ids), never how long anything took.
"""
import datetime
import email.utils
import gzip
import http.client
import json
import os
import random
import socket
import time
import unittest
import urllib.parse
from unittest import mock

import gevent
from bson import ObjectId

from tests.support import TempDir, config_data, journal_events, request, wait_until
from zspark import native
from zspark.config import from_dict
from zspark.journal import codec
from zspark.journal import Reader
from zspark.server import Server
from zspark.sources import httpserver

UTC = datetime.timezone.utc
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
EVENT_KEYS = {"_id", "timestamp", "type", "source", "node"}


def _ms(moment):
    """`moment` truncated to BSON's millisecond precision."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class HttpCase(unittest.TestCase):
    """Starts a server (HTTP only, port chosen by the kernel) for each test."""

    http_settings = {}
    journal_settings = {}
    event_settings = {}

    def setUp(self):
        self.server = self.start_server()

    def start_server(self, http=None, journal=None):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        data = config_data(tmp.path, http={"port": 0, **self.http_settings, **(http or {})},
                           zmq={"bson_bind": "", "json_bind": ""},
                           journal={**self.journal_settings, **(journal or {})}, event=self.event_settings)
        server = Server(from_dict(data))
        server.start()
        self.addCleanup(server.shutdown)
        self.journal_dir = server.config.journal.dir
        self.port = server.http.address[1]
        return server

    def call(self, method, path, body=None, headers=None):
        return request(self.port, method, path, body, headers)

    def call_json(self, method, path, body=None, headers=None):
        """A request whose answer must be JSON: (status, headers, decoded body)."""
        status, headers, raw = self.call(method, path, body, headers)
        self.assertEqual(headers.get("content-type"), "application/json", (status, raw))
        return status, headers, json.loads(raw)

    def post(self, body, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        return self.call_json("POST", "/log", body, {**JSON, **(headers or {})})

    def assert_accepted(self, answer, count):
        status, _, body = answer
        self.assertEqual(status, 200, body)
        self.assertEqual(body["ok"], True)
        self.assertEqual(len(body["ids"]), count, body)
        return body["ids"]

    def assert_refused(self, answer, status, reason, index=None):
        got_status, headers, body = answer
        self.assertEqual(got_status, status, body)
        self.assertEqual(body["ok"], False, body)
        self.assertIn(reason, body["error"])
        self.assertEqual(body.get("index"), index, body)
        return headers

    def events(self):
        return journal_events(self.journal_dir)

    def status(self):
        """/status, with the first token when tokens are set (/status needs one then)."""
        tokens = self.http_settings.get("status_tokens") or self.http_settings.get("tokens")
        headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else None
        status, _, body = self.call_json("GET", "/status", headers=headers)
        self.assertEqual(status, 200)
        return body

    def http_counts(self):
        stats = self.status()["sources"]["http"]
        return stats["accepted"], stats["rejected"]


class GetLogTest(HttpCase):
    def test_sparkngin_query_form(self):
        before = datetime.datetime.now(UTC)
        query = urllib.parse.urlencode([
            ("type", "click"), ("level", "warn"), ("topic", "web"), ("env", "prod"), ("ver", "1.2.3"),
            ("stimestamp", "1700000000000"), ("ip", "198.51.100.4"), ("user", "rick"),
            ("page", "/home?q=1"), ("mark", "\u2713 café")])
        status, _, body = self.call_json("GET", "/log?" + query, headers={
            "Referer": "https://example.com/p?x=1", "User-Agent": "Mozilla/5.0 (zspark test)",
            "Cookie": 'sid=abc123; theme="dark"; flag'})
        after = datetime.datetime.now(UTC)
        (event_id,) = self.assert_accepted((status, None, body), 1)
        (event,) = self.events()
        self.assertEqual(event["_id"], ObjectId(event_id))
        self.assertEqual(event["type"], "click")
        self.assertEqual(event["level"], "warn")
        self.assertEqual(event["topic"], "web")
        self.assertEqual(event["env"], "prod")
        self.assertEqual(event["version"], "1.2.3")
        self.assertEqual(event["stimestamp"], datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC))
        self.assertEqual(event["ip"], "198.51.100.4")
        self.assertEqual(event["context"], {"user": "rick", "page": "/home?q=1", "mark": "\u2713 café"})
        self.assertEqual(event["referrer"], "https://example.com/p?x=1")
        self.assertEqual(event["user_agent"], "Mozilla/5.0 (zspark test)")
        self.assertEqual(event["cookies"], {"sid": "abc123", "theme": "dark"})
        self.assertEqual(event["source"], "http")
        self.assertEqual(event["node"], "test")
        self.assertIsInstance(event["timestamp"], datetime.datetime)
        self.assertLessEqual(_ms(before), event["timestamp"])
        self.assertLessEqual(event["timestamp"], after)
        self.assertEqual(set(event), EVENT_KEYS | {"level", "topic", "env", "version", "stimestamp", "ip",
                                                  "context", "referrer", "user_agent", "cookies"})

    def test_headers_that_are_not_utf8(self):
        # http.client sends str headers as latin-1: "cafÃ©" goes out as the UTF-8 bytes of "café".
        self.assert_accepted(self.call_json("GET", "/log?type=h", headers={
            "User-Agent": "caf\u00c3\u00a9", "Referer": "https://example.com/\u00ff", "Cookie": "k=\u00c3(; j=ok"}), 1)
        (event,) = self.events()
        self.assertEqual(event["user_agent"], "café")
        self.assertEqual(event["referrer"], "https://example.com/\u00ff")  # not UTF-8: kept as latin-1
        self.assertEqual(event["cookies"], {"k": "\u00c3(", "j": "ok"})

    def test_ip_defaults_to_the_peer_and_nothing_else_is_invented(self):
        ids = self.assert_accepted(self.call_json("GET", "/log?type=ping"), 1)
        (event,) = self.events()
        self.assertEqual(str(event["_id"]), ids[0])
        self.assertEqual(event["ip"], "127.0.0.1")
        self.assertEqual(set(event), EVENT_KEYS | {"ip"})

    def test_x_forwarded_for_is_ignored_without_trusted_proxies(self):
        self.assert_accepted(self.call_json("GET", "/log?type=ping",
                                            headers={"X-Forwarded-For": "203.0.113.9"}), 1)
        (event,) = self.events()
        self.assertEqual(event["ip"], "127.0.0.1")

    def test_iso_stimestamp(self):
        self.assert_accepted(self.call_json("GET", "/log?type=a&stimestamp=2024-01-02T03%3A04%3A05.250Z"), 1)
        (event,) = self.events()
        self.assertEqual(event["stimestamp"], datetime.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC))

    def test_missing_type(self):
        self.assert_refused(self.call_json("GET", "/log?level=info&user=rick"), 400, "type: required", 0)
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 1))

    def test_query_that_is_not_utf8(self):
        self.assert_refused(self.call_json("GET", "/log?type=a&user=%FF%FE"), 400, "not valid UTF-8")
        self.assertEqual(self.events(), [])

    def test_invalid_ip_parameter(self):
        self.assert_refused(self.call_json("GET", "/log?type=a&ip=300.1.1.1"), 400, "ip: not an IP address", 0)
        self.assertEqual(self.events(), [])


class QueryParametersTest(HttpCase):
    def test_a_repeated_parameter_is_a_list_in_context(self):
        self.assert_accepted(self.call_json("GET", "/log?type=a&tag=x&page=%2F&tag=y&tag=x"), 1)
        (event,) = self.events()
        self.assertEqual(event["context"], {"tag": ["x", "y", "x"], "page": "/"})

    def test_a_repeated_field_is_refused_naming_it(self):
        for query, field in (("type=a&type=b", "type"), ("type=a&level=info&level=warn", "level"),
                             ("type=a&ver=1&version=2", "version"), ("type=a&ip=10.0.0.1&ip=10.0.0.2", "ip")):
            with self.subTest(query):
                self.assert_refused(self.call_json("GET", "/log?" + query), 400,
                                    f"{field}: given more than once in the query string")
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 4))


class UnknownFieldsTest(HttpCase):
    """event.unknown_fields: the same answer whether the event came by GET or by POST."""

    def test_by_default_they_go_into_context_from_get_and_post(self):
        self.assert_accepted(self.call_json("GET", "/log?type=get&user=rick"), 1)
        self.assert_accepted(self.post({"type": "post", "user": "rick", "context": {"page": "/"}}), 1)
        self.assert_accepted(self.post(b'{"type":"nd","user":"rick"}\n', NDJSON), 1)
        get, post, ndjson = self.events()
        self.assertEqual(get["context"], {"user": "rick"})
        self.assertEqual(post["context"], {"page": "/", "user": "rick"})
        self.assertEqual(ndjson["context"], {"user": "rick"})
        self.assertNotIn("user", post)

    def test_one_also_in_context_is_refused(self):
        self.assert_refused(self.post({"type": "x", "user": "a", "context": {"user": "b"}}), 400,
                            "unknown field 'user' is also in context", 0)
        self.assertEqual(self.events(), [])

    def test_what_goes_into_context_is_checked_as_context(self):
        self.assert_refused(self.post({"type": "x", "n": 2**64}), 400, "context.n: integer out of the 64-bit range", 0)
        self.assert_refused(self.post({"type": "x", "$where": "1"}), 400, "must not start with '$'", 0)
        self.assertEqual(self.events(), [])


class RefuseUnknownFieldsTest(HttpCase):
    event_settings = {"unknown_fields": "refuse"}

    def test_get_and_post_refuse_them_naming_the_field(self):
        self.assert_refused(self.call_json("GET", "/log?type=get&user=rick"), 400, "unknown field 'user'")
        self.assert_refused(self.post({"type": "post", "user": "rick"}), 400, "unknown field 'user'", 0)
        self.assert_accepted(self.call_json("GET", "/log?type=get&level=info"), 1)
        self.assertEqual([e["type"] for e in self.events()], ["get"])
        self.assertEqual(self.http_counts(), (1, 2))


class TrustedProxyTest(HttpCase):
    http_settings = {"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]}

    def ip_for(self, query, forwarded):
        before = len(self.events())
        self.assert_accepted(self.call_json("GET", "/log?" + query, headers=(
            {"X-Forwarded-For": forwarded} if forwarded is not None else {})), 1)
        events = self.events()
        self.assertEqual(len(events), before + 1)
        return events[-1]["ip"]

    def test_client_address_from_a_trusted_proxy(self):
        self.assertEqual(self.ip_for("type=a", "203.0.113.5"), "203.0.113.5")
        # The rightmost hop that is not a trusted proxy is the client; earlier hops may be forged.
        self.assertEqual(self.ip_for("type=a", "192.0.2.66, 198.51.100.23, 10.1.2.3"), "198.51.100.23")
        self.assertEqual(self.ip_for("type=a", "10.0.0.1"), "127.0.0.1")  # every hop trusted
        self.assertEqual(self.ip_for("type=a", None), "127.0.0.1")
        self.assertEqual(self.ip_for("type=a&ip=192.0.2.1", "203.0.113.5"), "192.0.2.1")  # explicit wins


class PostLogTest(HttpCase):
    def test_object_with_every_field(self):
        doc = {"type": "purchase", "level": "info", "topic": "shop", "env": "prod", "version": "2.1",
               "stimestamp": 1700000000, "ip": "2001:db8::1", "referrer": "https://example.com/",
               "user_agent": "curl/8.0", "cookies": {"sid": "abc"},
               "context": {"user": "rick", "n": 3, "price": 9.5, "yes": True, "none": None,
                           "tags": ["a", "b"], "nested": {"deep": [1, {"x": "y"}]},
                           "max": 2**63 - 1, "min": -2**63},
               "extra": [1, "two", 3.5]}
        before = datetime.datetime.now(UTC)
        (event_id,) = self.assert_accepted(self.post(doc), 1)
        after = datetime.datetime.now(UTC)
        (event,) = self.events()
        self.assertEqual(event["_id"], ObjectId(event_id))
        expected = dict(doc, stimestamp=datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
                        source="http", node="test")
        for key, value in expected.items():
            self.assertEqual(event[key], value, key)
            self.assertIs(type(event[key]), type(value), key)
        for key, value in doc["context"].items():  # BSON gives big ints as Int64, an int
            self.assertIsInstance(event["context"][key], type(value), key)
            self.assertEqual(isinstance(event["context"][key], bool), isinstance(value, bool), key)
        self.assertEqual(set(event), set(expected) | {"_id", "timestamp"})
        self.assertTrue(_ms(before) <= event["timestamp"] <= after)

    def test_array_is_journaled_in_order_with_the_answered_ids(self):
        docs = [{"type": "t", "context": {"i": i}} for i in range(5)]
        ids = self.assert_accepted(self.post(docs), 5)
        events = self.events()
        self.assertEqual([str(e["_id"]) for e in events], ids)
        self.assertEqual([e["context"]["i"] for e in events], list(range(5)))
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(self.http_counts(), (5, 0))

    def test_prefer_return_minimal_answers_the_count_only(self):
        """RFC 7240: a sender that does not want 1,000 ids back asks for the count."""
        docs = [{"type": "t", "context": {"i": i}} for i in range(1000)]
        for prefer in ("return=minimal", "Return = \"minimal\"", "respond-async, return=minimal; x=1"):
            with self.subTest(prefer=prefer):
                status, headers, body = self.post(docs, {"Prefer": prefer})
                self.assertEqual((status, body), (200, {"ok": True, "count": 1000}))
                self.assertEqual(headers.get("preference-applied"), "return=minimal")
        status, _, body = self.call_json("GET", "/log?type=one", headers={"Prefer": "return=minimal"})
        self.assertEqual((status, body), (200, {"ok": True, "count": 1}))
        self.assertEqual(len(self.events()), 3001)
        self.assertEqual(self.http_counts(), (3001, 0))
        # Any other preference, or none: the ids, as always.
        for headers in ({"Prefer": "return=representation"}, {"Prefer": "minimal"}, {}):
            with self.subTest(headers=headers):
                status, answer_headers, _ = self.post(docs[:2], headers)
                self.assert_accepted((status, answer_headers, _), 2)
                self.assertNotIn("preference-applied", answer_headers)

    def test_ndjson(self):
        body = b'{"type":"a"}\n\n{"type":"b","level":"debug"}\r\n  \n{"type":"c"}'
        for content_type in ("application/x-ndjson", "application/x-ndjson; charset=utf-8",
                             "application/ndjson"):
            with self.subTest(content_type=content_type):
                self.assert_accepted(self.post(body, {"Content-Type": content_type}), 3)
        events = self.events()
        self.assertEqual([e["type"] for e in events], ["a", "b", "c"] * 3)
        self.assertEqual(events[1]["level"], "debug")

    def test_ndjson_numbers_and_text_arrive_exactly(self):
        line = (b'{"type":"n","context":{"max":9223372036854775807,"min":-9223372036854775808,'
                b'"id":"12345678901234567890123","f":0.1,"e":1e-7,"big":1.5e300,"z":-0.0,"i":-0,'
                b'"s":"caf\xc3\xa9 \\ud83d\\ude00 \\u00e9\\n","dup":1,"dup":2}}')
        self.assert_accepted(self.post(line + b"\n" + line.replace(b'"id"', b'"xd"'), NDJSON), 2)
        for event in self.events():
            context = event["context"]
            self.assertEqual(list(context)[-1], "dup")
            self.assertEqual({k: v for k, v in context.items() if k not in ("id", "xd")},
                             {"max": 2**63 - 1, "min": -2**63, "f": 0.1, "e": 1e-7, "big": 1.5e300, "z": -0.0,
                              "i": 0, "s": "caf\u00e9 \U0001F600 \u00e9\n", "dup": 2})
            self.assertEqual([type(context[k]) for k in ("f", "z", "i")], [float, float, int])
        self.assertEqual(self.events()[0]["context"]["id"], "12345678901234567890123")

    def test_ndjson_and_a_json_array_of_the_same_events_are_journaled_alike(self):
        """NDJSON of the common kind goes from its lines straight to BSON (native.ndjson_frames);
        each record is the bytes the JSON array's events make, but for its _id and timestamp."""
        events = [{"type": "a", "level": "info", "context": {"n": [0, -0, 2**31, -2**63, 1.5, -0.0, 1e-300],
                                                             "s": "x\"\\/\b\f\n\r\t\u0001", "t": True, "f": False,
                                                             "none": None, "deep": {"e": {}, "l": [[]]}}},
                  {"type": "b", "referrer": "http://r/", "extra": "e"},
                  {"type": "c", "topic": "t", "env": "prod", "version": "1", "extra": [{"k": 1}]}]
        headers = {"User-Agent": "ua/1", "X-Forwarded-For": "10.9.8.7"}
        with mock.patch("zspark.ingest.splice_frames", wraps=codec.splice_frames) as straight_to_bson:
            for separators in ((",", ":"), (", ", ": ")):
                ndjson = "\n".join(json.dumps(e, separators=separators) for e in events).encode() + b"\r\n"
                self.assert_accepted(self.post(ndjson, {**headers, **NDJSON}), 3)
        if self.server.config.http.workers == 1:  # else worker processes serve it, out of the spy's sight
            self.assertEqual(straight_to_bson.call_count, 2 if native.COMPILED else 0)
        self.assert_accepted(self.post(events, headers), 3)
        reader = Reader(self.journal_dir, 0)
        self.addCleanup(reader.close)
        payloads = [payload for _, payload in reader]
        self.assertEqual(len(payloads), 9)
        # A payload: its size, then _id (17 bytes) and timestamp (19), then the rest.
        same = [(p[:4], p[4 + 17 + 19:]) for p in payloads]
        self.assertEqual(same[0:3], same[6:9])
        self.assertEqual(same[3:6], same[6:9])
        self.assertEqual(list(self.events()[0])[-5:], ["context", "ip", "user_agent", "source", "node"])

    def test_gzip(self):
        self.assert_accepted(self.post(gzip.compress(b'[{"type":"g1"},{"type":"g2"}]'),
                                       {"Content-Encoding": "gzip"}), 2)
        self.assert_accepted(self.post(gzip.compress(b'{"type":"g3"}\n{"type":"g4"}\n'),
                                       {"Content-Encoding": "gzip", **NDJSON}), 2)
        self.assertEqual([e["type"] for e in self.events()], ["g1", "g2", "g3", "g4"])

    def test_gzip_with_several_members(self):
        # A gzip stream may be several members back to back (`cat a.gz b.gz`): all of it counts.
        body = gzip.compress(b'{"type":"m1"}\n') + gzip.compress(b'{"type":"m2"}\n{"type":"m3"}\n')
        ids = self.assert_accepted(self.post(body, {"Content-Encoding": "gzip", **NDJSON}), 3)
        events = self.events()
        self.assertEqual([e["type"] for e in events], ["m1", "m2", "m3"])
        self.assertEqual([str(e["_id"]) for e in events], ids)

    def test_assigned_fields_cannot_be_set_by_the_sender(self):
        (event_id,) = self.assert_accepted(self.post(
            {"type": "x", "_id": "mine", "source": "forged", "node": "elsewhere"}), 1)
        (event,) = self.events()
        self.assertEqual(event["_id"], ObjectId(event_id))
        self.assertEqual((event["source"], event["node"]), ("http", "test"))

    def test_zarkov_timestamp_becomes_stimestamp(self):
        before = datetime.datetime.now(UTC)
        self.assert_accepted(self.post([{"type": "z", "timestamp": "2024-05-06T07:08:09.123Z"},
                                        {"type": "z", "stimestamp": 1700000000123}]), 2)
        after = datetime.datetime.now(UTC)
        first, second = self.events()
        self.assertEqual(first["stimestamp"], datetime.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC))
        self.assertTrue(_ms(before) <= first["timestamp"] <= after)  # `timestamp` is the receive time
        self.assertEqual(second["stimestamp"], datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC))

    def test_ids_continue_across_requests(self):
        ids = []
        for i in range(3):
            ids += self.assert_accepted(self.post({"type": "seq", "context": {"i": i}}), 1)
        self.assertEqual([str(e["_id"]) for e in self.events()], ids)


class BadInputTest(HttpCase):
    event_settings = {"unknown_fields": "refuse"}  # the default moves them into context
    # (name, body, extra headers, reason, index in the answer, events counted as rejected)
    CASES = [
        ("malformed JSON", b'{"type": "x",', {}, "the body is not valid JSON", None, 1),
        ("empty body", b"", {}, "the body is not valid JSON", None, 1),
        ("two objects without NDJSON", b'{"type":"a"}{"type":"b"}', {}, "application/x-ndjson", None, 1),
        ("type not a string", {"type": 5}, {}, "type: must be a string, got a number", 0, 1),
        ("empty type", {"type": ""}, {}, "type: must not be empty", 0, 1),
        ("type too long", {"type": "t" * 300}, {}, "type: longer than 256 bytes", 0, 1),
        ("missing type", {"level": "info"}, {}, "type: required", 0, 1),
        ("unknown field", {"type": "x", "colour": "red"}, {}, "unknown field 'colour'", 0, 1),
        ("level not a string", {"type": "x", "level": {"a": 1}}, {}, "level: must be a string", 0, 1),
        ("context not an object", {"type": "x", "context": "text"}, {}, "context: must be an object", 0, 1),
        ("cookie not a string", {"type": "x", "cookies": {"a": 1}}, {}, "cookies.a: must be a string", 0, 1),
        ("stimestamp not a time", {"type": "x", "stimestamp": "yesterday"}, {}, "stimestamp: not a time", 0, 1),
        ("stimestamp boolean", {"type": "x", "stimestamp": True}, {}, "stimestamp: must be a time", 0, 1),
        ("stimestamp out of range", {"type": "x", "stimestamp": "0001-01-01T00:00:00+01:00"}, {},
         "stimestamp: out of range", 0, 1),
        ("stimestamp far future", {"type": "x", "stimestamp": "9999-12-31T23:59:59-05:00"}, {},
         "stimestamp: out of range", 0, 1),
        ("stimestamp huge number", {"type": "x", "stimestamp": 10**30}, {}, "stimestamp: out of range", 0, 1),
        ("bad ip", {"type": "x", "ip": "not-an-ip"}, {}, "ip: not an IP address", 0, 1),
        ("NaN", b'{"type":"x","context":{"v":NaN}}', {}, "NaN is not a JSON number", None, 1),
        ("Infinity", b'{"type":"x","context":{"v":-Infinity}}', {}, "-Infinity is not a JSON number", None, 1),
        ("overflowing float", b'{"type":"x","context":{"v":1e400}}', {}, "context.v: must be a finite number", 0, 1),
        ("invalid UTF-8", b'{"type":"caf\xe9"}', {}, "not valid UTF-8", None, 1),
        ("lone surrogate", b'{"type":"x","context":{"s":"\\ud800"}}', {}, "lone surrogate", 0, 1),
        ("NUL in a string", b'{"type":"x","context":{"s":"a\\u0000b"}}', {}, "NUL character", 0, 1),
        ("dollar key", {"type": "x", "context": {"$where": "1"}}, {}, "must not start with '$'", 0, 1),
        ("nested deeper than the limit", {"type": "x", "context": json.loads('{"a":' * 40 + "1" + "}" * 40)},
         {}, "nested deeper than 32 levels", 0, 1),
        ("nested deeper than the parser", b"[" * 100000 + b"]" * 100000, {}, "nested too deeply", None, 1),
        ("integer over int64", {"type": "x", "context": {"n": 2**63}}, {}, "context.n: integer out of the 64-bit range",
         0, 1),
        ("integer under int64", {"type": "x", "extra": [-2**63 - 1]}, {}, "extra[0]: integer out of the 64-bit range",
         0, 1),
        ("integer with too many digits", b'{"type":"x","context":{"n":' + b"9" * 5000 + b"}}", {},
         "not valid JSON", None, 1),
        ("a string body", b'"hello"', {}, "must be a JSON object, an array of objects, or NDJSON", None, 1),
        ("empty array", [], {}, "the batch is empty", None, 1),
        ("batch with a non-object", [{"type": "a"}, 7], {}, "an event must be a JSON object", 1, 2),
        ("batch with a bad third item", [{"type": "a"}, {"type": "b"}, {"type": "c", "context": {"n": 2**64}}], {},
         "context.n: integer out of the 64-bit range", 2, 3),
        ("NDJSON with a broken line", b'{"type":"a"}\n{"type":\n{"type":"c"}\n', NDJSON,
         "line 2 is not valid JSON", 1, 3),
        ("NDJSON with an invalid event", b'{"type":"a"}\n{"type":"b","bogus":1}\n', NDJSON,
         "unknown field 'bogus'", 1, 2),
        ("NDJSON with a NaN line", b'{"type":"a"}\n{"type":"b"}\n{"type":"c","context":{"v":NaN}}', NDJSON,
         "NaN is not a JSON number", 2, 3),
        ("empty NDJSON", b"\n \n", NDJSON, "the batch is empty", None, 1),
        # Lines where a fast JSON decoder could answer differently from json's (sources/fastjson.py).
        ("NDJSON integer over uint64", b'{"type":"a"}\n{"type":"b","context":{"n":18446744073709551616}}', NDJSON,
         "context.n: integer out of the 64-bit range", 1, 2),
        ("NDJSON integer under int64", b'{"type":"a","extra":[-9223372036854775809]}\n', NDJSON,
         "extra[0]: integer out of the 64-bit range", 0, 1),
        ("NDJSON overflowing float", b'{"type":"a","context":{"v":-1e400}}', NDJSON,
         "context.v: must be a finite number", 0, 1),
        ("NDJSON lone surrogate", b'{"type":"a","context":{"s":"x\\udc00"}}', NDJSON, "lone surrogate", 0, 1),
        ("NDJSON nested just deeper than the parser", b'{"type":"a"}\n' + b"[" * 1010 + b"]" * 1010, NDJSON,
         "line 2 is nested too deeply", 1, 2),
    ]

    def test_every_bad_input_is_a_400_with_its_reason(self):
        rejected = 0
        for name, body, headers, reason, index, count in self.CASES:
            with self.subTest(name):
                self.assert_refused(self.post(body, headers), 400, reason, index)
                rejected += count
        self.assertEqual(self.events(), [], "a refused request journaled something")
        self.assertEqual(self.http_counts(), (0, rejected))
        self.assertIsNotNone(self.status()["sources"]["http"]["last_rejection"])

    def test_a_bad_batch_journals_nothing(self):
        good = self.assert_accepted(self.post({"type": "before"}), 1)
        self.assert_refused(self.post([{"type": "ok1"}, {"type": "ok2"}, {"type": "bad", "oops": 1}]),
                            400, "unknown field 'oops'", 2)
        self.assert_refused(self.post(b'{"type":"ok3"}\n{"type":"ok4"}\nnot json\n', NDJSON),
                            400, "line 3 is not valid JSON", 2)
        good += self.assert_accepted(self.post({"type": "after"}), 1)
        events = self.events()
        self.assertEqual([e["type"] for e in events], ["before", "after"])
        self.assertEqual([str(e["_id"]) for e in events], good)
        self.assertEqual(self.http_counts(), (2, 6))


class SizeLimitTest(HttpCase):
    LIMIT = 4096
    http_settings = {"max_body_bytes": LIMIT}

    def body_of(self, size):
        body = b'{"type":"sized"}'
        return body + b" " * (size - len(body))

    def test_a_body_at_the_limit_is_accepted(self):
        self.assert_accepted(self.post(self.body_of(self.LIMIT)), 1)

    def test_content_length_over_the_limit(self):
        headers = self.assert_refused(self.post(self.body_of(self.LIMIT + 1)), 413,
                                      f"larger than {self.LIMIT} bytes")
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 1))

    def chunked(self, body, chunk=1000, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            pieces = (body[i:i + chunk] for i in range(0, len(body), chunk))
            conn.request("POST", "/log", body=pieces, headers={**JSON, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())
        finally:
            conn.close()

    def test_chunked_body_over_the_limit(self):
        self.assert_refused(self.chunked(self.body_of(self.LIMIT + 500)), 413, f"larger than {self.LIMIT} bytes")
        self.assertEqual(self.events(), [])

    def test_chunked_body_under_the_limit(self):
        body = json.dumps([{"type": "chunk", "context": {"i": i}} for i in range(20)]).encode()
        self.assertLess(len(body), self.LIMIT)
        self.assert_accepted(self.chunked(body, chunk=100), 20)
        self.assertEqual([e["context"]["i"] for e in self.events()], list(range(20)))

    def test_gzip_bomb(self):
        inflated = b'{"type":"bomb","context":{"pad":"' + b"a" * 3_000_000 + b'"}}'
        compressed = gzip.compress(inflated, 9)
        self.assertLess(len(compressed), self.LIMIT)
        self.assert_refused(self.post(compressed, {"Content-Encoding": "gzip"}), 413, "after gunzip")
        self.assertEqual(self.events(), [])

    def test_gzip_just_over_the_limit_after_inflating(self):
        compressed = gzip.compress(self.body_of(self.LIMIT + 1))
        self.assert_refused(self.post(compressed, {"Content-Encoding": "gzip"}), 413, "after gunzip")
        self.assert_accepted(self.post(gzip.compress(self.body_of(self.LIMIT)), {"Content-Encoding": "gzip"}), 1)

    def test_gzip_damage(self):
        whole = gzip.compress(b'[{"type":"a"},{"type":"b"}]')
        self.assert_refused(self.post(whole[:-8], {"Content-Encoding": "gzip"}), 400, "the gzip body is truncated")
        self.assert_refused(self.post(whole[:len(whole) // 2], {"Content-Encoding": "gzip"}), 400, "truncated")
        self.assert_refused(self.post(b'{"type":"plain"}', {"Content-Encoding": "gzip"}), 400, "gzip body is damaged")
        self.assert_refused(self.post(whole[:10] + bytes(range(256)), {"Content-Encoding": "gzip"}), 400,
                            "gzip body is damaged")
        self.assert_refused(self.post(whole + b"trailing junk", {"Content-Encoding": "gzip"}), 400,
                            "gzip body is damaged")
        self.assertEqual(self.events(), [])

    def test_unsupported_encoding(self):
        self.assert_refused(self.post(b'{"type":"x"}', {"Content-Encoding": "br"}), 415,
                            "unsupported Content-Encoding")
        self.assertEqual(self.events(), [])


class TokenTest(HttpCase):
    http_settings = {"tokens": ["s3cret-one", "s3cret-two"]}

    def test_tokens(self):
        refused = [None, "Bearer wrong", "Bearer s3cret-on", "Bearer s3cret-one2", "Basic czNjcmV0LW9uZQ==",
                   "Bearer ", "s3cret-one", "Bearers3cret-one"]
        for auth in refused:
            with self.subTest(auth=auth):
                headers = {"Authorization": auth} if auth is not None else {}
                h = self.assert_refused(self.post({"type": "x"}, headers), 401, "bearer token")
                self.assertIn("Bearer", h.get("www-authenticate", ""))
                self.assert_refused(self.call_json("GET", "/log?type=x", headers=headers), 401, "bearer token")
        ids = self.assert_accepted(self.post({"type": "one"}, {"Authorization": "Bearer s3cret-one"}), 1)
        ids += self.assert_accepted(self.call_json("GET", "/log?type=two",
                                                   headers={"Authorization": "Bearer s3cret-two"}), 1)
        ids += self.assert_accepted(self.post({"type": "three"}, {"Authorization": "bearer s3cret-one"}), 1)
        events = self.events()
        self.assertEqual([e["type"] for e in events], ["one", "two", "three"])
        self.assertEqual([str(e["_id"]) for e in events], ids)


class RoutesTest(HttpCase):
    def test_other_methods_on_log(self):
        for method in ("PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                status, headers, body = self.call_json(method, "/log", b'{"type":"x"}', JSON)
                self.assertEqual(status, 405)
                self.assertEqual(body, {"ok": False, "error": "method not allowed"})
                allowed = {m.strip() for m in headers["allow"].split(",")}
                self.assertEqual(allowed, {"GET", "POST", "OPTIONS"})  # OPTIONS: CORS preflights
        self.assertEqual(self.events(), [])

    def test_head_on_log_is_refused_and_logs_nothing(self):
        status, headers, _ = self.call("HEAD", "/log?type=probe")
        self.assertEqual(status, 405)
        self.assertEqual({m.strip() for m in headers["allow"].split(",")}, {"GET", "POST", "OPTIONS"})
        self.assertEqual(self.events(), [])
        self.assertEqual(self.call("HEAD", "/imok")[0], 200)

    def test_not_found(self):
        for method, path in (("GET", "/nope"), ("POST", "/logs"), ("GET", "/log/extra"), ("GET", "/"),
                             ("POST", "/status")):
            with self.subTest(path=path):
                status, _, body = self.call_json(method, path, b'{"type":"x"}', JSON)
                self.assertIn(status, (404, 405))
                self.assertEqual(body["ok"], False)
                if method == "GET":
                    self.assertEqual(status, 404)
                    self.assertEqual(body, {"ok": False, "error": "not found"})
        self.assertEqual(self.events(), [])

    def test_imok(self):
        status, headers, body = self.call("GET", "/imok")
        self.assertEqual((status, body), (200, b"imok"))
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    def test_status(self):
        self.assert_accepted(self.post([{"type": "a"}, {"type": "b"}]), 2)
        self.assert_refused(self.post({"type": 1}), 400, "type", 0)
        status = self.status()
        self.assertEqual(status["ok"], True)
        self.assertEqual(status["node"], "test")
        self.assertIsInstance(status["uptime_s"], (int, float))
        self.assertGreaterEqual(status["uptime_s"], 0)
        self.assertEqual(status["stopping"], False)
        http_stats = status["sources"]["http"]
        self.assertEqual((http_stats["accepted"], http_stats["rejected"], http_stats["refused"]), (2, 1, 0))
        self.assertIn("type", http_stats["last_rejection"])
        journal = status["journal"]
        self.assertEqual((journal["first_offset"], journal["end_offset"]), (0, 2))
        on_disk = sum(os.path.getsize(os.path.join(self.journal_dir, name))
                      for name in os.listdir(self.journal_dir) if name.endswith(".log"))
        self.assertEqual(journal["bytes"], on_disk)
        self.assertGreater(journal["bytes"], 0)
        for key in ("last", "avg", "max"):
            self.assertIsInstance(journal["sync_latency_ms"][key], (int, float))
            self.assertGreaterEqual(journal["sync_latency_ms"][key], 0)
        self.assertGreaterEqual(journal["syncs"], 1)


class RootPrefixTest(HttpCase):
    http_settings = {"root": "/sparkngin"}

    def test_routes_live_under_the_root(self):
        for server in (self.server, self.start_server(http={"root": "/sparkngin/"})):
            port = server.http.address[1]
            with self.subTest(root=server.config.http.root):
                self.assertEqual(request(port, "GET", "/sparkngin/log?type=a")[0], 200)
                self.assertEqual(request(port, "POST", "/sparkngin/log", {"type": "b"})[0], 200)
                self.assertEqual(request(port, "GET", "/sparkngin/imok")[2], b"imok")
                self.assertEqual(request(port, "GET", "/sparkngin/status")[0], 200)
                for path in ("/log?type=a", "/imok", "/status"):
                    status, headers, body = request(port, "GET", path)
                    self.assertEqual(status, 404, path)
                    self.assertEqual(json.loads(body), {"ok": False, "error": "not found"})
                self.assertEqual(request(port, "POST", "/log", {"type": "c"})[0], 404)
                self.assertEqual([e["type"] for e in journal_events(server.config.journal.dir)], ["a", "b"])


class JournalFullTest(HttpCase):
    journal_settings = {"max_bytes": 1500}
    http_settings = {"retry_after_s": 7}

    def test_a_full_journal_refuses_new_events_and_keeps_the_old(self):
        # A batch larger than the whole journal could never fit: a 413 that says so, counted as
        # a rejection, not a 503 for the sender to retry for ever.
        batch = [{"type": "big", "context": {"i": i}} for i in range(30)]
        headers = self.assert_refused(self.post(batch), 413, "can never fit in the journal, 1500 bytes at most")
        self.assertNotIn("retry-after", headers)
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 1))
        # Single events go in until the cap is reached.
        ids = []
        for i in range(100):
            status, headers, body = self.post({"type": "fill", "context": {"i": i}})
            if status != 200:
                break
            ids += body["ids"]
        else:
            self.fail("the journal never filled up")
        self.assertGreater(len(ids), 0)
        self.assertEqual(status, 503, body)
        self.assertIn("the journal is full", body["error"])
        self.assertEqual(headers.get("retry-after"), "7")
        # Still full: GET is refused too; the server itself is fine.
        headers = self.assert_refused(self.call_json("GET", "/log?type=more"), 503, "the journal is full")
        self.assertEqual(headers.get("retry-after"), "7")
        self.assertEqual(self.call("GET", "/imok")[2], b"imok")
        # Nothing already journaled was harmed.
        events = self.events()
        self.assertEqual([str(e["_id"]) for e in events], ids)
        self.assertEqual([e["context"]["i"] for e in events], list(range(len(ids))))
        status = self.status()
        self.assertEqual(status["sources"]["http"]["accepted"], len(ids))
        self.assertGreaterEqual(status["sources"]["http"]["refused"], 2)  # the two 503s above
        self.assertLessEqual(status["journal"]["bytes"], 1500)
        self.assertEqual(status["journal"]["end_offset"], len(ids))


class StoppingTest(HttpCase):
    http_settings = {"retry_after_s": 3, "stop_timeout_s": 20, "workers": 1}  # watched from inside this process: not with HTTP worker processes

    def test_requests_while_stopping_get_503_and_requests_in_flight_are_answered(self):
        idle_conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(idle_conn.close)

        def send(conn, method, path, body=None):
            conn.request(method, path, body=body, headers=JSON if body else {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())

        ids = self.assert_accepted(send(idle_conn, "POST", "/log", b'{"type":"before"}'), 1)
        # A request in flight: headers sent, body not yet complete.
        body = b'{"type":"in_flight"}'
        slow = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(slow.close)
        slow.sendall(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        wait_until(lambda: self.server.http._in_flight == 1, message="the slow request to be in flight")
        stopper = gevent.spawn(self.server.shutdown)
        wait_until(lambda: self.server.status()["stopping"], message="the server to be stopping")
        # The listener is closed: new connections are refused ...
        with self.assertRaises(ConnectionRefusedError):
            request(self.port, "GET", "/imok", timeout=5)
        # ... and a request on an open keep-alive connection gets 503 with Retry-After.
        status, headers, answer = send(idle_conn, "POST", "/log", b'{"type":"late"}')
        self.assert_refused((status, headers, answer), 503, "the server is stopping")
        self.assertEqual(headers.get("retry-after"), "3")
        self.assertFalse(stopper.dead, "the stop waits for the request in flight")
        # The request in flight completes and is answered 200.
        slow.sendall(body[5:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = slow.recv(65536)
            if not chunk:
                break
            reply += chunk
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply)
        ids += json.loads(reply.split(b"\r\n\r\n", 1)[1])["ids"]
        stopper.join(30)
        self.assertTrue(stopper.successful(), stopper.exception)
        events = self.events()
        self.assertEqual([e["type"] for e in events], ["before", "in_flight"])
        self.assertEqual([str(e["_id"]) for e in events], ids)


class KeepAliveTest(HttpCase):
    http_settings = {"workers": 1}  # watched from inside this process: not with HTTP worker processes

    def test_many_requests_on_one_connection_with_tcp_nodelay(self):
        nodelay = []
        original = httpserver.RequestHandler.handle_one_request

        def recording(handler):
            nodelay.append(handler.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            return original(handler)

        ids = []
        with mock.patch.object(httpserver.RequestHandler, "handle_one_request", recording):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.addCleanup(conn.close)
            sock = None
            for i in range(60):
                kind = i % 6
                if kind == 0:
                    conn.request("POST", "/log", body=json.dumps({"type": "ka", "context": {"i": i}}), headers=JSON)
                elif kind == 1:
                    conn.request("GET", f"/log?type=ka&i={i}")
                elif kind == 2:
                    conn.request("GET", "/imok")
                elif kind == 3:
                    conn.request("POST", "/log", body=b'{"type":', headers=JSON)  # a 400 keeps the connection
                elif kind == 4:
                    conn.request("GET", "/nowhere")
                else:
                    conn.request("GET", "/status")
                resp = conn.getresponse()
                body = resp.read()
                expected = {0: 200, 1: 200, 2: 200, 3: 400, 4: 404, 5: 200}[kind]
                self.assertEqual(resp.status, expected, body)
                dates = [value for name, value in resp.getheaders() if name.lower() == "date"]
                self.assertEqual(len(dates), 1, resp.getheaders())
                self.assertLess(abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - time.time()), 5)
                if kind in (0, 1):
                    ids += json.loads(body)["ids"]
                sock = sock or conn.sock
                self.assertIsNotNone(conn.sock, f"the server closed the connection after request {i}")
                self.assertIs(conn.sock, sock, f"a new connection was opened for request {i}")
            conn.close()
            self.assertEqual(self.call("GET", "/imok")[0], 200)  # a second connection
        self.assertGreaterEqual(len(nodelay), 60)
        self.assertTrue(all(nodelay), "TCP_NODELAY is not set on accepted sockets")
        events = self.events()
        self.assertEqual([str(e["_id"]) for e in events], ids)
        self.assertEqual(len(events), 20)


def _random_text(rng, n):
    alphabet = "abcxyz019 -_./?&=%+;:,\"'\\{}[]\u00e9\u2713\U0001F600\x00\x7f\ud800"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _random_value(rng, depth=0):
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, 2**63, -2**63 - 1, 10**30, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300, float("nan"), float("inf")])
    if kind in (4, 5):
        return _random_text(rng, rng.randrange(0, 12))
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {_random_text(rng, rng.randrange(0, 6)): _random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


FIELDS = ["type", "level", "topic", "env", "version", "ip", "referrer", "user_agent", "timestamp", "stimestamp",
          "cookies", "context", "extra", "source", "node", "_id", "$command", "bogus"]


def _random_event(rng):
    event = {}
    for name in rng.sample(FIELDS, rng.randrange(0, 6)):
        event[name] = _random_value(rng)
    if rng.random() < 0.5:
        event["type"] = rng.choice(["ok", "", "x" * 300, 5, None])
    if rng.random() < 0.3:
        event["stimestamp"] = rng.choice(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "nan", "1e400",
                                          "2024-02-30T00:00:00Z", -1e20, 1e19, "", " 12 "])
    return event


def _random_body(rng):
    kind = rng.randrange(11)
    if kind >= 9:  # mostly valid: a good event, sometimes with a random context
        context = {"k": _random_value(rng)} if rng.random() < 0.5 else {"n": rng.randrange(100)}
        return json.dumps({"type": "ok", "context": context}).encode()
    if kind == 0:
        return None
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 2:
        return json.dumps(_random_event(rng)).encode("utf-8", "surrogatepass")
    if kind == 3:
        return json.dumps([_random_event(rng) for _ in range(rng.randrange(0, 4))]).encode("utf-8", "surrogatepass")
    if kind == 4:
        return b"\n".join(json.dumps(_random_event(rng)).encode("utf-8", "surrogatepass")
                          for _ in range(rng.randrange(0, 4)))
    if kind == 5:
        body = json.dumps(_random_event(rng)).encode("utf-8", "surrogatepass")
        return body[:rng.randrange(0, len(body) + 1)]
    if kind == 6:
        return gzip.compress(json.dumps(_random_value(rng)).encode())[:rng.randrange(0, 200)]
    if kind == 7:
        depth = rng.choice([31, 33, 1000, 50000])
        return b'{"type":"d","context":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    return json.dumps(_random_value(rng)).encode("utf-8", "surrogatepass")


def _header_value(rng):
    alphabet = [chr(c) for c in range(0x20, 0x7f)] + [chr(c) for c in range(0xa0, 0x100)]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def _random_path(rng):
    choices = [
        "/log", "/log", "/log?", "/status", "/imok", "/", "/log/", "//log", "/%ff%fe", "/log%ff", "/log?type=%ff",
        "/log?type=x&ip=999.1.1.1", "/log?type=x&stimestamp=0001-01-01T00:00:00%2B01:00", "/log?type=x&%24where=1",
        "/log?type=x&a%00b=1", "/log?type=x&stimestamp=1e400", "/log?type=" + "y" * 5000, "/metrics", "/log;x",
        "/log?" + "&".join(f"{urllib.parse.quote(_random_text(rng, 3), safe='', errors='surrogatepass')}="
                           f"{urllib.parse.quote(_random_text(rng, 5), safe='', errors='surrogatepass')}" for _ in range(rng.randrange(5))),
        "/log?type=" + urllib.parse.quote(_random_text(rng, 8), safe="", errors="surrogatepass") + "&level=" + "%" * rng.randrange(3),
        "/" + "a" * 3000,
    ]
    return "/log" if rng.random() < 0.5 else rng.choice(choices)


class GarbageTest(HttpCase):
    SEED = 20240611

    def test_assorted_garbage_never_gets_a_500(self):
        rng = random.Random(self.SEED)
        answered_ids = set()
        statuses = {}
        for i in range(500):
            method = rng.choice(["GET", "GET", "POST", "POST", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                 "FOO", "HEAD"])
            path = _random_path(rng)
            headers = {}
            for name in rng.sample(["Content-Type", "Content-Encoding", "Authorization", "Cookie", "X-Forwarded-For",
                                    "Referer", "User-Agent", "Accept", "Content-Type"], rng.randrange(0, 5)):
                headers[name] = rng.choice([_header_value(rng), "application/json", "application/x-ndjson", "gzip",
                                            "text/plain; charset=latin-1", "Bearer x", "a=b; c", "1.2.3.4, ::1"])
            body = _random_body(rng) if method not in ("GET", "HEAD") or rng.random() < 0.2 else None
            if body is not None and headers.get("Content-Encoding") == "gzip" and rng.random() < 0.5:
                body = gzip.compress(body)
            with self.subTest(i=i, method=method, path=path[:80], headers=headers, body=(body or b"")[:200]):
                status, resp_headers, raw = request(self.port, method, path, body, headers)
                statuses[status] = statuses.get(status, 0) + 1
                self.assertLess(status, 500, raw)
                if method == "HEAD" or path.endswith("/imok"):
                    continue
                if status == 204:  # OPTIONS /log (a CORS preflight): no content
                    self.assertEqual((method, raw), ("OPTIONS", b""))
                    continue
                if path == "/metrics" and status == 200:  # the Prometheus text format, not JSON
                    self.assertTrue(resp_headers.get("content-type", "").startswith("text/plain"), resp_headers)
                    continue
                self.assertEqual(resp_headers.get("content-type"), "application/json", raw)
                answer = json.loads(raw)
                self.assertEqual(answer["ok"], status == 200, answer)
                if status == 200 and "ids" in answer:
                    answered_ids.update(answer["ids"])
                elif status != 200:
                    self.assertIsInstance(answer["error"], str)
        self.assertGreater(statuses.get(200, 0), 0, statuses)
        self.assertGreater(statuses.get(400, 0), 0, statuses)
        self.raw_garbage(rng)
        # Still serving, and every id answered with 200 is in the journal.
        self.assert_accepted(self.post({"type": "after-garbage"}), 1)
        journal_ids = {str(e["_id"]) for e in self.events()}
        self.assertLessEqual(answered_ids, journal_ids)
        self.assertEqual(len(journal_ids), self.status()["sources"]["http"]["accepted"])

    def raw_garbage(self, rng):
        """Bytes that are barely (or not at all) HTTP, on raw sockets."""
        templates = [
            lambda: rng.randbytes(rng.randrange(1, 200)),
            lambda: b"POST /log HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"type\"",
            lambda: b"POST /log HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            lambda: b"POST /log HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            lambda: b"POST /log HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            lambda: b"POST /log HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"typ",
            lambda: (b"POST /log HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                     b"3\r\n{}\n\r\n0\r\n\r\n"),
            lambda: b"GET /log?type=x HTTP/1.1\r\n" + b"X-A: " + b"b" * 70000 + b"\r\n\r\n",
            lambda: b"GET /log?type=x HTTP/9.9\r\n\r\n",
            lambda: b"GET /log?type=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            lambda: b"GET /\xff\x00log HTTP/1.1\r\n\r\n",
            lambda: b"GET /log?type=x HTTP/1.1\r\nCookie: \xff\xfe=\xfd\r\nUser-Agent: \xc3\x28\r\n"
                    b"Referer: \x80\r\nX-Forwarded-For: \xff\r\n\r\n",
            lambda: b"POST /log HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
                    b"Content-Encoding: \xff\r\n\r\n{\"type\":\"x\"}",
            lambda: b"GET /log?type=x HTTP/1.1\r\nHost: a\r\nHost: b\r\nBroken header line\r\n\r\n",
            lambda: b"\r\n\r\n\r\n",
            lambda: b"GET " + b"/" * 20000 + b" HTTP/1.1\r\n\r\n",
            lambda: b"POST /log HTTP/1.0\r\n\r\n" + b'{"type":"http10"}',
        ]
        for i in range(120):
            data = templates[i % len(templates)]() if i < 2 * len(templates) else rng.choice(templates)()
            with self.subTest(raw=i, data=data[:120]):
                status = self.raw_exchange(data)
                if status is not None:
                    self.assertLess(status, 500, data[:200])

    def raw_exchange(self, data):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may hang up on garbage before reading all of it
            answer = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
        if not answer:
            return None
        first = answer.split(b"\r\n", 1)[0].split()
        self.assertGreaterEqual(len(first), 2, answer[:200])
        self.assertTrue(first[0].startswith(b"HTTP/"), answer[:200])
        return int(first[1])


if __name__ == "__main__":
    unittest.main()
