"""The HTTP source's router (zspark/sources/httproutes.py), seen from a client: exact paths, 404,
405 with `Allow` per route, HEAD only where a route serves it (the GET answer's head, no body),
and a handler that fails answered with one logged JSON 500 that shows the client no traceback."""
import json
import socket
import unittest
from unittest import mock

from tests.support import TempDir, config_data, request
from zspark.config import from_dict
from zspark.server import Server

JSON = {"Content-Type": "application/json"}
ALLOWED = {"/log": {"GET", "POST", "OPTIONS"}, "/imok": {"GET", "HEAD"}, "/status": {"GET", "HEAD"},
           "/metrics": {"GET", "HEAD"}, "/tail": {"GET"}, "/pixel.gif": {"GET"}, "/zspark.js": {"GET", "HEAD"}}


class RouterCase(unittest.TestCase):
    http_settings = {}

    def setUp(self):
        tmp = TempDir()
        self.addCleanup(tmp.remove)
        data = config_data(tmp.path, http={"port": 0, **self.http_settings}, zmq={"bson_bind": "", "json_bind": ""})
        self.server = Server(from_dict(data))
        self.server.start()
        self.addCleanup(self.server.shutdown)
        self.port = self.server.http.address[1]

    def call(self, method, path, body=None, headers=None):
        return request(self.port, method, path, body, headers, timeout=3)  # a stream (/tail) is a failure

    def assert_json_error(self, answer, status, error):
        got, headers, raw = answer
        self.assertEqual(got, status, raw)
        self.assertEqual(headers.get("content-type"), "application/json", raw)
        self.assertEqual(json.loads(raw), {"ok": False, "error": error})
        return headers


class NotFoundTest(RouterCase):
    def test_a_path_not_served_is_404_for_every_method(self):
        for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "FOO"):
            for path in ("/nope", "/", "/logs", "/status/x", "/tail/"):
                with self.subTest(method=method, path=path):
                    body = b'{"type":"x"}' if method in ("POST", "PUT") else None
                    self.assert_json_error(self.call(method, path, body, JSON if body else None), 404, "not found")

    def test_paths_match_exactly(self):
        # No folding of case, slashes, encodings or parameters: each of these is another path.
        for path in ("/log/", "//log", "/LOG", "/Log", "/log%ff", "/log%00", "/log;x", "/imok/",
                     "//imok", "/IMOK", "/status/", "/./status", "/log/../status"):
            with self.subTest(path=path):
                self.assert_json_error(self.call("GET", path), 404, "not found")
        self.assertEqual(self.server.status()["journal"]["end_offset"], 0)


class MethodNotAllowedTest(RouterCase):
    def test_405_names_the_methods_of_each_route_in_allow(self):
        for path, allowed in ALLOWED.items():
            for method in ({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"} - allowed):
                if method == "HEAD":
                    continue  # no body to compare: HeadTest
                with self.subTest(path=path, method=method):
                    headers = self.assert_json_error(self.call(method, path), 405, "method not allowed")
                    self.assertEqual({m.strip() for m in headers["allow"].split(",")}, allowed)


class HeadTest(RouterCase):
    def head_then_imok(self, path):
        """HEAD `path` and then GET /imok on one connection, pipelined: (status, headers) of the
        HEAD answer and every byte after its head, which must be the whole /imok answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
                         "GET /imok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nimok"),
                        f"HEAD {path} was answered with a body: {rest[:80]!r}")
        return int(lines[0].split()[1]), headers

    def test_head_answers_the_get_head_without_its_body_where_a_route_serves_it(self):
        for path in ("/imok", "/status", "/metrics"):
            with self.subTest(path=path):
                _, get_headers, body = self.call("GET", path)
                status, headers = self.head_then_imok(path)
                self.assertEqual(status, 200)
                self.assertEqual(headers["content-type"], get_headers["content-type"])
                if path == "/imok":
                    self.assertEqual(headers["content-length"], str(len(body)))
                else:  # the state moves between the two requests: a length of its kind
                    self.assertGreater(int(headers["content-length"]), 0)

    def test_head_elsewhere_is_refused_or_not_found_without_a_body(self):
        # As any method a route does not serve (/log: a probe must not log an event), or not found.
        for path, status in (("/log?type=probe", 405), ("/tail", 405), ("/nope", 404)):
            with self.subTest(path=path):
                got, headers = self.head_then_imok(path)
                self.assertEqual(got, status)
                self.assertEqual(headers["content-type"], "application/json")
                self.assertGreater(int(headers["content-length"]), 0)
                if status == 405:
                    self.assertEqual({m.strip() for m in headers["allow"].split(",")}, ALLOWED[path.split("?")[0]])
        self.assertEqual(self.server.status()["journal"]["end_offset"], 0)


class HandlerBugTest(RouterCase):
    http_settings = {"workers": 1}  # patched from inside this process: not with HTTP worker processes

    def assert_internal_error(self, answer, method, path, logs):
        _, _, raw = answer
        self.assert_json_error(answer, 500, "internal error")
        for secret in (b"Traceback", b"ZeroDivisionError", b"handler bug"):
            self.assertNotIn(secret, raw)
        failed = [r for r in logs.records if r.getMessage() == f"HTTP handler failed on {method} {path}"]
        self.assertEqual(len(failed), 1, [r.getMessage() for r in logs.records])
        self.assertEqual(failed[0].levelname, "ERROR")
        self.assertIs(failed[0].exc_info[0], ZeroDivisionError)  # the traceback goes to the log

    def test_a_failing_handler_is_a_logged_500_in_json(self):
        bug = ZeroDivisionError("handler bug")
        with mock.patch.object(self.server.ingest, "normalize_all", side_effect=bug), \
                self.assertLogs("zspark.http", "ERROR") as logs:
            answer = self.call("POST", "/log", {"type": "x"})
        self.assert_internal_error(answer, "POST", "/log", logs)
        with mock.patch.object(self.server.http.endpoint.events, "from_query", side_effect=bug), \
                self.assertLogs("zspark.http", "ERROR") as logs:
            answer = self.call("GET", "/log?type=x")
        self.assert_internal_error(answer, "GET", "/log", logs)
        with mock.patch.object(self.server.http.admin, "status_provider", side_effect=bug), \
                self.assertLogs("zspark.http", "ERROR") as logs:
            answer = self.call("GET", "/status")
        self.assert_internal_error(answer, "GET", "/status", logs)
        # Served as before once the bug is gone; nothing of the failed requests was journaled.
        self.assertEqual(self.call("POST", "/log", {"type": "after"})[0], 200)
        self.assertEqual(self.server.status()["journal"]["end_offset"], 1)


class RootTest(RouterCase):
    http_settings = {"root": "/sparkngin"}

    def test_routes_and_their_405s_live_under_the_root_only(self):
        for path, allowed in ALLOWED.items():
            with self.subTest(path=path):
                headers = self.assert_json_error(self.call("PUT", "/sparkngin" + path), 405, "method not allowed")
                self.assertEqual({m.strip() for m in headers["allow"].split(",")}, allowed)
                self.assert_json_error(self.call("PUT", path), 404, "not found")
                self.assert_json_error(self.call("GET", "/sparkngin/" + path), 404, "not found")


if __name__ == "__main__":
    unittest.main()
