"""What web pages get from the HTTP source, over real sockets to a server in this process: CORS
preflights and headers, the pixel (always the GIF, the status telling what became of its event),
the visitor cookie, /zspark.js, the request's fields on POSTed events, and the config keys.
tests/test_browser.py does the same from a real browser.
"""
import json
import unittest

from tests.support import TempDir, config_data, write_config
from tests.test_http import HttpCase
from zspark.config import ConfigError, from_dict, load
from zspark.sources.httpweb import GIF

ORIGIN = "https://shop.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}
NO_CACHE = {"cache-control": "no-store, no-cache, must-revalidate, max-age=0", "pragma": "no-cache",
            "expires": "0"}


class AnyOriginTest(HttpCase):
    """The default: http.cors.allowed_origins ["*"]."""

    def test_preflight(self):
        status, headers, body = self.call("OPTIONS", "/log", headers=PREFLIGHT)
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(headers["access-control-allow-origin"], "*")
        self.assertEqual(headers["access-control-allow-methods"], "GET, POST")
        self.assertEqual(headers["access-control-allow-headers"], "content-type")
        self.assertEqual(headers["access-control-max-age"], "600")
        self.assertIn("Origin", headers["vary"])
        self.assertNotIn("access-control-allow-credentials", headers, "never credentials for *")

    def test_answers_of_log_carry_cors_headers_errors_too(self):
        for method, path, body in (("POST", "/log", {"type": "a"}), ("GET", "/log?type=b", None),
                                   ("POST", "/log", {"level": "x"}), ("POST", "/log", b"{")):
            with self.subTest(method=method, body=body):
                status, headers, _ = self.call(method, path, body, {"Origin": ORIGIN})
                self.assertIn(status, (200, 400))
                self.assertEqual(headers["access-control-allow-origin"], "*")
                self.assertEqual(headers["vary"], "Origin")
                self.assertEqual(headers["access-control-expose-headers"], "Retry-After")
                self.assertNotIn("access-control-allow-credentials", headers)

    def test_no_cors_headers_without_an_origin(self):
        status, headers, _ = self.call("POST", "/log", {"type": "a"})
        self.assertEqual(status, 200)
        self.assertFalse([h for h in headers if h.startswith("access-control-")], headers)

    def test_plain_options_says_what_log_takes(self):
        status, headers, _ = self.call("OPTIONS", "/log")
        self.assertEqual(status, 204)
        self.assertEqual(headers["allow"], "GET, POST, OPTIONS")
        self.assertEqual(self.status()["sources"]["http"]["cors_refused"], 0)

    def test_refused_preflights(self):
        for headers, reason in (
                ({**PREFLIGHT, "Access-Control-Request-Method": "DELETE"}, "method DELETE is not allowed (GET, POST)"),
                ({**PREFLIGHT, "Access-Control-Request-Headers": "content-type, X-Evil"},
                 "request header x-evil is not allowed (content-type, content-encoding, authorization)"),
                ({"Origin": ORIGIN}, "a preflight must say Access-Control-Request-Method")):
            with self.subTest(reason=reason):
                status, answer_headers, body = self.call_json("OPTIONS", "/log", headers=headers)
                self.assertEqual((status, body), (403, {"ok": False, "error": reason}))
                self.assertNotIn("access-control-allow-origin", answer_headers)
        self.assertEqual(self.status()["sources"]["http"]["cors_refused"], 3)

    def test_events_posted_get_the_request_fields_the_sender_did_not_set(self):
        headers = {"User-Agent": "Mozilla/5.0 (test)", "Referer": "https://shop.example/cart"}
        self.assert_accepted(self.post([{"type": "a"}, {"type": "b", "ip": "192.0.2.7", "user_agent": "mine",
                                                        "referrer": "https://mine.example/"}], headers), 2)
        first, second = self.events()
        self.assertEqual((first["ip"], first["user_agent"], first["referrer"]),
                         ("127.0.0.1", "Mozilla/5.0 (test)", "https://shop.example/cart"))
        self.assertEqual((second["ip"], second["user_agent"], second["referrer"]),
                         ("192.0.2.7", "mine", "https://mine.example/"), "the sender's own fields stay")


