"""Sinks: where the forwarders deliver journaled events, and the one registry of them.

A sink type is registered once, here (`BUILTIN`) or by `register()`, as a `SinkType`: its name
(the forwarder's and its cursor file's, `zcmd replay --to NAME`), its config section and the
dataclass that section is read into (with an `enabled` field), and the factory that builds a sink
from that section. `zcmd serve` builds the enabled ones (`build_enabled`), `zcmd replay` builds
the one named by --to (`build`); neither knows any sink by name. A new sink is one module with
its config class and a `build(section, context)` function, plus one line in `BUILTIN`.

What a built sink must offer (the forwarder's contract, see zspark/forwarder.py):

    name                        the sink type's name
    send(items) -> rejected     deliver a list of (offset, event); return (offset, event, reason)
                                for those refused for good; raise TransientDeliveryError for
                                anything worth retrying (an OSError counts as one too), and
                                PermanentDeliveryError for a refusal for good that names no
                                record (zspark/errors.py); anything else is a bug, which stops
                                the forwarder
    describe() -> str           where it delivers, for logs and /status (no secrets)
    healthcheck(timeout)        return once the destination answers; raise Unreachable (saying
                                what and which config key) if it does not within `timeout` s
    close(abandon=False)        release it; `abandon`: the caller gives up on what is still
                                queued (drop it rather than wait for it)
    on_destination              optional: see zspark/forwarder.py
    send_records(records, hours=False) -> Sent
                                optional, instead of send for the forwarder: deliver journal
                                records (offset, payload) as read, decoding what it needs
                                (the Kafka sink: most records never become dicts); a Sent
"""
import dataclasses
import importlib
from typing import Callable, Optional, Union

from ..config import KafkaConfig, MongoConfig, PubConfig
from ..errors import Unreachable  # noqa: F401 (sinks.Unreachable, as sinks raise it)


def first_line(e):
    """An exception's message cut to one short line (a driver's may run to many)."""
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:300]


@dataclasses.dataclass
class Sent:
    """What a sink made of a batch of journal records (send_records)."""
    rejected: list  # (offset, event, reason): refused for good, to be dead-lettered
    delivered: int  # events the destination confirmed
    undecodable: list = dataclasses.field(default_factory=list)  # (offset, payload, error): intact
    # records that are not events, to be dead-lettered
    hours: object = None  # with hours=True: hours.HourCounts of the events delivered


@dataclasses.dataclass(frozen=True)
class SinkType:
    name: str
    config_class: type  # a dataclass with `enabled`, read from the YAML section `section`
    factory: Union[str, Callable]  # build(section, context) -> sink, or "module:function"
    section: Optional[str] = None  # the YAML section; defaults to `name`
    # Its deliveries drive the hour_complete notices (zspark/hours.py); its sinks then have
    # `topic_for(event)`.
    tracks_hours: bool = False

    def __post_init__(self):
        if self.section is None:
            object.__setattr__(self, "section", self.name)

    def build(self, section, context):
        factory = self.factory
        if isinstance(factory, str):  # imported only when used: drivers load at the first build
            module, _, function = factory.partition(":")
            factory = getattr(importlib.import_module(module), function)
        return factory(section, context)


@dataclasses.dataclass
class Context:
    """What a sink's factory gets besides its own config section."""
    config: object  # the whole Config (journal.dir, node.id...)
    topics: object = None  # the server's TopicPolicy (zspark/topics.py), shared with ingest
    replay: bool = False  # built for `zcmd replay`: shared state is read, never written
    timeout_ms: Optional[int] = None  # a cap on the sink's own timeouts (replay's --timeout / 3)
    linger_s: float = 0.0  # how long close() lets queued messages leave (ZeroMQ PUB)


# In delivery order.
BUILTIN = (
    SinkType("kafka", KafkaConfig, "zspark.sinks.kafka:build", tracks_hours=True),
    SinkType("mongo", MongoConfig, "zspark.sinks.mongo:build"),
    SinkType("pub", PubConfig, "zspark.sinks.pub:build"),
)

_registry = {t.name: t for t in BUILTIN}


def register(sink_type):
    """Add a sink type (before the config is loaded: its section is read from the YAML)."""
    if sink_type.name in _registry or sink_type.name == "stdout":
        raise ValueError(f"a sink named {sink_type.name!r} is already registered")
    if any(t.section == sink_type.section for t in _registry.values()):
        raise ValueError(f"config section {sink_type.section!r} is already a sink's")
    _registry[sink_type.name] = sink_type


def added():
    """The sink types registered beyond the built-in ones (a child process registers them too)."""
    return [t for t in _registry.values() if t not in BUILTIN]


def types():
    """The registered sink types, in delivery order."""
    return list(_registry.values())


def names():
    return [t.name for t in _registry.values()]


def get(name):
    return _registry[name]


def section(config, sink_type):
    """The sink type's config section in `config` (a Config)."""
    return config.section(sink_type.section)


def build(name, config, context, **overrides):
    """The sink `name` built from its section of `config` (enabled or not), with `overrides`
    (field=value) applied to that section."""
    sink_type = get(name)
    values = section(config, sink_type)
    if overrides:
        values = dataclasses.replace(values, **overrides)
    return sink_type.build(values, context)


def build_enabled(config, context):
    """A sink for each enabled section, in delivery order. If one cannot be built, those built
    already are closed and the error goes up."""
    built = []
    try:
        for sink_type in types():
            values = section(config, sink_type)
            if values.enabled:
                built.append(sink_type.build(values, context))
    except BaseException:
        for sink in built:
            sink.close()
        raise
    return built
