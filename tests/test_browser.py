"""Web pages sending to zspark, in a real headless Chromium (tests/browser.py): a page served from
another origin than zspark's (another port) uses the pixel, fetch with JSON (a CORS preflight)
and with text/plain, sendBeacon with a string and with a JSON Blob, and the /zspark.js snippet.

Each test asserts what the page saw (onload, the answer fetch could read, what sendBeacon and
the snippet returned) and what arrived in the journal; some follow the events into Kafka and
MongoDB (`zcmd serve` forwarding to the broker and database this module starts).
"""
import json
import re
import time
import unittest

from .appliance import ApplianceCase, Services
from .browser import Browser, PageServer
from .support import journal_events, request, wait_until

SERVICES = Services()
setUpModule, tearDownModule = SERVICES.start, SERVICES.stop

CHROMIUM_MAX_COOKIE_S = 400 * 86400


class BrowserCase(ApplianceCase):
    services = SERVICES

    @classmethod
    def setUpClass(cls):
        cls.browser = Browser()
        cls.pages = PageServer()

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.pages.close()

    def setUp(self):
        super().setUp()
        self.browser.clear_cookies()

    def start(self, **http):
        """`zcmd serve` with these `http` settings, forwarding to Kafka and MongoDB."""
        self.configure(kafka={}, mongo={}, http=http)
        self.serve()
        self.zspark = f"http://127.0.0.1:{self.port}"

    def open_page(self, body=""):
        """Load a page of the other origin holding `body`; returns its URL."""
        url = self.pages.add(f"/page-{self.uid}.html", f"<!doctype html><title>Shop {self.uid}</title>{body}")
        self.browser.open(url)
        return url

    def events(self, count):
        """The journal's events once it holds `count` (and no more after a moment)."""
        wait_until(lambda: len(journal_events(self.journal_dir)) >= count, message=f"{count} events in the journal")
        time.sleep(0.3)  # anything more would be a duplicate
        events = journal_events(self.journal_dir)
        self.assertEqual(len(events), count, events)
        return events

    def assert_from_the_browser(self, event, referrer):
        self.assertEqual(event["source"], "http")
        self.assertEqual(event["ip"], "127.0.0.1")
        self.assertIn("HeadlessChrome/", event["user_agent"])
        self.assertEqual(event["referrer"], referrer)

    def assert_forwarded(self, events):
        """Each of `events` (from the journal) arrived in Kafka and in MongoDB, as it is there."""
        ids = [str(e["_id"]) for e in events]
        self.wait_delivered(["kafka", "mongo"])
        messages = self.read_kafka([self.topic], ids)
        self.assert_each_once(messages, ids, "Kafka")
        by_id = {m.json()["_id"]: m.json() for m in messages}
        docs = {str(d["_id"]): d for d in self.collection().find({"_id": {"$in": [e["_id"] for e in events]}})}
        self.assertEqual(sorted(docs), sorted(ids), "MongoDB holds each event")
        for event in events:
            key = str(event["_id"])
            for field in ("type", "topic", "ip", "user_agent", "referrer", "context", "cookies"):
                self.assertEqual(by_id[key].get(field), event.get(field), f"Kafka: {field}")
                self.assertEqual(docs[key].get(field), event.get(field), f"MongoDB: {field}")

    def status_http(self):
        return self.status()["sources"]["http"]


