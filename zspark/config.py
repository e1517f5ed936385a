"""The configuration: one YAML file loaded into one validated, typed `Config`.

Every setting has a default, so an empty file (or none) serves. A wrong type, an unknown key or a
bad address raises `ConfigError` naming the key and the file. A Zarkov config loads as it is:
its flat keys (`bson_bind_address`, `web_port`, `mongo_uri`, ...) are aliases of the nested ones,
and the keys of Zarkov's schema that mean nothing here are accepted with one warning.
Relative paths are resolved against the directory of the file they were read from.
"""
import dataclasses
import ipaddress
import os
import pwd
import re
import socket
import stat
import string
import urllib.parse
from dataclasses import dataclass, field
from typing import get_args, get_origin

import yaml

from .errors import ConfigError  # noqa: F401 (importable from here too)
from .journal.files import others_can_write
from .redact import holds_secret, is_secret_name, redact, redact_data


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


class ByteSize(int):
    """An integer number of bytes; YAML may also say `64MiB`, `10GB`, `512k`."""


class Path(str):
    """A filesystem path, resolved against the config file's directory."""


class ZmqAddress(str):
    """A ZeroMQ endpoint such as `tcp://127.0.0.1:6543`; empty disables the socket."""


class Host(str):
    """An interface address to bind to, such as `127.0.0.1` or `0.0.0.0`."""


class Port(int):
    """A TCP port, 1-65535 (0 asks the kernel for a free one)."""


class Workers(int):
    """A number of processes, at least 1; YAML may also say `auto`: one per core
    (os.cpu_count())."""


class Secret(str):
    """A token. In YAML it is the token itself, or `env:NAME` (read from that environment
    variable) or `file:PATH` (every non-empty line not starting with # is a token), so that
    secrets can stay out of the config file."""


def _choice(*values):
    return type("Choice", (str,), {"choices": values})


@dataclass
class NodeConfig:
    id: str = field(default_factory=socket.gethostname)


@dataclass
class JournalConfig:
    dir: Path = Path("journal")
    sync: _choice("always", "batch", "never") = "batch"
    sync_interval_ms: float = 5.0
    segment_bytes: ByteSize = ByteSize(64 * 1024**2)
    max_bytes: ByteSize = ByteSize(10 * 1024**3)
    retain_hours: float = 168.0
    retention_check_s: float = 60.0
    # true: the directory and its files may belong to another user or be writable by group or
    # others (a shared setup, on purpose); symbolic links and hard links are refused even so.
    allow_shared_dir: bool = False


@dataclass
class CorsConfig:
    """Which web pages may send to /log and read its answers (zspark/sources/httpweb.py)."""
    # Origins (scheme://host[:port]) or "*". A listed origin may send cookies (credentials);
    # "*" never: pages of any other origin get answers without them.
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    max_age_s: int = 600  # how long a browser may keep a preflight's answer


@dataclass
class PixelConfig:
    """GET <path>?type=...: the event as GET /log takes it, answered with a 1x1 GIF."""
    path: str = "/pixel.gif"
    cookie: str = ""  # a visitor-id cookie's name, as Zarkov's `zess`; "" = none
    cookie_max_age_days: float = 3650.0
    cookie_same_site: _choice("Lax", "Strict", "None") = "Lax"
    cookie_secure: bool = False
    # HOST:PORT of a listener of its own that answers the pixel on every path, as Zarkov's
    # web-event server did (its `webevent.bind`); "" = none, the pixel is on the HTTP port only
    bind: str = ""


