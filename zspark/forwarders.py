"""Which forwarders `zcmd serve` runs, and where: one per enabled sink (the sink registry), each
a green thread of the serving process (Forwarder), or with `forward.own_process` a child process
of its own behind a ForwarderProcess (zspark/fwdproxy.py) that the server uses the same way.
"""
from . import sinks
from .errors import StartupError
from .forwarder import Forwarder


def make_forwarder(journal, sink, fc):
    """The Forwarder of `sink` over `journal`, as the `forward` config section `fc` says."""
    return Forwarder(journal, sink, batch_size=fc.batch_size, batch_wait=fc.batch_wait_ms / 1000.0,
                     backoff_initial=fc.backoff_initial_ms / 1000.0, backoff_max=fc.backoff_max_s)


def build_sinks(config, topics=None):
    """The sinks the config enables, in delivery order (zspark/sinks/__init__.py's registry);
    `topics` the process's TopicPolicy, shared with the Kafka sink."""
    try:
        return sinks.build_enabled(config, sinks.Context(config, topics=topics))
    except Exception as e:  # a bad broker list or URI, a PUB address in use
        raise StartupError(f"cannot set up forwarding: {e}") from None


def build(config, journal, topics=None):
    """The forwarders of the enabled sinks, in delivery order, not started yet."""
    if not config.forward.own_process:
        return [make_forwarder(journal, sink, config.forward) for sink in build_sinks(config, topics)]
    from .fwdproxy import ForwarderProcess
    return [ForwarderProcess(journal, t.name, config, topics)
            for t in sinks.types() if sinks.section(config, t).enabled]


def processes(forwarders):
    """The child processes among `forwarders` (children.Child), for /status and /metrics."""
    return [f.child for f in forwarders if getattr(f, "child", None) is not None]
