"""Config loading: defaults, types, unknown keys, addresses, Zarkov's flat keys, relative paths,
and `zcmd validate`'s exit codes and messages."""
import json
import os
import unittest

from zspark import config
from zspark.config import ConfigError

from .support import TempDir, zcmd


# Every key of Zarkov's config schema (zarkov/config.py, ConfigSchema), as a Zarkov user wrote them.
ZARKOV_EVERY_KEY = """\
bson_uri: tcp://127.0.0.1:6543
json_uri: tcp://127.0.0.1:6544
bson_bind_address: tcp://0.0.0.0:6543
json_bind_address: tcp://0.0.0.0:6544
publish_bind_address: tcp://0.0.0.0:6545
web_port: 8081
backdoor:
  - {command: zmr, port: 6501}
mongo_uri: mongodb://127.0.0.1:27017
mongo_database: zarkov
mongo_username: z@me
mongo_password: p:ss
verbose: false
incremental: true
num_event_servers: 0
num_event_logs: 4
journal: journal
journal_file_size: 262144
journal_min_files: 4
zmr:
  req_uri: tcp://127.0.0.1:5555
  req_port: 5555
  map_page_size: 250000000
  job_root: /tmp/zmr
logstream:
  - {entry_point: 'myapp:stream', port: 6600}
loadbalance:
  incoming_bind: tcp://0.0.0.0:6543
  outgoing_uris: [tcp://10.0.0.2:6543]
webevent: {bind: '0.0.0.0:8082'}
extra_dbs:
  - {name: other, master: 'mongodb://localhost:27017', database: other}
extra: {}
flush_mmap: false
"""


class ConfigCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)

    def write(self, text, name="zspark.yaml"):
        path = self.tmp.join(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertConfigError(self, text, *fragments):
        path = self.write(text)
        with self.assertRaises(ConfigError) as ctx:
            config.load(path)
        message = str(ctx.exception)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class Loading(ConfigCase):
    def test_an_empty_file_gives_every_default(self):
        c = config.load(self.write(""))
        self.assertEqual(c.journal.sync, "batch")
        self.assertEqual(c.http.port, 8080)
        self.assertEqual(c.zmq.bson_bind, "tcp://127.0.0.1:6543")
        self.assertEqual(c.zmq.json_bind, "tcp://127.0.0.1:6544")
        self.assertEqual(c.journal.dir, self.tmp.join("journal"))

    def test_values_and_sizes_are_typed(self):
        c = config.load(self.write("journal: {sync: always, max_bytes: 64MiB, segment_bytes: 1000}\n"
                                   "http: {port: 9000, tokens: [abc]}\n"))
        self.assertEqual(c.journal.sync, "always")
        self.assertEqual(c.journal.max_bytes, 64 * 1024 * 1024)
        self.assertEqual(c.journal.segment_bytes, 1000)
        self.assertEqual(c.http.port, 9000)
        self.assertEqual(c.http.tokens, ["abc"])

    def test_relative_paths_are_relative_to_the_files_directory(self):
        os.makedirs(self.tmp.join("etc"))
        c = config.load(self.write("journal: {dir: ../data/j}\n", name="etc/zspark.yaml"))
        self.assertEqual(c.journal.dir, self.tmp.join("data", "j"))

    def test_zarkov_flat_keys_are_accepted(self):
        c = config.load(self.write(
            "bson_bind_address: tcp://0.0.0.0:7000\njson_bind_address: tcp://0.0.0.0:7001\n"
            "web_port: 8181\nmongo_uri: mongodb://db:27017\nmongo_database: zarkov\n"
            "journal: /var/zarkov/journal\nverbose: true\n"))
        self.assertEqual(c.zmq.bson_bind, "tcp://0.0.0.0:7000")
        self.assertEqual(c.zmq.json_bind, "tcp://0.0.0.0:7001")
        self.assertEqual(c.http.port, 8181)
        self.assertEqual(c.mongo.uri, "mongodb://db:27017")
        self.assertEqual(c.mongo.database, "zarkov")
        self.assertEqual(c.journal.dir, "/var/zarkov/journal")
        self.assertEqual(c.log.level, "debug")

    def test_every_key_of_zarkovs_schema_loads_and_the_meaningless_ones_are_named_once(self):
        c = config.load(self.write(ZARKOV_EVERY_KEY))
        self.assertEqual(c.ignored_zarkov_keys, sorted(config.ZARKOV_IGNORED))
        warnings = config.config_warnings(c)
        named = [w for w in warnings if "Zarkov" in w]
        self.assertEqual(len(named), 1, warnings)
        for key in config.ZARKOV_IGNORED:
            self.assertRegex(named[0], rf"\b{key}\b")
        self.assertEqual((c.zmq.bson_bind, c.zmq.json_bind, c.http.port),
                         ("tcp://0.0.0.0:6543", "tcp://0.0.0.0:6544", 8081))
        self.assertEqual(c.journal.dir, self.tmp.join("journal"))
        # events went to MongoDB and to the PUB socket in Zarkov: they do here too
        self.assertTrue(c.mongo.enabled)
        self.assertEqual((c.mongo.uri, c.mongo.database), ("mongodb://z%40me:p%3Ass@127.0.0.1:27017", "zarkov"))
        self.assertTrue(c.pub.enabled)
        self.assertEqual(c.pub.bind, "tcp://0.0.0.0:6545")

    def test_zarkov_mongo_keys_turn_mongodb_on_unless_mongo_enabled_is_set(self):
        self.assertTrue(config.load(self.write("mongo_database: zarkov\n")).mongo.enabled)
        self.assertTrue(config.load(self.write("mongo_uri: mongodb://db:27017\n")).mongo.enabled)
        off = config.load(self.write("mongo_uri: mongodb://db:27017\nmongo: {enabled: false}\n"))
        self.assertFalse(off.mongo.enabled)
        off = config.load(self.write("publish_bind_address: tcp://127.0.0.1:7000\npub: {enabled: false}\n"))
        self.assertEqual((off.pub.enabled, off.pub.bind), (False, "tcp://127.0.0.1:7000"))
        plain = config.load(self.write("mongo: {uri: 'mongodb://db:27017'}\n"))  # zspark's own keys: as they were
        self.assertFalse(plain.mongo.enabled)
        self.assertEqual(config.config_warnings(plain), [])

    def test_a_key_zarkov_never_had_is_still_refused(self):
        self.assertConfigError("incremental: true\nincrementals: true\n", "unknown key 'incrementals'")
        self.assertConfigError("mongo_username: me\n", "key 'mongo_password'")


class Errors(ConfigCase):
    def test_unknown_key_is_named(self):
        self.assertConfigError("http: {prot: 80}\n", "unknown key 'http.prot'", "port")

    def test_unknown_section_is_named(self):
        self.assertConfigError("htp: {}\n", "unknown key 'htp'")

    def test_wrong_types_are_named(self):
        self.assertConfigError("http: {port: eighty}\n", "http.port", "port number")
        self.assertConfigError("http: {port: 70000}\n", "http.port")
        self.assertConfigError("journal: {sync: sometimes}\n", "journal.sync", "always, batch, never")
        self.assertConfigError("journal: {max_bytes: lots}\n", "journal.max_bytes", "64MiB")
        self.assertConfigError("http: {enabled: 'yes please'}\n", "http.enabled", "true or false")
        self.assertConfigError("http: {tokens: abc}\n", "http.tokens", "a list")
        self.assertConfigError("http: [1, 2]\n", "'http' must be a mapping")

    def test_budgets_that_would_refuse_everything_are_named(self):
        self.assertConfigError("http: {max_inflight_bytes: 1MiB, max_body_bytes: 2MiB}\n",
                               "http.max_inflight_bytes", "at least http.max_body_bytes")
        self.assertConfigError("http: {max_inflight_bytes: lots}\n", "http.max_inflight_bytes", "64MiB")
        self.assertConfigError("http: {body_timeout_s: 0}\n", "http.body_timeout_s", "more than 0")
        self.assertConfigError("http: {tail_max_clients: 0}\n", "http.tail_max_clients", "more than 0")
        self.assertConfigError("http: {tail_max_last: -1}\n", "http.tail_max_last", "non-negative")
        loaded = config.load(self.write("http: {max_inflight_bytes: 8MiB, body_timeout_s: 2.5}\n"))
        self.assertEqual((loaded.http.max_inflight_bytes, loaded.http.body_timeout_s), (8 * 1024**2, 2.5))

    def test_bad_addresses_are_named(self):
        self.assertConfigError("zmq: {bson_bind: 'localhost:6543'}\n", "zmq.bson_bind", "tcp://")
        self.assertConfigError("http: {host: 'not a host'}\n", "http.host")
        self.assertConfigError("web_port: -1\n", "http.port")

    def test_bad_yaml_and_a_missing_file(self):
        self.assertConfigError("http: {port: [\n", "not valid YAML")
        with self.assertRaises(ConfigError) as ctx:
            config.load(self.tmp.join("nope.yaml"))
        self.assertIn("nope.yaml", str(ctx.exception))

    def test_http_workers_is_a_number_of_processes_or_auto(self):
        self.assertEqual(config.load(self.write("http: {}\n")).http.workers, 1)  # one process
        self.assertEqual(config.load(self.write("http: {workers: 3}\n")).http.workers, 3)
        self.assertEqual(config.load(self.write("http: {workers: auto}\n")).http.workers, os.cpu_count())
        for bad in ("0", "-2", "2.5", "true", "'two'", "[2]"):
            with self.subTest(bad=bad):
                self.assertConfigError(f"http: {{workers: {bad}}}\n", "key 'http.workers'", '"auto"')

    def test_alias_and_nested_key_together_are_refused(self):
        self.assertConfigError("web_port: 1\nhttp: {port: 2}\n", "web_port", "http.port")


class ValidateCommand(ConfigCase):
    def test_a_good_config_exits_zero_and_prints_the_settings(self):
        result = zcmd("-y", self.write("http: {port: 9999}\n"), "validate")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("OK", result.stdout)
        self.assertIn('"port": 9999', result.stdout)

    def test_a_bad_config_exits_non_zero_naming_the_key_and_file(self):
        path = self.write("journal: {sync: sometimes}\n")
        result = zcmd("-y", path, "validate")
        self.assertEqual(result.returncode, 2)
        self.assertIn("journal.sync", result.stderr)
        self.assertIn(path, result.stderr)

    def test_a_zarkov_config_exits_zero_with_one_warning_naming_its_ignored_keys(self):
        path = self.write(ZARKOV_EVERY_KEY.replace("mongo_username: z@me\nmongo_password: p:ss\n", ""))
        result = zcmd("-y", path, "validate", "--quiet")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("zcmd validate: warning:", lines[0])
        for key in ("backdoor", "incremental", "zmr", "extra_dbs", "flush_mmap"):
            self.assertIn(key, lines[0])
        self.assertNotIn("webevent", lines[0])  # it means something: http.pixel.bind

    def test_zarkovs_webevent_is_the_pixel_on_a_listener_of_its_own(self):
        path = self.write("webevent: {bind: '0.0.0.0:8082'}\n")
        result = zcmd("-y", path, "validate")
        self.assertEqual(result.returncode, 0, result.stderr)
        pixel = json.loads(result.stdout.split("\n", 1)[1])["http"]["pixel"]  # after "<path>: OK"
        self.assertEqual((pixel["bind"], pixel["cookie"]), ("0.0.0.0:8082", "zess"))
        for text, key in (("webevent: {bind: 8082}\n", "webevent"), ("webevent: {}\n", "webevent"),
                          ("http: {pixel: {bind: 'localhost'}}\n", "http.pixel.bind"),
                          ("http: {pixel: {bind: ':99999'}}\n", "http.pixel.bind"),
                          ("webevent: {bind: ':1'}\nhttp: {pixel: {bind: ':2'}}\n", "webevent.bind")):
            with self.subTest(text=text):
                result = zcmd("-y", self.write(text), "validate")
                self.assertEqual(result.returncode, 2, result.stdout)
                self.assertIn(key, result.stderr)

    def test_tokens_are_not_printed(self):
        result = zcmd("-y", self.write("http: {tokens: [s3cret-token]}\n"), "validate")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("s3cret-token", result.stdout)

    def test_help_explains_each_command(self):
        result = zcmd("--help")
        self.assertEqual(result.returncode, 0)
        for name in ("serve", "validate", "tail"):
            self.assertIn(name, result.stdout)
        result = zcmd("tail", "--help")
        self.assertIn("--follow", result.stdout)

    def test_no_command_prints_usage_and_fails(self):
        result = zcmd()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("usage", result.stderr)


if __name__ == "__main__":
    unittest.main()