@dataclass
class HttpConfig:
    enabled: bool = True
    host: Host = Host("127.0.0.1")
    port: Port = Port(8080)
    root: str = ""
    max_body_bytes: ByteSize = ByteSize(4 * 1024**2)
    # Request bodies held in memory at once, all requests together (beyond it: 503), and the
    # time a whole body may take to arrive (beyond it: 408). See sources/httpbody.py.
    max_inflight_bytes: ByteSize = ByteSize(64 * 1024**2)
    body_timeout_s: float = 30.0
    # GET /tail: records a client may ask for with `last` (more gets this many), and clients at once.
    tail_max_last: int = 10000
    tail_max_clients: int = 16
    tokens: list[Secret] = field(default_factory=list)  # for /log; empty = no authentication
    # For /status, /metrics and /tail; empty = the same as `tokens`. /imok is always open.
    status_tokens: list[Secret] = field(default_factory=list)
    trusted_proxies: list[str] = field(default_factory=list)
    retry_after_s: int = 5
    stop_timeout_s: float = 10.0
    certfile: Path = Path("")  # both set: serve HTTPS
    keyfile: Path = Path("")
    # Connections (zspark/sources/httpserver.py). Deadlines for a whole request head and a TLS
    # handshake, so a sender trickling bytes cannot hold a connection; an idle keep-alive waits
    # longer than the usual 60 s of load balancers, so that they, not zspark, close first.
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    tls_handshake_timeout_s: float = 10.0
    max_connections: int = 10000
    # Processes serving HTTP (zspark/httpworkers.py): 1 = this one; N > 1 (or `auto`: one per
    # core) = N worker processes sharing the port (SO_REUSEPORT), handing encoded batches to
    # this one, the journal's only writer.
    workers: Workers = Workers(1)
    # One line per request (zspark/accesslog.py), to access_log_file ("" = stdout; reopened on SIGHUP).
    access_log: _choice("off", "combined", "json") = "off"
    access_log_file: Path = Path("")
    cors: CorsConfig = field(default_factory=CorsConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)
    snippet: bool = True  # serve /zspark.js
    # POSTed events get ip, user_agent and referrer from the request where they have none, as GET
    # /log's do.
    post_request_fields: bool = True


@dataclass
class ZmqConfig:
    bson_bind: ZmqAddress = ZmqAddress("tcp://127.0.0.1:6543")
    json_bind: ZmqAddress = ZmqAddress("tcp://127.0.0.1:6544")
    max_message_bytes: ByteSize = ByteSize(1024**2)  # larger frames: counted rejections
    receive_batch: int = 1000
    # What one peer can hold (sources/zmq.py): frames queued per connection (libzmq's default;
    # 100 held scripts/bench's single sender to 0.6x the events/s: smaller bursts, more fsyncs),
    # the time to complete the ZMTP handshake, and heartbeats that close a connection whose peer
    # is gone.
    receive_hwm: int = 1000
    handshake_timeout_s: float = 10.0
    heartbeat_s: float = 30.0  # 0 = no heartbeats
    heartbeat_timeout_s: float = 60.0
    # CURVE (both set): this server's secret key file (`zcmd keygen`), and a directory of the
    # public key files of the clients allowed to send.
    curve_secret_key: Path = Path("")
    curve_authorized_keys: Path = Path("")


MAX_EVENT_DEPTH = 200  # as _native.c's DEPTH_CAP; Python's recursion limit is 1,000 frames


@dataclass
class EventConfig:
    max_string_bytes: ByteSize = ByteSize(64 * 1024)
    max_depth: int = 32
    max_fields: int = 1000
    # A top-level field the schema does not know: moved into `context`, or the event refused.
    unknown_fields: _choice("context", "refuse") = "context"


@dataclass
class ForwardConfig:
    """How every forwarder batches and retries."""
    # Up to this many events per delivery. A batch is sent and confirmed before the next is read,
    # so a backlog moves at batch_size per round trip: 4000 forwarded ZeroMQ events to Kafka
    # about 1.3x as fast as 1000 did (scripts/bench), at the price of up to that many sent twice
    # after a crash. A trickle makes small batches whatever this is.
    batch_size: int = 4000
    # Gathering a trickle into one batch; kept short because a batch in flight (send, wait for
    # the destination's confirmation, fsync the cursor) already gathers the next one, and every
    # event below batch_size / batch_wait events/s waits this long on top of its delivery.
    batch_wait_ms: float = 5.0
    backoff_initial_ms: float = 100.0
    backoff_max_s: float = 30.0
    stop_timeout_s: float = 10.0
    # At a clean stop, after the sources closed: how long the forwarders may go on delivering
    # what is left in the journal (the node_offline notice included) before they stop.
    drain_on_stop_s: float = 5.0
    # Each enabled sink's forwarder in a child process of its own (zspark/fwdproxy.py), reading
    # the journal read-only; false: in the serving process, as green threads.
    own_process: bool = False


