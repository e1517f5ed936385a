"""The HTTP source under hostile requests, sent over raw sockets so that anything goes: any method,
path, header, body, Content-Encoding and framing (Content-Length right, wrong or missing,
chunked or garbled chunks, truncated gzip, deep nesting, huge numbers, invalid UTF-8).

For every request: the connection answers, or closes, and never hangs; no answer is a 5xx; every
4xx is JSON with the reason; a 200 means the events are in the journal, as sent; /status counts
the rejection (README's rule: each event of a batch refused for one bad item, the answers with an
`index`, counts; any other refused request counts one; 401, 404 and 405 are not rejections of
events); and the server then still takes a good event.
"""
import gzip
import json
import socket
import urllib.parse
import zlib

from bson import ObjectId
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.hostile.strategies import json_body, json_values, raw_events, text
from tests.test_http import HttpCase

LIMIT = 20000  # http.max_body_bytes for these tests: bodies near it are cheap to make
NOT_REJECTIONS = (401, 404, 405)  # refusals that are not about the events sent
NDJSON = b"application/x-ndjson"
TOKEN = b"s3cret"  # the bearer token of the server that wants one
BAD_BATCH = b'[{"type":null}]'

# -- requests -------------------------------------------------------------------------------------

methods = st.sampled_from([b"GET", b"POST", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                           b"CONNECT", b"TRACE", b"post", b"G ET", b""]) | st.binary(min_size=1, max_size=8)
versions = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x", b"", b"http/1.1"])


def _quote(value):
    return urllib.parse.quote(value, safe="", errors="surrogatepass").encode()


query_pairs = st.lists(st.tuples(st.sampled_from(["type", "level", "topic", "env", "ver", "version", "stimestamp",
                                                  "ip", "$where", "a\x00b", ""]) | text, text), max_size=5)
targets = (st.just(b"/log") | st.just(b"/log")
           | query_pairs.map(lambda pairs: b"/log?" + b"&".join(_quote(k) + b"=" + _quote(v) for k, v in pairs))
           | st.sampled_from([b"/log?type=%ff", b"/log?type=x&%", b"/log?type=" + b"y" * 9000, b"/status", b"/imok",
                              b"/metrics", b"/", b"/log/", b"//log", b"/log%00", b"*", b"http://h/log",
                              b"/" + b"a" * 3000])
           | st.binary(max_size=30))

content_types = st.sampled_from([b"application/json", b"application/json; charset=utf-8", NDJSON,
                                 b"application/x-www-form-urlencoded", b"text/plain", b"", b"\xff\xfe"])
encodings = st.sampled_from([b"gzip", b"x-gzip", b" GZIP ", b"identity", b"", b"br", b"deflate", b"gzip, gzip",
                             b"\xc3("])
other_headers = st.lists(st.sampled_from([
    (b"User-Agent", b"caf\xc3\xa9"), (b"User-Agent", b"\xff\xfe"), (b"Referer", b"\x80"),
    (b"Cookie", b"a=b; \xff=\xfe; c"),
    (b"Cookie", b"=;;=;" * 50), (b"X-Forwarded-For", b"1.2.3.4, ::1, nonsense"), (b"Authorization", b"Bearer x"),
    (b"Expect", b"100-continue"), (b"Connection", b"close"), (b"Connection", b"keep-alive, Upgrade"),
    (b"Upgrade", b"websocket"), (b"Host", b""), (b"X-Long", b"v" * 10000), (b"Bad Name", b"x"), (b"", b"empty name"),
    (b"X-Folded", b"a\r\n continued"), (b"X-Nul", b"a\x00b")])
    | st.tuples(st.binary(max_size=12), st.binary(max_size=40)),
    max_size=4)