class RequestFieldLimitTest(HttpCase):
    event_settings = {"max_string_bytes": 100}

    def test_a_request_field_over_the_limits_refuses_the_batch_naming_the_first_event_it_reached(self):
        body = "\n".join(json.dumps(e) for e in [{"type": "a", "user_agent": "own"}, {"type": "b"}, {"type": "c"}])
        status, _, answer = self.call_json("POST", "/log", body.encode(),
                                           {"Content-Type": "application/x-ndjson", "User-Agent": "u" * 101})
        self.assertEqual((400, {"ok": False, "error": "user_agent: longer than 100 bytes", "index": 1}),
                         (status, answer))
        status, _, answer = self.call_json("POST", "/log", body.encode(),
                                           {"Content-Type": "application/x-ndjson", "User-Agent": "u" * 100})
        self.assertEqual(200, status, answer)
        self.assertEqual(["u" * 100] * 2, [e["user_agent"] for e in self.events()[1:]])


class ListedOriginTest(HttpCase):
    http_settings = {"cors": {"allowed_origins": [ORIGIN + "/", "http://127.0.0.1:8000"], "max_age_s": 60}}

    def test_a_listed_origin_gets_credentials(self):
        status, headers, _ = self.call("OPTIONS", "/log", headers=PREFLIGHT)
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN)
        self.assertEqual(headers["access-control-allow-credentials"], "true")
        self.assertEqual(headers["access-control-max-age"], "60")
        status, headers, _ = self.call("POST", "/log", {"type": "a"}, {"Origin": ORIGIN})
        self.assertEqual(status, 200)
        self.assertEqual((headers["access-control-allow-origin"], headers["access-control-allow-credentials"]),
                         (ORIGIN, "true"))

    def test_another_origin_is_refused_and_counted(self):
        status, headers, body = self.call_json("OPTIONS", "/log", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        self.assertEqual((status, body), (403, {"ok": False, "error": "origin https://evil.example is not allowed "
                                                                       "(http.cors.allowed_origins)"}))
        self.assertNotIn("access-control-allow-origin", headers)
        status, headers, _ = self.call("POST", "/log", {"type": "a"}, {"Origin": "https://evil.example"})
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers, "the browser keeps the answer from that page")
        self.assertEqual(headers["vary"], "Origin")
        self.assertEqual(self.status()["sources"]["http"]["cors_refused"], 1)


class ReloadTest(HttpCase):
    http_settings = {"cors": {"allowed_origins": ["https://old.example"]}, "workers": 1}  # reloaded from inside this process: not with HTTP worker processes

    def test_new_origins_apply_at_once_and_the_count_goes_on(self):
        self.assertEqual(self.call("OPTIONS", "/log", headers=PREFLIGHT)[0], 403)
        new = self.load_cors({"allowed_origins": [ORIGIN], "max_age_s": 5})
        self.server.http.web.reload_cors(new)
        status, headers, _ = self.call("OPTIONS", "/log", headers=PREFLIGHT)
        self.assertEqual((status, headers["access-control-allow-origin"], headers["access-control-max-age"]),
                         (204, ORIGIN, "5"))
        self.assertEqual(self.call("OPTIONS", "/log", headers={**PREFLIGHT, "Origin": "https://old.example"})[0], 403)
        self.assertEqual(self.status()["sources"]["http"]["cors_refused"], 2)

    @staticmethod
    def load_cors(cors):
        return from_dict({"http": {"cors": cors}}).http.cors