@dataclass
class NoticesConfig:
    """What the node tells downstream about itself: node_online / heartbeat / node_offline, and
    hour_complete once every event of an hour (per Kafka topic) has been delivered to Kafka."""
    enabled: bool = True
    heartbeat_s: float = 60.0  # 0 = no periodic heartbeat (online/offline still sent)
    hour_complete: bool = True  # needs kafka.enabled
    hour_grace_s: float = 300.0  # late events by `timestamp` are waited for this long after the hour
    check_s: float = 1.0  # how often hours are looked at


@dataclass
class KafkaConfig:
    enabled: bool = False
    brokers: str = "127.0.0.1:9092"
    topic: str = "{topic}"  # a template over event fields
    default_topic: str = "zspark"  # when the template names a field the event does not have
    key_field: str = ""  # an event field whose value becomes the message key ("" = no key)
    format: _choice("json", "bson", "plain") = "json"
    plain_fields: list[str] = field(default_factory=lambda: [
        "timestamp", "type", "level", "topic", "env", "version", "ip", "referrer", "user_agent",
        "context"])
    plain_delimiter: str = "\t"
    compression: _choice("none", "gzip", "snappy", "lz4", "zstd") = "none"
    message_timeout_ms: int = 30000
    notice_topic: str = "zspark.notify"  # where node and hour_complete notices go
    # Which topics events may choose (zspark/topics.py): fnmatch globs; at most max_topics distinct
    # ones taken from events; an event whose topic is not allowed goes to default_topic or is refused.
    topics_allowed: list[str] = field(default_factory=lambda: ["*"])
    max_topics: int = 100
    topic_not_allowed: _choice("default", "refuse") = "default"
    producer: dict = field(default_factory=dict)  # passed through to librdkafka


@dataclass
class MongoConfig:
    enabled: bool = False
    uri: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    database: str = "zspark"
    collection: str = "event"
    ttl_days: float = 0.0  # 0 = keep for ever
    timeout_ms: int = 10000
    notice_collection: str = "notice"  # where node and hour_complete notices go


@dataclass
class PubConfig:
    enabled: bool = False
    bind: ZmqAddress = ZmqAddress("tcp://127.0.0.1:6545")