@st.composite
def bodies(draw):
    """(plain body, content type): the bytes before any Content-Encoding."""
    kind = draw(st.sampled_from(["events", "events", "events", "bytes", "utf8", "deep", "number", "size"]))
    ctype = draw(st.sampled_from([b"application/json", NDJSON]) | content_types)
    if kind == "bytes":
        return draw(st.binary(max_size=300)), ctype
    if kind == "deep":
        depth = draw(st.sampled_from([31, 32, 33, 1000, 100000]))
        if draw(st.booleans()):
            return b"[" * depth + b"]" * depth, ctype
        return b'{"type":"deep","context":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}", ctype
    if kind == "number":
        digits = draw(st.sampled_from([b"9" * 19, b"9" * 20, b"-" + b"9" * 19, b"9" * 400, b"9" * 5000, b"1e400",
                                       b"-1e400", b"1E308", b"0.1e-400", b"-0", b"NaN", b"Infinity", b"0x10", b"01"]))
        field = draw(st.sampled_from([b"context", b"extra", b"stimestamp", b"timestamp"]))
        value = b'{"n":' + digits + b"}" if field == b"context" else digits
        return b'{"type":"n","' + field + b'":' + value + b"}", ctype
    if kind == "size":  # an event padded to around the body limit
        size = LIMIT + draw(st.integers(-3, 3))
        head = b'{"type":"big","context":{"pad":"'
        return head + b"p" * (size - len(head) - 3) + b'"}}', ctype
    events = draw(st.lists(raw_events(json_values), min_size=0, max_size=4))
    if ctype == NDJSON:
        body = b"\n".join(json_body(e) for e in events)
    elif len(events) == 1 and draw(st.booleans()):
        body = json_body(events[0])
    else:
        body = json_body(events)
    if kind == "utf8" and body:
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
        body = body[:at] + bad + body[at:]
    return body, ctype


@st.composite
def damaged_encoding(draw, plain):
    """(Content-Encoding header, the body bytes as sent): gzip gone wrong, or not gzip at all."""
    how = draw(st.sampled_from(["truncated", "damaged", "members", "not-gzip", "other"]))
    zipped = gzip.compress(plain)
    if how == "truncated":
        return b"gzip", zipped[:draw(st.integers(0, len(zipped) - 1))]
    if how == "damaged":
        at = draw(st.integers(0, len(zipped) - 1))
        return b"gzip", zipped[:at] + bytes([zipped[at] ^ draw(st.integers(1, 255))]) + zipped[at + 1:]
    if how == "members":
        return b"gzip", zipped + gzip.compress(b"\n") + draw(st.sampled_from([b"", b"junk", zlib.compress(b"x")]))
    if how == "not-gzip":
        return b"gzip", plain
    return draw(encodings), draw(st.sampled_from([plain, zipped]))


@st.composite
def framed(draw, body, hostile):
    """(framing headers, the body as sent, the body the server can read, framing name)."""
    framing = draw(st.sampled_from(["none", "short", "long", "bad-length", "two-lengths", "chunked", "chunk-extensions",
                                    "bad-chunks", "truncated-chunks"])) if hostile else "length"
    if framing == "length":
        return [(b"Content-Length", str(len(body)).encode())], body, body, framing
    if framing == "none":
        return [], body, body, framing
    if framing == "short":
        cut = draw(st.integers(0, max(0, len(body) - 1)))
        return [(b"Content-Length", str(cut).encode())], body, body[:cut], framing
    if framing == "long":
        return [(b"Content-Length", str(len(body) + draw(st.integers(1, 1000))).encode())], body, body, framing
    if framing == "bad-length":
        value = draw(st.sampled_from([b"-1", b"abc", b" 5", b"1e3", b"0x10", b"99999999999999999999", b"", b"5, 5"]))
        return [(b"Content-Length", value)], body, body, framing
    if framing == "two-lengths":
        return [(b"Content-Length", str(len(body)).encode()), (b"Content-Length", b"1")], body, body, framing
    size = draw(st.integers(1, 64))
    extension = b";ext=1" if framing == "chunk-extensions" else b""
    chunks = b"".join(b"%x%s\r\n%s\r\n" % (len(body[i:i + size]), extension, body[i:i + size])
                      for i in range(0, len(body), size))
    headers = [(b"Transfer-Encoding", b"chunked")]
    if framing in ("chunked", "chunk-extensions"):
        return headers, chunks + b"0\r\n\r\n", body, framing
    if framing == "bad-chunks":  # what the server can read of it is not defined: None
        bad = draw(st.sampled_from([b"zz\r\n", b"-1\r\n", b"5\r\nabc\r\n", b"ffffffffffffffffff\r\n"]))
        return headers, bad + chunks + b"0\r\n\r\n", None, framing
    return headers, chunks[:draw(st.integers(0, len(chunks)))], None, framing


MUTATIONS = ("method", "target", "version", "encoding", "framing", "headers")


