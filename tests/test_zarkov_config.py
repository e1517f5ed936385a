"""A Zarkov `development.yaml`, written as Zarkov's blog showed it (flat keys, `zmr:`, `backdoor:`),
served as it is: `zcmd serve` starts, logs one warning naming the keys it ignores, forwards an
event to the real local MongoDB-compatible server, as Zarkov stored it, and serves Zarkov's
web-event pixel on `webevent.bind`."""
import unittest
import uuid

from .support import ServeProcess, TempDir, free_port, mongo_client, request, start_mongo, wait_until

DEVELOPMENT_YAML = """\
bson_bind_address: tcp://127.0.0.1:{bson}
json_bind_address: tcp://127.0.0.1:{json}
publish_bind_address: tcp://127.0.0.1:{pub}
web_port: {web}
backdoor:
  - command: zmr
    port: {backdoor}
mongo_uri: {mongo_uri}
mongo_database: {database}
journal: {journal}
verbose: false
incremental: true
num_event_servers: 0
journal_file_size: 262144
journal_min_files: 4
flush_mmap: false
webevent: {{bind: '127.0.0.1:{pixel}'}}
zmr:
  req_uri: tcp://127.0.0.1:5555
  req_port: 5555
  map_page_size: 250000000
  map_job_size: 10000
  reduce_count: 256
"""


class ZarkovDevelopmentYaml(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir(prefix="zspark-zarkov-")
        self.addCleanup(self.tmp.remove)
        self.mongo = start_mongo(self.tmp.join("mongo"))
        self.addCleanup(self.mongo.stop)

    def test_serves_and_forwards_to_mongodb(self):
        database = f"zarkov_{uuid.uuid4().hex[:8]}"
        web, pixel = free_port(), free_port()
        path = self.tmp.join("development.yaml")
        with open(path, "w") as f:
            f.write(DEVELOPMENT_YAML.format(bson=free_port(), json=free_port(), pub=free_port(), web=web,
                                            backdoor=free_port(), mongo_uri=self.mongo.uri,
                                            database=database, journal=self.tmp.join("journal"), pixel=pixel))
        server = ServeProcess(path, web, self.tmp.join("serve.log"))
        self.addCleanup(server.kill)
        server.start(timeout=60)
        self.assertEqual(request(web, "GET", "/log?type=zarkov_page&user=rick")[0], 200)

        client = mongo_client(self.mongo.uri)
        self.addCleanup(client.close)
        found = wait_until(lambda: client[database].event.find_one({"type": "zarkov_page"}), timeout=30,
                           message="the event in MongoDB's event collection")
        self.assertEqual(found["context"], {"user": "rick"})

        # webevent.bind: Zarkov's pixel server, on any path, with its `zess` visitor cookie.
        status, headers, body = request(pixel, "GET", "/anything/e.gif?type=zarkov_pixel&page=home")
        self.assertEqual((status, headers["content-type"], body[:6]), (200, "image/gif", b"GIF89a"))
        self.assertTrue(headers["set-cookie"].startswith("zess="), headers)
        visitor = headers["set-cookie"].split(";")[0].split("=", 1)[1]
        found = wait_until(lambda: client[database].event.find_one({"type": "zarkov_pixel"}), timeout=30,
                           message="the pixel's event in MongoDB's event collection")
        self.assertEqual((found["context"], found["cookies"]), ({"page": "home"}, {"zess": visitor}))
        self.assertEqual(request(pixel, "POST", "/log", b"{}")[0], 405)  # the pixel only
        self.assertEqual(server.stop(), 0)

        warned = [line for line in server.log().splitlines() if "Zarkov's keys" in line]
        self.assertEqual(len(warned), 1, server.log())
        for key in ("backdoor", "flush_mmap", "incremental", "journal_file_size", "journal_min_files",
                    "num_event_servers", "zmr"):
            self.assertIn(key, warned[0])