@dataclass
class LogConfig:
    level: _choice("debug", "info", "warning", "error") = "info"
    format: _choice("text", "json") = "text"  # zspark/logsetup.py
    file: Path = Path("")  # "" = stderr; reopened on SIGHUP (after logrotate moved it)


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    zmq: ZmqConfig = field(default_factory=ZmqConfig)
    event: EventConfig = field(default_factory=EventConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    notices: NoticesConfig = field(default_factory=NoticesConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    mongo: MongoConfig = field(default_factory=MongoConfig)
    pub: PubConfig = field(default_factory=PubConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<defaults>"  # the file this was loaded from, for messages
    # (key, path) of every file a secret was read from (the config file itself for a token written
    # in it), for secret_file_warnings
    secret_files: list = field(default_factory=list)
    # the keys of Zarkov's schema this file set that mean nothing here, for config_warnings
    ignored_zarkov_keys: list = field(default_factory=list)
    # The sections of sinks registered beyond the built-in ones (zspark/sinks/__init__.py), by name
    sink_sections: dict = field(default_factory=dict)

    def section(self, name):
        """The section `name`: a field above, else a registered sink's."""
        if name in self.sink_sections:
            return self.sink_sections[name]
        return getattr(self, name)


_NOT_FROM_YAML = ("source", "secret_files", "ignored_zarkov_keys", "sink_sections")


# Zarkov's flat keys -> (nested key, converter)
ZARKOV_ALIASES = {
    "bson_bind_address": ("zmq.bson_bind", None),
    "json_bind_address": ("zmq.json_bind", None),
    "web_port": ("http.port", None),
    "mongo_uri": ("mongo.uri", None),
    "mongo_database": ("mongo.database", None),
    "journal": ("journal.dir", None),
    "verbose": ("log.level", lambda v: "debug" if v is True else ("info" if v is False else v)),
    "publish_bind_address": ("pub.bind", None),
}
# To Zarkov, a MongoDB and a PUB socket were always on: its keys for them turn the forwarder on,
# unless the file also says `<section>.enabled`.
_ZARKOV_ENABLES = {"mongo_uri": "mongo", "mongo_database": "mongo", "publish_bind_address": "pub"}
# Zarkov's credentials, written into mongo.uri (where pymongo takes them)
_ZARKOV_MONGO_CREDENTIALS = ("mongo_username", "mongo_password")
# The rest of Zarkov's config schema (zarkov/config.py ConfigSchema): its client-side URIs, its
# map-reduce, aggregation, journal tuning, backdoor and side services. Accepted with any value,
# named in one warning. (`webevent`, Zarkov's pixel server, is http.pixel: _apply_webevent.)
ZARKOV_IGNORED = ("backdoor", "bson_uri", "extra", "extra_dbs", "flush_mmap", "incremental",
                  "journal_file_size", "json_uri", "journal_min_files", "loadbalance", "logstream",
                  "num_event_logs", "num_event_servers", "zmr")


def load(path=None) -> Config:
    """Load and validate the YAML file at `path`; None gives the defaults."""
    if path is None:
        config = Config()
        config.sink_sections = {name: cls() for name, cls in _registered_sections().items()}
        return config
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(data, source=str(path), base_dir=os.path.dirname(os.path.abspath(path)))


def from_dict(data, source="<dict>", base_dir=None) -> Config:
    """Build a Config from already-parsed data (a mapping or None)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {_kind(data)}")
    data = dict(data)
    ignored = sorted(key for key in ZARKOV_IGNORED if key in data)
    for key in ignored:
        del data[key]
    data = _apply_aliases(data, source)
    ctx = _Context(source, base_dir or os.getcwd())
    sink_sections = _registered_sections()
    extra = {name: data.pop(name) for name in sink_sections if name in data}
    config = _build(Config, data, "", ctx, also_known=sink_sections)
    for name, cls in sink_sections.items():
        section = extra.get(name)
        config.sink_sections[name] = _build(cls, {} if section is None else section, name + ".", ctx)
    config.source = source
    config.secret_files = ctx.secret_files
    config.ignored_zarkov_keys = ignored
    _check_pairs(config)
    _check_positive(config)
    http = config.http
    if http.max_inflight_bytes < http.max_body_bytes:
        raise ConfigError(f"{config.source}: key 'http.max_inflight_bytes': expected at least "
                          f"http.max_body_bytes ({http.max_body_bytes}), got {http.max_inflight_bytes}")
    _check_topics(config)
    _check_web(config)
    if config.event.max_depth > MAX_EVENT_DEPTH:
        raise ConfigError(f"{config.source}: key 'event.max_depth': at most {MAX_EVENT_DEPTH} (deeper "
                          f"nesting than that cannot be decoded reliably), got {config.event.max_depth}")
    _check_journal_dir(config)
    _check_authorized_keys(config)
    return config


def _check_positive(config):
    """Settings where 0 would mean "no limit" to the library underneath, or "refuse everything"."""
    for section, name in (("zmq", "receive_hwm"), ("zmq", "handshake_timeout_s"),
                          ("zmq", "max_message_bytes"), ("http", "header_timeout_s"),
                          ("http", "idle_timeout_s"), ("http", "tls_handshake_timeout_s"),
                          ("http", "max_connections"), ("http", "body_timeout_s"),
                          ("http", "tail_max_clients")):
        if not getattr(getattr(config, section), name) > 0:
            raise ConfigError(f"{config.source}: key '{section}.{name}': must be more than 0")
    zc = config.zmq
    if zc.heartbeat_s and not zc.heartbeat_timeout_s > zc.heartbeat_s:
        raise ConfigError(f"{config.source}: key 'zmq.heartbeat_timeout_s': must be more than "
                          f"zmq.heartbeat_s ({zc.heartbeat_s:g}) while heartbeats are on (0 turns them "
                          "off), else a quiet peer is closed between two pings")


def _check_pairs(config):
    """Settings that only work together."""
    for section, first, second in (("http", "certfile", "keyfile"),
                                   ("zmq", "curve_secret_key", "curve_authorized_keys")):
        values = getattr(config, section)
        a, b = getattr(values, first), getattr(values, second)
        if bool(a) != bool(b):
            missing = second if a else first
            raise ConfigError(f"{config.source}: key '{section}.{missing}' must be set too "
                              f"('{section}.{first}' and '{section}.{second}' go together)")
        for name, path in ((first, a), (second, b)):
            if path and not os.path.exists(path):
                raise ConfigError(f"{config.source}: key '{section}.{name}': {path} does not exist")


_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?\Z")
_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*\Z")
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
# Paths under http.root that are zspark's own: the pixel cannot take one.
RESERVED_PATHS = ("/log", "/imok", "/status", "/metrics", "/tail", "/zspark.js")


def _check_web(config):
    """http.cors and http.pixel (zspark/sources/httpweb.py). Origins are kept as browsers send
    them: scheme and host in lower case, no trailing slash."""
    cors, pixel = config.http.cors, config.http.pixel

    def fail(key, problem):
        raise ConfigError(f"{config.source}: key 'http.{key}': {problem}")
    for i, origin in enumerate(cors.allowed_origins):
        normal = origin.strip().rstrip("/").lower()
        if normal != "*" and not _ORIGIN.match(normal):
            fail(f"cors.allowed_origins[{i}]", f"expected \"*\" or an origin such as https://shop.example "
                                               f"or http://127.0.0.1:8000 (no path), got {origin!r}")
        cors.allowed_origins[i] = normal
    if not _URL_PATH.match(pixel.path) or pixel.path == "/":
        fail("pixel.path", f"expected a URL path such as /pixel.gif, got {pixel.path!r}")
    if pixel.path.rstrip("/") in RESERVED_PATHS:
        fail("pixel.path", f"{pixel.path} is zspark's own route ({', '.join(RESERVED_PATHS)})")
    if pixel.cookie and not _COOKIE_NAME.match(pixel.cookie):
        fail("pixel.cookie", f"not a cookie name (letters, digits and !#$%&'*+.^_`|~-): {pixel.cookie!r}")
    if not pixel.cookie_max_age_days > 0:
        fail("pixel.cookie_max_age_days", "must be more than 0")
    if pixel.bind and _host_port(pixel.bind) is None:
        fail("pixel.bind", f"expected HOST:PORT such as 0.0.0.0:8082 or [::]:8082, got {pixel.bind!r}")
    if pixel.cookie_same_site == "None" and not pixel.cookie_secure:
        fail("pixel.cookie_same_site", "None needs http.pixel.cookie_secure: true (browsers drop a "
                                       "SameSite=None cookie that is not Secure)")


def _host_port(text):
    """(host, port) of "HOST:PORT" ("[v6]:PORT" for IPv6), or None."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host, int(port)) if host and ":" not in host.strip("0123456789abcdefABCDEF:.") else None


def pixel_address(config):
    """(host, port) of `http.pixel.bind`, or None when it is not set."""
    return _host_port(config.http.pixel.bind) if config.http.pixel.bind else None


def _check_topics(config):
    """Kafka topic names and the template (zspark/topics.py)."""
    from .topics import legal_topic

    kafka = config.kafka

    def fail(key, problem):
        raise ConfigError(f"{config.source}: key 'kafka.{key}': {problem}")
    try:
        list(string.Formatter().parse(kafka.topic))
    except ValueError as e:
        fail("topic", f"not a valid template ({e}); fields are written {{name}}, braces doubled")
    for key in ("default_topic", "notice_topic"):
        if not legal_topic(getattr(kafka, key)):
            fail(key, f"{getattr(kafka, key)!r} is not a legal Kafka topic name (1-249 letters, "
                      f"digits, '.', '_', '-')")
    if kafka.default_topic == kafka.notice_topic:
        fail("default_topic", "must differ from kafka.notice_topic, which carries only this node's notices")
    for i, pattern in enumerate(kafka.topics_allowed):
        if not pattern:
            fail(f"topics_allowed[{i}]", "a pattern cannot be empty")
        if pattern == kafka.notice_topic:
            fail(f"topics_allowed[{i}]", "kafka.notice_topic carries only this node's notices; "
                                         "events are never written there")


def _apply_aliases(data, source):
    user, password = (data.pop(key, None) for key in _ZARKOV_MONGO_CREDENTIALS)
    for flat, (nested, convert) in ZARKOV_ALIASES.items():
        if flat not in data or (flat == nested.split(".")[0] and isinstance(data[flat], dict)):
            continue  # `journal:` is both Zarkov's path and our section
        value = data.pop(flat)
        if convert:
            value = convert(value)
        section, key = nested.split(".")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: key '{section}' must be a mapping, got {_kind(target)}")
        if key in target:
            raise ConfigError(f"{source}: '{flat}' and '{nested}' both set; keep one")
        target[key] = value
        if flat in _ZARKOV_ENABLES:
            target.setdefault("enabled", True)
    if user is not None or password is not None:
        _add_mongo_credentials(data, user, password, source)
    if "webevent" in data:
        _apply_webevent(data, data.pop("webevent"), source)
    return data


def _apply_webevent(data, webevent, source):
    """Zarkov's `webevent: {bind: HOST:PORT}`: its pixel server, which set the `zess` visitor
    cookie: http.pixel.bind, and http.pixel.cookie `zess` unless the file names one. Its other
    keys mean nothing here."""
    if not isinstance(webevent, dict) or not isinstance(webevent.get("bind"), str):
        raise ConfigError(f"{source}: key 'webevent': expected {{bind: HOST:PORT}} (Zarkov's pixel server; "
                          f"zspark's is http.pixel), got {webevent!r}")
    http = data.setdefault("http", {})
    pixel = http.setdefault("pixel", {}) if isinstance(http, dict) else None
    if not isinstance(pixel, dict):
        raise ConfigError(f"{source}: key 'http.pixel' must be a mapping")
    if "bind" in pixel:
        raise ConfigError(f"{source}: 'webevent.bind' and 'http.pixel.bind' both set; keep one")
    pixel["bind"] = webevent["bind"]
    pixel.setdefault("cookie", "zess")


def _add_mongo_credentials(data, user, password, source):
    """Zarkov's `mongo_username` / `mongo_password`, written into mongo.uri."""
    mongo = data.setdefault("mongo", {})
    if not isinstance(mongo, dict):
        raise ConfigError(f"{source}: key 'mongo' must be a mapping, got {_kind(mongo)}")
    for key, value in (("mongo_username", user), ("mongo_password", password)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: key '{key}': expected a non-empty string (with "
                              f"{'mongo_password' if key == 'mongo_username' else 'mongo_username'}), "
                              f"got {value!r}")
    uri = mongo.get("uri", MongoConfig.uri)
    scheme, sep, rest = uri.partition("://") if isinstance(uri, str) else ("", "", "")
    if not sep or "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"{source}: key 'mongo_username': cannot be added to mongo.uri {redact(uri)!r}; "
                          "write the credentials in mongo.uri (mongodb://user:password@host/) instead")
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    mongo["uri"] = f"{scheme}://{quote(user)}:{quote(password)}@{rest}"


@dataclass
class _Context:
    source: str
    base_dir: str
    secret_files: list = field(default_factory=list)


def _registered_sections():
    """{section: config class} of the registered sinks whose sections are not Config fields."""
    from . import sinks  # it imports this module's section classes
    fields = {f.name for f in dataclasses.fields(Config)}
    return {t.section: t.config_class for t in sinks.types() if t.section not in fields}


def _build(cls, data, prefix, ctx, also_known=()):
    if not isinstance(data, dict):
        raise ConfigError(f"{ctx.source}: key '{prefix.rstrip('.')}' must be a mapping, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_FROM_YAML}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted({*fields, *also_known}))
        raise ConfigError(f"{ctx.source}: unknown key '{prefix}{unknown[0]}' (known here: {known})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if dataclasses.is_dataclass(f.type):
            section = data.get(name)
            values[name] = _build(f.type, {} if section is None else section, key + ".", ctx)
        elif name not in data:
            if f.type is Path:  # a default path is relative to the config file too
                values[name] = _convert(Path, f.default, key, ctx)
        else:
            values[name] = _convert(f.type, data[name], key, ctx)
    return cls(**values)


def _convert(typ, value, key, ctx):
    def fail(expected):
        raise ConfigError(f"{ctx.source}: key '{key}': expected {expected}, got {value!r}")

    if get_origin(typ) is list:
        (item_type,) = get_args(typ)
        if value is None:
            return []
        if not isinstance(value, list):
            fail("a list")
        items = [_convert(item_type, v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
        if item_type is Secret:  # a file may hold several
            return [secret for group in items for secret in group]
        return items
    if typ is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail("a mapping of names to values")
        for k, v in value.items():
            if not isinstance(v, (str, int, float, bool)):
                raise ConfigError(f"{ctx.source}: key '{key}.{k}': expected a string, number or "
                                  f"true/false, got {v!r}")
        return dict(value)
    if typ is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if typ is ByteSize:
        return ByteSize(_parse_size(value, fail))
    if typ is Workers:
        if value == "auto":
            return Workers(os.cpu_count() or 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail('a number of processes (1 or more) or "auto" (one per core)')
        return Workers(value)
    if typ is Port:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            fail("a TCP port number 0-65535")
        return Port(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail("a non-negative integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            fail("a non-negative number")
        return float(value)
    if not isinstance(value, str):
        fail("a string")
    if typ is Path:
        if not value:
            return Path("")  # not set
        return Path(os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(value))))
    if typ is Secret:
        return _secrets(value, key, ctx)
    if typ is Host:
        if value in ("localhost", "*"):
            return Host("127.0.0.1" if value == "localhost" else "0.0.0.0")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            fail("an IP address to bind to, such as 127.0.0.1 or 0.0.0.0")
        return Host(value)
    if typ is ZmqAddress:
        if value and not _ZMQ_ADDRESS.match(value):
            fail("a ZeroMQ endpoint such as tcp://127.0.0.1:6543 (or '' to disable)")
        return ZmqAddress(value)
    choices = getattr(typ, "choices", None)
    if choices and value not in choices:
        fail("one of " + ", ".join(choices))
    return value


_ZMQ_ADDRESS = re.compile(r"^(tcp://(\*|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\*|\d{1,5})|ipc://.+|inproc://.+)\Z")


def _secrets(value, key, ctx):
    """The token(s) a `Secret` entry stands for (a list: a file may hold several)."""
    kind, _, name = value.partition(":")
    if kind == "env" and name:
        if not os.environ.get(name):
            raise ConfigError(f"{ctx.source}: key '{key}': environment variable {name} is not set or empty")
        return [Secret(os.environ[name].strip())]
    if kind == "file" and name:
        path = os.path.join(ctx.base_dir, os.path.expanduser(name))
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{ctx.source}: key '{key}': cannot read tokens from {path}: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        tokens = [Secret(line) for line in lines if line and not line.startswith("#")]
        if not tokens:
            raise ConfigError(f"{ctx.source}: key '{key}': {path} holds no token")
        ctx.secret_files.append((key, path))
        return tokens
    if not value.strip():
        raise ConfigError(f"{ctx.source}: key '{key}': a token cannot be empty")
    ctx.secret_files.append((key, ctx.source))  # written in the config file itself
    return [Secret(value)]


# journal.dir may be none of these, nor anything under a tree of the system's own files: zspark
# makes its directory owner-only and fills it with journal files.
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                 "/sys", "/usr")
_OUTSIDE_SYSTEM_TREES = ("/usr/local",)  # /usr/local/var/zspark is fine
_SYSTEM_DIRS = ("/", "/home", "/lost+found", "/media", "/mnt", "/opt", "/root", "/run", "/snap", "/srv",
                "/tmp", "/var", "/var/cache", "/var/lib", "/var/local", "/var/log", "/var/mail", "/var/opt",
                "/var/run", "/var/spool", "/var/tmp", "/usr/local", "/usr/local/bin", "/usr/local/etc",
                "/usr/local/include", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share",
                "/usr/local/src", "/usr/local/var")


def _system_dir(path):
    """What makes `path` a system directory ("a system directory", "inside /etc"), or None."""
    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        pass
    if path in _SYSTEM_DIRS:
        return "a system directory"
    if path in homes:
        return "a home directory itself"
    if any(path == tree or path.startswith(tree + "/") for tree in _OUTSIDE_SYSTEM_TREES):
        return None
    for tree in _SYSTEM_TREES:
        if path == tree:
            return "a system directory"
        if path.startswith(tree + "/"):
            return f"inside the system directory {tree}"
    return None


def _check_journal_dir(config):
    """journal.dir must be a directory of zspark's own, not `/` or a system directory."""
    path = config.journal.dir
    if not path:
        raise ConfigError(f"{config.source}: key 'journal.dir' cannot be empty: give the journal a "
                          "directory of its own, such as /var/lib/zspark/journal")
    shown = os.path.normpath(os.path.abspath(path))
    for candidate in (shown, os.path.realpath(shown)):
        what = _system_dir(candidate)
        if what:
            real = f" (that is {candidate})" if candidate != shown else ""
            raise ConfigError(f"{config.source}: key 'journal.dir': {shown}{real} is {what}; "
                              "zspark would make it owner-only and fill it with journal files: give the "
                              "journal a directory of its own, such as /var/lib/zspark/journal")


def _check_authorized_keys(config):
    """Whoever can add a file to zmq.curve_authorized_keys, or change one there, admits clients."""
    directory = config.zmq.curve_authorized_keys
    if not directory or not os.path.isdir(directory):
        return
    paths = [directory] + sorted(os.path.join(directory, name) for name in os.listdir(directory))
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if others_can_write(st):
            what = "anyone on this machine could admit a client by adding a key file" if path == directory \
                else "anyone on this machine could put their own key in it"
            raise ConfigError(f"{config.source}: key 'zmq.curve_authorized_keys': {path} is writable by "
                              f"group or others (mode {stat.S_IMODE(st.st_mode):04o}): {what}; fix: chmod "
                              f"go-w {path}")


def secret_file_warnings(config):
    """One message for each file holding a secret that others can read (or group or others can
    change): `zcmd serve` logs them at start and `zcmd validate` prints them. Each names the key
    and the path and says how to fix it."""
    files = [("http.keyfile", config.http.keyfile), ("zmq.curve_secret_key", config.zmq.curve_secret_key)]
    files += config.secret_files
    if holds_secret(config.mongo.uri):
        files.append(("mongo.uri", config.source))
    for name, value in config.kafka.producer.items():
        if name.endswith((".location", ".file")) and "key" in name:
            files.append((f"kafka.producer.{name}", str(value)))
        elif is_secret_name(name):
            files.append((f"kafka.producer.{name}", config.source))
    warnings = []
    for key, path in files:
        try:
            st = os.stat(path) if path else None
        except OSError:  # not a file (`<dict>`), or gone: nothing to say here
            continue
        if st is None:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o004 and not others_can_write(st):
            continue
        inside = "the config file holding it, " if path == config.source else ""
        how = "can be read by others" if mode & 0o004 else "can be changed by group or others"
        warnings.append(f"{key}: {inside}{path} {how} (mode {mode:04o}): it holds a secret; "
                        f"chmod 600 {path}")
    return warnings


def config_warnings(config):
    """Everything `zcmd serve` logs at start and `zcmd validate` prints about a usable config:
    the Zarkov keys it ignores (one message naming them all), then secret_file_warnings."""
    warnings = []
    if config.ignored_zarkov_keys:
        warnings.append(f"{config.source}: Zarkov's keys {', '.join(config.ignored_zarkov_keys)} mean "
                        "nothing to zspark and are ignored (README: Coming from Zarkov)")
    return warnings + secret_file_warnings(config)


def _parse_size(value, fail):
    if isinstance(value, bool):
        fail("a size in bytes such as 1048576 or '64MiB'")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    fail("a size in bytes such as 1048576 or '64MiB'")


def _kind(value):
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def describe(config: Config) -> dict:
    """The config as plain data (for `zcmd validate` and `/status`), without secrets."""
    data = dataclasses.asdict(config)
    for name in _NOT_FROM_YAML:
        data.pop(name, None)
    data.update({name: dataclasses.asdict(section) for name, section in config.sink_sections.items()})
    for name in list(data["kafka"]["producer"]):
        if is_secret_name(name):
            data["kafka"]["producer"][name] = "<hidden>"
    for name in ("tokens", "status_tokens"):
        if data["http"][name]:
            data["http"][name] = [f"<{len(data['http'][name])} configured>"]
    return redact_data(data)  # URIs (mongo.uri...) shown with their passwords masked