class PixelTest(BrowserCase):
    def test_pixel_loads_sets_the_visitor_cookie_and_its_events_reach_kafka_and_mongodb(self):
        self.start(pixel={"cookie": "zess"})
        page = self.open_page()
        load = """var img = new Image();
                  img.onload = function () { done({loaded: true, width: img.naturalWidth, height: img.naturalHeight}); };
                  img.onerror = function () { done({loaded: false}); };
                  img.src = args[0];"""
        src = f"{self.zspark}/pixel.gif?type=page_view&topic={self.topic}&page=/home&n=1"
        self.assertEqual(self.browser.run(load, src), {"loaded": True, "width": 1, "height": 1})
        (cookie,) = [c for c in self.browser.cookies() if c["name"] == "zess"]
        self.assertRegex(cookie["value"], r"\A[0-9a-f]{32}\Z")
        self.assertEqual((cookie["domain"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]),
                         ("127.0.0.1", "/", True, "Lax"))
        # Asked for 10 years (Zarkov's), kept by Chromium for its longest, 400 days from the last visit.
        self.assertAlmostEqual(cookie["expires"], time.time() + CHROMIUM_MAX_COOKIE_S, delta=3600)
        # A second visit keeps the visitor's id.
        self.assertEqual(self.browser.run(load, src.replace("n=1", "n=2"))["loaded"], True)

        first, second = self.events(2)
        for event, n in ((first, "1"), (second, "2")):
            self.assertEqual((event["type"], event["topic"]), ("page_view", self.topic))
            self.assertEqual(event["context"], {"page": "/home", "n": n})
            self.assertEqual(event["cookies"], {"zess": cookie["value"]})
            # An image from another origin is sent with the page's origin only as its Referer.
            self.assert_from_the_browser(event, self.pages.origin + "/")
        self.assertTrue(page.startswith(self.pages.origin))
        self.assert_forwarded([first, second])

    def test_a_refused_pixel_still_loads_and_is_counted(self):
        self.start()
        self.open_page()
        seen = self.browser.run("""var img = new Image();
            img.onload = function () { done("load " + img.naturalWidth); };
            img.onerror = function () { done("error"); };
            img.src = args[0];""", f"{self.zspark}/pixel.gif?level=info")  # no type
        self.assertEqual(seen, "load 1", "the page must see the pixel load, whatever became of its event")
        wait_until(lambda: self.status_http()["rejected"] == 1, message="the refused pixel counted")
        self.assertEqual(self.status_http()["last_rejection"], "type: required, a non-empty string")
        self.assertEqual(journal_events(self.journal_dir), [])


class FetchTest(BrowserCase):
    FETCH = """fetch(args[0], args[1]).then(function (r) {
                   return r.text().then(function (t) { done({status: r.status, body: JSON.parse(t)}); });
               }).catch(function (e) { done({error: String(e)}); });"""

    def test_fetch_post_json_is_preflighted_and_the_page_reads_the_answer(self):
        self.start()
        page = self.open_page()
        batch = [{"type": "add_to_cart", "topic": self.topic, "context": {"sku": "A1"}},
                 {"type": "checkout", "topic": self.topic, "context": {"total": 9.5}}]
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps(batch)})
        self.assertEqual(seen["status"], 200, seen)
        self.assertEqual(seen["body"]["ok"], True)
        events = self.events(2)
        self.assertEqual(seen["body"]["ids"], [str(e["_id"]) for e in events])
        self.assertEqual([(e["type"], e["context"]) for e in events],
                         [("add_to_cart", {"sku": "A1"}), ("checkout", {"total": 9.5})])
        for event in events:  # POSTed events get what the request says of its sender
            self.assert_from_the_browser(event, self.pages.origin + "/")
        self.assertTrue(page.startswith(self.pages.origin))
        self.assert_forwarded(events)

    def test_fetch_post_text_plain_needs_no_preflight_and_the_page_reads_the_answer(self):
        self.start()
        self.open_page()
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "body": json.dumps({"type": "plain", "context": {"a": 1}})})
        self.assertEqual(seen["status"], 200, seen)
        (event,) = self.events(1)
        self.assertEqual(seen["body"], {"ok": True, "ids": [str(event["_id"])]})
        self.assertEqual((event["type"], event["context"]), ("plain", {"a": 1}))

    def test_the_page_reads_a_refusal_too(self):
        self.start()
        self.open_page()
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps({"level": "info"})})
        self.assertEqual(seen, {"status": 400, "body": {"ok": False, "index": 0,
                                                        "error": "type: required, a non-empty string"}})
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log", {"method": "POST", "body": "{"})
        self.assertEqual(seen["status"], 400, seen)
        self.assertTrue(seen["body"]["error"].startswith("the body is not valid JSON"), seen)

    def test_a_refused_origin_is_counted_and_nothing_is_journaled(self):
        self.start(cors={"allowed_origins": ["https://shop.example"]})
        self.open_page()
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps({"type": "nope"})})
        self.assertEqual(seen, {"error": "TypeError: Failed to fetch"})
        wait_until(lambda: self.status_http()["cors_refused"] == 1, message="the refused preflight counted")
        _, _, metrics = request(self.port, "GET", "/metrics")
        self.assertIn(b'zspark_http_cors_refused_total{source="http"} 1.0', metrics)
        self.assertEqual(journal_events(self.journal_dir), [])
        self.assertRegex(self.serve_log(), rf"WARNING zspark.http: HTTP 127.0.0.1: CORS preflight refused: origin "
                                           rf"{re.escape(self.pages.origin)} is not allowed")

    def test_credentials_only_for_a_listed_origin(self):
        self.start(cors={"allowed_origins": [self.pages.origin]})
        self.open_page()
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "credentials": "include",
                                 "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps({"type": "with_cookies"})})
        self.assertEqual(seen["status"], 200, seen)
        self.assertEqual(len(self.events(1)), 1)

    def test_no_credentials_for_any_origin(self):
        self.start()  # allowed_origins: ["*"]
        self.open_page()
        seen = self.browser.run(self.FETCH, f"{self.zspark}/log",
                                {"method": "POST", "credentials": "include",
                                 "headers": {"Content-Type": "application/json"},
                                 "body": json.dumps({"type": "with_cookies"})})
        self.assertEqual(seen, {"error": "TypeError: Failed to fetch"})
        self.assertEqual(journal_events(self.journal_dir), [], "the preflight let nothing through")

    def serve_log(self):
        with open(self.tmp.join("serve.log")) as f:
            return f.read()


