"""What SIGHUP does to a running `zcmd serve`: reopen the log files, read the config file again,
apply what can change while serving, and say what cannot.

Applied live (LIVE): `http.tokens` and `http.status_tokens` (token files are read again too),
`http.cors.allowed_origins` and `http.cors.max_age_s`, and `log.level`. Any other setting changed
in the file keeps its running value until a restart; the log line names those keys (never their
values: some are secrets). A config that no longer loads is logged as an error and changes
nothing. The signal never stops the server. HTTP worker processes (`http.workers`) get the
same from the owner over their link: they reopen their log files and apply what it applied.
"""
import copy
import dataclasses
import logging

from . import blocking, config as config_module, logsetup

log = logging.getLogger("zspark.reload")

LIVE = ("http.tokens", "http.status_tokens", "http.cors.allowed_origins", "http.cors.max_age_s", "log.level")
_NOT_SETTINGS = ("source", "secret_files", "ignored_zarkov_keys")


class Reloader:
    """SIGHUP for one server. Made before `server.start()`, which adjusts a few settings to the
    machine (http.max_connections to the open-files limit): a change is what differs from the
    file as it was loaded, with what SIGHUP applied since."""

    def __init__(self, server):
        self.server = server
        self.running = copy.deepcopy(server.config)

    def on_sighup(self):
        """The SIGHUP handler of `zcmd serve` (gevent runs it in a greenlet of its own)."""
        path = self.server.config.source
        log.info("SIGHUP: reopening the log files%s", "" if path == "<defaults>" else f" and reloading {path}")
        logsetup.reopen()
        if path == "<defaults>":
            self._tell_workers(self.server.config, [])
            return
        new = blocking.call(_load, path)  # reading the files (tokens too) off the event loop
        if isinstance(new, config_module.ConfigError):
            log.error("SIGHUP: the config no longer loads, nothing changed: %s", new)
            self._tell_workers(self.server.config, [])
            return
        changed = _changed(self.running, new)
        live = [key for key in changed if key in LIVE]
        for config in (self.running, self.server.config):
            _copy_settings(new, config, live)
        self._apply(live)
        self._tell_workers(self.server.config, live)
        rest = [key for key in changed if key not in LIVE]
        log.info("SIGHUP: %s%s", f"applied {', '.join(live)}" if live else "no change to apply",
                 f"; changed in the file but applied only at a restart: {', '.join(rest)}" if rest else "")

    def _tell_workers(self, config, keys):
        """HTTP worker processes (http.workers) reopen their log files and apply `keys` too."""
        reload_workers = getattr(self.server.http, "reload", None)
        if reload_workers is not None:
            reload_workers(config, keys)

    def _apply(self, keys):
        config = self.server.config
        if "log.level" in keys:
            logsetup.set_level(config.log.level)
        if ("http.tokens" in keys or "http.status_tokens" in keys) and self.server.http is not None:
            self.server.http.set_tokens(config.http.tokens, config.http.status_tokens)
        web = getattr(self.server.http, "web", None)  # (HTTP workers: theirs, by _tell_workers)
        if any(key.startswith("http.cors.") for key in keys) and web is not None:
            web.reload_cors(config.http.cors)


def _load(path):
    try:
        return config_module.load(path)
    except config_module.ConfigError as e:  # a value, not raised in the pool (see blocking.py)
        return e


def _copy_settings(source, target, keys):
    for key in keys:
        *sections, name = key.split(".")  # http.cors.allowed_origins: two sections deep
        src, dst = source, target
        for section in sections:
            src, dst = getattr(src, section), getattr(dst, section)
        setattr(dst, name, getattr(src, name))


def _changed(old, new):
    """The dotted keys whose values differ between two Configs, in order."""
    before, after = _flat(dataclasses.asdict(old)), _flat(dataclasses.asdict(new))
    return [key for key in {**before, **after} if before.get(key) != after.get(key)]


def _flat(data, prefix=""):
    out = {}
    for key, value in data.items():
        if not prefix and key in _NOT_SETTINGS:
            continue
        if key == "sink_sections" and not prefix:  # registered sinks' sections: top-level keys
            out.update(_flat(value))
        elif isinstance(value, dict) and key != "producer":  # kafka.producer is one setting
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