class PixelTest(HttpCase):
    http_settings = {"pixel": {"cookie": "zess"}}

    def test_the_pixel_journals_its_event_as_get_log_does(self):
        status, headers, body = self.call("GET", "/pixel.gif?type=view&topic=web&page=/home",
                                          headers={"Referer": "https://shop.example/", "User-Agent": "ua"})
        self.assertEqual((status, body), (200, GIF))
        self.assertEqual(len(GIF), 43)
        self.assertEqual(headers["content-type"], "image/gif")
        self.assertEqual({k: headers[k] for k in NO_CACHE}, NO_CACHE)
        self.assertNotIn("x-zspark-error", headers)
        cookie = headers["set-cookie"]
        self.assertRegex(cookie, r"\Azess=[0-9a-f]{32}; Max-Age=315360000; Path=/; SameSite=Lax; HttpOnly\Z")
        (event,) = self.events()
        self.assertEqual((event["type"], event["topic"], event["context"]), ("view", "web", {"page": "/home"}))
        self.assertEqual((event["referrer"], event["user_agent"], event["ip"]), ("https://shop.example/", "ua", "127.0.0.1"))
        self.assertEqual(event["cookies"], {"zess": cookie.split(";")[0].split("=")[1]})

    def test_a_returning_visitor_keeps_its_id_and_a_bad_one_is_replaced(self):
        _, headers, _ = self.call("GET", "/pixel.gif?type=a", headers={"Cookie": "zess=abc-123_X; other=1"})
        self.assertTrue(headers["set-cookie"].startswith("zess=abc-123_X; "))
        _, headers, _ = self.call("GET", "/pixel.gif?type=b", headers={"Cookie": "zess=a,b"})
        new = headers["set-cookie"].split(";")[0].split("=")[1]
        self.assertRegex(new, r"\A[0-9a-f]{32}\Z")
        first, second = self.events()
        self.assertEqual(first["cookies"], {"zess": "abc-123_X", "other": "1"})
        self.assertEqual(second["cookies"], {"zess": new})

    def test_a_refused_event_still_gets_the_gif_with_the_reason(self):
        status, headers, body = self.call("GET", "/pixel.gif?type=x&ip=caf%C3%A9%0A")
        self.assertEqual((status, body, headers["content-type"]), (400, GIF, "image/gif"))
        self.assertEqual({k: headers[k] for k in NO_CACHE}, NO_CACHE)
        self.assertEqual(headers["x-zspark-error"], "ip: not an IP address: 'caf\\xe9\\n'")
        self.assertIn("set-cookie", headers)
        status, headers, body = self.call("GET", "/pixel.gif?type=%FF")
        self.assertEqual((status, body, headers["x-zspark-error"]), (400, GIF, "the query string is not valid UTF-8"))
        self.assertEqual(self.events(), [])
        self.assertEqual(self.http_counts(), (0, 2))

    def test_methods(self):
        status, headers, _ = self.call_json("POST", "/pixel.gif", b"{}")
        self.assertEqual((status, headers["allow"]), (405, "GET"))


class PixelOnAFullJournalTest(HttpCase):
    journal_settings = {"max_bytes": 1500}
    http_settings = {"retry_after_s": 7}

    def test_503_is_a_gif_too(self):
        for i in range(100):
            status, headers, body = self.call("GET", f"/pixel.gif?type=fill&i={i}")
            if status != 200:
                break
        else:
            self.fail("the journal never filled up")
        self.assertEqual((status, body, headers["content-type"]), (503, GIF, "image/gif"))
        self.assertTrue(headers["x-zspark-error"].startswith("the journal is full"), headers)
        self.assertEqual(headers["retry-after"], "7")
        self.assertEqual(len(self.events()), i)
        self.assertEqual(self.status()["sources"]["http"]["refused"], 1)