class BeaconTest(BrowserCase):
    def test_send_beacon_with_a_string_and_with_a_json_blob(self):
        # A beacon always sends cookies: a JSON Blob's preflight needs credentials, which only a
        # listed origin gets (with "*" only string beacons, the snippet's, arrive).
        self.start(cors={"allowed_origins": [self.pages.origin]})
        self.open_page()
        queued = self.browser.run("""done([
            navigator.sendBeacon(args[0], JSON.stringify({type: "beacon_text", topic: args[1]})),
            navigator.sendBeacon(args[0], new Blob([JSON.stringify({type: "beacon_blob", topic: args[1]})],
                                                   {type: "application/json"}))]);""",
                                  f"{self.zspark}/log", self.topic)
        self.assertEqual(queued, [True, True])
        events = sorted(self.events(2), key=lambda e: e["type"])
        self.assertEqual([e["type"] for e in events], ["beacon_blob", "beacon_text"])
        for event in events:
            self.assert_from_the_browser(event, self.pages.origin + "/")
        self.assert_forwarded(events)


class SnippetTest(BrowserCase):
    def page_with_snippet(self, before=""):
        return self.open_page(f"{before}<script src='{self.zspark}/zspark.js'></script>")

    def test_page_view_and_event(self):
        self.start()
        page = self.page_with_snippet()
        ways = self.browser.run("""done([zspark.pageView(), zspark.pageView({section: "news"}),
                                         zspark.event("signup", {topic: args[0], context: {plan: "pro", seats: 3}})]);""",
                                self.topic)
        self.assertEqual(ways, ["beacon", "beacon", "beacon"])
        events = self.events(3)
        by_type = {}
        for event in events:
            by_type.setdefault(event["type"], []).append(event)
            self.assert_from_the_browser(event, self.pages.origin + "/")
        views = sorted(by_type["page_view"], key=lambda e: len(e["context"]))
        self.assertEqual([v["context"] for v in views],
                         [{"url": page, "title": f"Shop {self.uid}", "referrer": ""},
                          {"url": page, "title": f"Shop {self.uid}", "referrer": "", "section": "news"}])
        (signup,) = by_type["signup"]
        self.assertEqual((signup["topic"], signup["context"]), (self.topic, {"plan": "pro", "seats": 3}))
        status, headers, script = request(self.port, "GET", "/zspark.js")
        self.assertEqual((status, headers["content-type"], headers["cache-control"]),
                         (200, "application/javascript; charset=utf-8", "public, max-age=3600"))
        self.assertLess(len(script), 1100, "a snippet of about 1 KB")

    def test_without_send_beacon_it_fetches(self):
        self.start()
        self.page_with_snippet("<script>navigator.sendBeacon = undefined;</script>")
        self.assertEqual(self.browser.run("done(zspark.event('fetched', {context: {a: 1}}));"), "fetch")
        (event,) = self.events(1)
        self.assertEqual((event["type"], event["context"]), ("fetched", {"a": 1}))

    def test_without_send_beacon_and_fetch_it_loads_the_pixel(self):
        self.start(pixel={"path": "/p.gif"})
        page = self.page_with_snippet("<script>navigator.sendBeacon = undefined; window.fetch = undefined;</script>")
        self.assertEqual(self.browser.run("done(zspark.pageView({n: 2}));"), "pixel")
        (event,) = self.events(1)
        self.assertEqual(event["type"], "page_view")
        self.assertEqual(event["context"], {"url": page, "title": f"Shop {self.uid}", "referrer": "", "n": "2"})


if __name__ == "__main__":
    unittest.main()