@st.composite
def requests(draw):
    """A request as bytes on the wire, and what the test needs to judge the answer: a POST or GET
    of /log, right in all but the parts chosen to be hostile (none, some or all of them)."""
    hostile = draw(st.sets(st.sampled_from(MUTATIONS), max_size=len(MUTATIONS)))
    post = draw(st.booleans()) or draw(st.booleans())
    method = draw(methods) if "method" in hostile else b"POST" if post else b"GET"
    target = draw(targets) if "target" in hostile else b"/log" if post else draw(
        query_pairs.map(lambda pairs: b"/log?type=q&" + b"&".join(_quote(k) + b"=" + _quote(v) for k, v in pairs)))
    version = draw(versions) if "version" in hostile else b"HTTP/1.1"
    plain, ctype = draw(bodies()) if post or "framing" in hostile else (b"", b"")
    if "encoding" in hostile:
        encoding, body = draw(damaged_encoding(plain))
    elif post and draw(st.booleans()):
        encoding, body = draw(st.sampled_from([b"gzip", b"x-gzip", b"GZip"])), gzip.compress(plain)
    else:
        encoding, body = None, plain
    headers = [(b"Host", b"zspark")]
    authorization = draw(st.sampled_from([b"Bearer " + TOKEN, None, b"Bearer wrong", b"bearer  " + TOKEN + b" ",
                                          b"Basic " + TOKEN, b"Bearer", b"Bearer " + TOKEN + b"\xff"]))
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    if ctype:
        headers.append((b"Content-Type", ctype))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    framing_headers, body, received, framing = draw(framed(body, "framing" in hostile))
    headers += framing_headers
    if "headers" in hostile:
        headers += draw(other_headers)
        if draw(st.booleans()):
            headers = draw(st.permutations(headers))
    head = method + b" " + target + (b" " + version if version else b"") + b"\r\n"
    lines = [name + b": " + value for name, value in headers]
    head += b"".join(line + b"\r\n" for line in lines)
    # One request on the wire, unless a line break inside a header (not a folded line) or the
    # framing (or a version that is not HTTP/1.x) leaves bytes to be read as another.
    single = (framing == "length" and version in (b"HTTP/1.1", b"HTTP/1.0")
              and not any(b"\r" in unfolded or b"\n" in unfolded
                          for unfolded in (line.replace(b"\r\n ", b"") for line in lines)))
    return {"wire": head + b"\r\n" + body, "method": method, "target": target, "plain": plain, "ctype": ctype,
            "encoding": encoding, "framing": framing, "received": received, "single": single}


# -- answers --------------------------------------------------------------------------------------


def parse_answers(data, head=False):
    """[(status, headers dict with lower-case names, body bytes)] for the answers in `data`,
    less interim ones (100 Continue); `head`: the first answers a HEAD request, so it has no body
    whatever its Content-Length (unless the server could not read the request as a HEAD)."""
    answers = []
    whole = data
    while data:
        top, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an answer cut off in its head: {data[:300]!r} in {whole[:1000]!r}"
        lines = top.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        assert len(parts) >= 2 and parts[0] in (b"HTTP/1.0", b"HTTP/1.1") and parts[1].isdigit(), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if 100 <= int(parts[1]) < 200:
            data = rest
            continue
        if head and not answers and (not rest or rest.startswith(b"HTTP/")):
            body, data = b"", rest
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body, data = rest[:length], rest[length:]
        elif headers.get("transfer-encoding") == "chunked":
            body, data = _dechunk(rest)
        else:
            body, data = rest, b""
        answers.append((int(parts[1]), headers, body))
    return answers


def _dechunk(data):
    body = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        size = int(size.split(b";")[0], 16)
        if size == 0:
            return body, data.partition(b"\r\n")[2]
        body, data = body + data[:size], data[size + 2:]


def batch_size(request):
    """How many events the server read from the query or the body it received (None if none)."""
    if request["method"] == b"GET":
        return 1
    body = request["received"]
    if body is None:
        return None
    if request["encoding"] is not None and request["encoding"].strip().lower() in (b"gzip", b"x-gzip"):
        try:
            body = gzip.decompress(body)
        except Exception:
            return None
    try:
        text = body.decode("utf-8")
        if request["ctype"].split(b";")[0].strip().lower() == NDJSON:
            return sum(1 for line in text.split("\n") if line.strip(" \t\r"))
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return len(value) if isinstance(value, list) else 1


