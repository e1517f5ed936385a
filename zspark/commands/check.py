"""A Nagios / Icinga plugin: check the running server's /status against thresholds.

Prints exactly one line, the status, a text naming what triggered it, and performance data:

  ZSPARK OK - 2 forwarders running, max lag 0, journal 3% full | lag_kafka=0;1000;10000;0 ...

and exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The worst condition wins:

  a forwarder's lag (records in the journal not yet delivered) above --lag-warn / --lag-crit
  the journal above --full-warn / --full-crit percent of journal.max_bytes (at 100% the server
      answers 503 and refuses events)
  a forwarder not running (backing_off: its destination fails and it retries) -> --not-running
  a forwarder failed (stopped for good by a bug or a permanent refusal, until a restart) -> CRITICAL
  a child process (forward.own_process) not running: exited, being started again -> --not-running
  the server stopping -> WARNING
  no server answering, an answer that is not zspark's /status, bad arguments or a bad config
      -> UNKNOWN

Performance data (label=value[UOM];warn;crit;min;max): lag_<forwarder> in records,
journal_full in percent, rate_<source> accepted events per second over about the last minute,
restarts_<process> (a child process's restarts, spaces in its name as `_`).

The URL and token come from the config as for `zcmd status`; --url overrides.

  zcmd -y /etc/zspark.yaml check --lag-warn 5000 --lag-crit 50000 --not-running critical
"""
from ..safetext import one_line as safe
from . import argtypes
from .running import BadAnswer, NoServer, add_server_arguments, fetch_status, journal_percent, status_url
from .status import clip

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
LEVELS = {"warning": WARNING, "critical": CRITICAL}


def add_arguments(parser):
    add_server_arguments(parser, "UNKNOWN when no answer comes within this")
    parser.add_argument("--lag-warn", type=argtypes.record_count, default=1000, metavar="RECORDS",
                        help="WARNING when a forwarder's lag is above this (default 1000)")
    parser.add_argument("--lag-crit", type=argtypes.record_count, default=10000, metavar="RECORDS",
                        help="CRITICAL when a forwarder's lag is above this (default 10000)")
    parser.add_argument("--full-warn", type=argtypes.percent, default=80.0, metavar="PERCENT",
                        help="WARNING when the journal is fuller than this percent of "
                             "journal.max_bytes (default 80)")
    parser.add_argument("--full-crit", type=argtypes.percent, default=90.0, metavar="PERCENT",
                        help="CRITICAL above this percent (default 90)")
    parser.add_argument("--not-running", "--backing-off", dest="not_running", choices=sorted(LEVELS),
                        default="warning",
                        help="the status when a forwarder is not running, e.g. backing_off because "
                             "its destination is down (default warning)")


def usage_error(message):
    """Bad arguments or config: UNKNOWN, on stdout where the monitoring system looks."""
    print(f"ZSPARK UNKNOWN - {_clean(message)}")
    return UNKNOWN


def run(args, config):
    if args.lag_warn > args.lag_crit or args.full_warn > args.full_crit:
        return usage_error("a warning threshold is above its critical one "
                           "(--lag-warn <= --lag-crit, --full-warn <= --full-crit)")
    url = args.url or status_url(config)
    try:
        status = fetch_status(url, config, args.timeout)
        code, text, perfdata = evaluate(status, args)
    except NoServer as e:
        return _report(UNKNOWN, f"{e} (is `zcmd serve` running?)", [])
    except BadAnswer as e:
        return _report(UNKNOWN, str(e), [])
    except (KeyError, TypeError, ValueError) as e:
        return _report(UNKNOWN, f"{url} answered a /status this check cannot read: {e!r}", [])
    return _report(code, text, perfdata)


def evaluate(status, args):
    """(exit code, status text, perfdata items) for a /status answer."""
    problems = []  # (level, text)
    if status.get("stopping"):
        problems.append((WARNING, "server stopping"))
    forwarders = status.get("forwarders", {})
    perfdata = []
    for name, f in sorted(forwarders.items()):
        lag = int(f["lag"])
        if lag > args.lag_crit:
            problems.append((CRITICAL, f"{name} lag {lag} > {args.lag_crit}"))
        elif lag > args.lag_warn:
            problems.append((WARNING, f"{name} lag {lag} > {args.lag_warn}"))
        if f["state"] != "running":
            error = f" ({clip(f['last_error'], 100)})" if f.get("last_error") else ""
            level = CRITICAL if f["state"] == "failed" else LEVELS[args.not_running]
            problems.append((level, f"{name} {f['state']}{error}"))
        perfdata.append(_perf(f"lag_{name}", lag, "", args.lag_warn, args.lag_crit, 0))
    for name, p in status.get("processes", {}).items():
        if name == "owner":
            continue  # it answered this /status
        if p["state"] != "running":
            exit_ = f" ({clip(p['last_exit'], 100)})" if p.get("last_exit") else ""
            problems.append((LEVELS[args.not_running], f"{name} process {p['state']}{exit_}"))
        perfdata.append(_perf(f"restarts_{name.replace(' ', '_')}", int(p["restarts"]), "c", None, None, 0))
    full = journal_percent(status)
    if full > args.full_crit:
        problems.append((CRITICAL, f"journal {_num(full)}% full > {_num(args.full_crit)}%"))
    elif full > args.full_warn:
        problems.append((WARNING, f"journal {_num(full)}% full > {_num(args.full_warn)}%"))
    perfdata.append(_perf("journal_full", round(full, 2), "%", args.full_warn, args.full_crit, 0, 100))
    for name, s in sorted(status.get("sources", {}).items()):
        perfdata.append(_perf(f"rate_{name}", round(float(s.get("rate", 0.0)), 3), "", None, None, 0))

    running = sum(1 for f in forwarders.values() if f["state"] == "running")
    summary = [f"{running} forwarder{'s' if running != 1 else ''} running" if running == len(forwarders)
               else f"{running} of {len(forwarders)} forwarders running"]
    if forwarders:
        summary.append(f"max lag {max(int(f['lag']) for f in forwarders.values())}")
    summary.append(f"journal {_num(full, 0 if full >= 10 else 1)}% full")
    code = max((level for level, _ in problems), default=OK)
    triggered = [text for level, text in sorted(problems, key=lambda p: -p[0])]
    return code, "; ".join(triggered + [", ".join(summary)]), perfdata


def _report(code, text, perfdata):
    line = f"ZSPARK {NAMES[code]} - {_clean(text)}"
    if perfdata:
        line += " | " + " ".join(perfdata)
    print(line)
    return code


def _perf(label, value, uom, warn, crit, minimum=None, maximum=None):
    label = safe(label)  # a forwarder's or source's name, as the server gave it
    if any(c in label for c in " '="):
        label = "'" + label.replace("'", "''") + "'"
    fields = [f"{_num(value)}{uom}"] + ["" if v is None else _num(v) for v in (warn, crit, minimum, maximum)]
    while fields[-1] == "":  # trailing empty fields may be dropped
        fields.pop()
    return f"{label}=" + ";".join(fields)


def _num(value, digits=2):
    value = round(float(value), digits)
    return str(int(value)) if value == int(value) else f"{value:g}"


def _clean(text):
    """One safe line without '|', which would start the performance data."""
    return safe(" ".join(str(text).replace("|", "/").split()))