class PixelWithTokensTest(HttpCase):
    http_settings = {"tokens": ["secret"], "pixel": {"path": "/t/p.gif", "cookie": "v", "cookie_same_site": "None",
                                                     "cookie_secure": True, "cookie_max_age_days": 1}}

    def test_401_is_a_gif_too(self):
        status, headers, body = self.call("GET", "/t/p.gif?type=a")
        self.assertEqual((status, body), (401, GIF))
        self.assertEqual(headers["x-zspark-error"], "a valid bearer token is required (Authorization: Bearer TOKEN)")
        self.assertRegex(headers["set-cookie"], r"\Av=[0-9a-f]{32}; Max-Age=86400; Path=/; SameSite=None; HttpOnly; Secure\Z")
        self.assertEqual(self.call("GET", "/pixel.gif?type=a")[0], 404)

    def test_a_preflight_needs_no_token_and_lets_the_page_send_one(self):
        # Browsers never send credentials with a preflight; the POST after it needs the token.
        status, headers, _ = self.call("OPTIONS", "/log", headers={
            **PREFLIGHT, "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual((status, headers["access-control-allow-headers"]), (204, "authorization, content-type"))
        self.assertEqual(self.call("POST", "/log", {"type": "a"}, {"Origin": ORIGIN})[0], 401)
        status, headers, _ = self.call("POST", "/log", {"type": "a"}, {"Origin": ORIGIN, "Authorization": "Bearer secret"})
        self.assertEqual((status, headers["access-control-allow-origin"]), (200, "*"))


class SnippetTest(HttpCase):
    http_settings = {"root": "/sp", "pixel": {"path": "/px.gif"}}

    def test_served_small_with_its_type_and_cache_headers(self):
        status, headers, body = self.call("GET", "/sp/zspark.js")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/javascript; charset=utf-8")
        self.assertEqual(headers["cache-control"], "public, max-age=3600")
        self.assertLess(len(body), 1100)
        self.assertIn(b'base + "/px.gif"', body)
        self.assertIn(b"sendBeacon", body)
        status, headers, head_body = self.call("HEAD", "/sp/zspark.js")
        self.assertEqual((status, head_body, headers["content-length"]), (200, b"", str(len(body))))
        self.assertEqual(self.call("GET", "/sp/px.gif?type=a")[0], 200)


class NoSnippetNoRequestFieldsTest(HttpCase):
    http_settings = {"snippet": False, "post_request_fields": False}

    def test_off(self):
        self.assertEqual(self.call("GET", "/zspark.js")[0], 404)
        self.assert_accepted(self.post({"type": "a"}, {"User-Agent": "ua"}), 1)
        (event,) = self.events()
        self.assertEqual(set(event) & {"ip", "user_agent", "referrer"}, set())


class ConfigTest(unittest.TestCase):
    def load_http(self, http):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        return load(write_config(tmp.path, config_data(tmp.path, http=http)))

    def test_defaults(self):
        http = self.load_http({}).http
        self.assertEqual((http.cors.allowed_origins, http.cors.max_age_s), (["*"], 600))
        self.assertEqual((http.pixel.path, http.pixel.cookie, http.pixel.cookie_max_age_days,
                          http.pixel.cookie_same_site, http.pixel.cookie_secure), ("/pixel.gif", "", 3650, "Lax", False))
        self.assertEqual((http.snippet, http.post_request_fields), (True, True))

    def test_origins_are_kept_as_browsers_send_them(self):
        self.assertEqual(self.load_http({"cors": {"allowed_origins": ["HTTPS://Shop.Example/", "*"]}}).http.cors.allowed_origins,
                         ["https://shop.example", "*"])

    def test_errors_name_the_key(self):
        for http, message in (
                ({"cors": {"allowed_origins": ["https://shop.example/cart"]}},
                 "key 'http.cors.allowed_origins[0]': expected \"*\" or an origin such as https://shop.example"),
                ({"cors": {"allowed_origins": "*"}}, "key 'http.cors.allowed_origins': expected a list"),
                ({"cors": {"max_age_s": -1}}, "key 'http.cors.max_age_s': expected a non-negative integer"),
                ({"pixel": {"path": "/status"}}, "key 'http.pixel.path': /status is zspark's own route"),
                ({"pixel": {"path": "/zspark.js"}}, "key 'http.pixel.path': /zspark.js is zspark's own route"),
                ({"pixel": {"path": "pixel.gif"}}, "key 'http.pixel.path': expected a URL path such as /pixel.gif"),
                ({"pixel": {"path": "/p.gif?x=1"}}, "key 'http.pixel.path': expected a URL path"),
                ({"pixel": {"cookie": "a b"}}, "key 'http.pixel.cookie': not a cookie name"),
                ({"pixel": {"cookie_max_age_days": 0}}, "key 'http.pixel.cookie_max_age_days': must be more than 0"),
                ({"pixel": {"cookie_same_site": "lax"}}, "key 'http.pixel.cookie_same_site': expected one of Lax, Strict, None"),
                ({"pixel": {"cookie_same_site": "None"}}, "key 'http.pixel.cookie_same_site': None needs "
                                                          "http.pixel.cookie_secure: true"),
                ({"snippet": "yes"}, "key 'http.snippet': expected true or false"),
                ({"post_request_fields": 1}, "key 'http.post_request_fields': expected true or false")):
            with self.subTest(http=http):
                with self.assertRaises(ConfigError) as caught:
                    self.load_http(http)
                self.assertIn(message, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