def sent_types(request):
    """The `type` of each event sent, in order, for a body the server accepted."""
    body = request["plain"]
    if request["ctype"].split(b";")[0].strip().lower() == NDJSON:
        values = [json.loads(line) for line in body.decode().split("\n") if line.strip(" \t\r")]
    else:
        values = json.loads(body)
    return [v["type"] for v in (values if isinstance(values, list) else [values])]


class HostileHttpTest(HttpCase):
    http_settings = {"max_body_bytes": LIMIT}

    def exchange(self, wire):
        """Send `wire`, close our side, and read until the server closes: never waits forever."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            try:
                sock.sendall(wire)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may hang up on garbage before reading all of it
            data = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                except socket.timeout:
                    self.fail(f"no answer and no close within 10s: the connection is stuck ({data[:200]!r})")
                if not chunk:
                    break
                data += chunk
        return data

    def counts(self):
        stats = self.status()["sources"]["http"]
        return stats["accepted"], stats["rejected"]

    # Run again, on a server wanting a token, by the subclass below: that is the intent.
    @settings(suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.differing_executors])
    @given(requests())
    @example({"wire": b"POST /log HTTP/1.1\r\nHost: zspark\r\nAuthorization: Bearer " + TOKEN + b"\r\n"
                      b"Bad header line\r\nContent-Encoding: gzip\r\nContent-Length: 15\r\n\r\n" + BAD_BATCH,
              "method": b"POST", "target": b"/log", "plain": BAD_BATCH, "ctype": b"", "encoding": b"gzip",
              "framing": "length", "received": BAD_BATCH, "single": True})  # Python's parser drops what follows
    def test_any_request_is_answered_counted_and_leaves_the_server_serving(self, request):
        accepted, rejected = self.counts()
        answers = parse_answers(self.exchange(request["wire"]), request["method"] == b"HEAD")
        if request["single"]:  # a second answer would mean the server took part of it for another request
            self.assertLessEqual(len(answers), 1, [a[:1] for a in answers])
        expect_accepted = expect_rejected = 0
        for number, (status, headers, body) in enumerate(answers):
            self.assertLess(status, 500, body)
            if status == 204:  # OPTIONS /log (a CORS preflight): no content
                self.assertEqual((request["method"], body), (b"OPTIONS", b""))
                continue
            self.assertEqual(headers.get("content-type"), "application/json" if status != 200 else
                             headers.get("content-type"), (status, body))
            answer = json.loads(body) if body and headers.get("content-type") == "application/json" else {}
            if 400 <= status < 500 and body:  # an answer to HEAD has none
                self.assertIs(answer["ok"], False)
                self.assertIsInstance(answer["error"], str)
                self.assertTrue(answer["error"])
            if 400 <= status < 500 and status not in NOT_REJECTIONS:
                if "index" in answer:  # a batch refused for one bad item: all of it counts
                    size = batch_size(request)
                    self.assertIsNotNone(size, "a bad item in a body the test cannot read")
                    expect_rejected += size
                else:
                    expect_rejected += 1
            elif status == 200 and "ids" in answer:
                self.assertEqual(number, 0, "a 200 for a request the test did not send")
                expect_accepted += len(answer["ids"])
                self.assert_journaled(answer["ids"], request)
        self.assertEqual(self.counts(), (accepted + expect_accepted, rejected + expect_rejected),
                         f"/status counts after answers {[a[:1] for a in answers]}")
        # Still serving.
        self.assert_accepted(self.post({"type": "after"}, {"Authorization": "Bearer " + TOKEN.decode()}), 1)

    def assert_journaled(self, ids, request):
        events = {str(e["_id"]): e for e in self.events()}
        journaled = [events.get(i) for i in ids]
        self.assertNotIn(None, journaled, "an id answered with 200 is not in the journal")
        self.assertTrue(all(isinstance(ObjectId(i), ObjectId) for i in ids))
        if request["framing"] in ("length", "chunked", "chunk-extensions") and request["method"] == b"POST":
            self.assertEqual([e["type"] for e in journaled], sent_types(request))


class HostileHttpWithTokensTest(HostileHttpTest):
    """The same with `http.tokens` set: a request without the token gets 401, never counted."""

    http_settings = {"max_body_bytes": LIMIT, "tokens": [TOKEN.decode()]}
