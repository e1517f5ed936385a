"""Ask the running server for its /status and print a readable summary.

The URL comes from the config (http.host, http.port, http.root; a server listening on 0.0.0.0 is
asked on 127.0.0.1); --url overrides it. Where http.tokens is set, the first token is sent as
`Authorization: Bearer ...`.

  zcmd -y development.yaml status            node, uptime, sources, forwarders, journal
  zcmd -y development.yaml status --json     the raw /status JSON
  zcmd status --url http://10.0.0.5:8080/status

Exit status: 0 the summary was printed; 2 bad config or arguments; 3 no server answered at the
URL (not running, wrong address, or no answer within --timeout); 4 something answered, but not
with zspark's /status (an HTTP error such as 401, or not JSON).
"""
import json
import sys
import time

from ..safetext import one_line as safe, shorten
from .running import BadAnswer, NoServer, add_server_arguments, fetch_status, journal_percent, status_url

EXIT_OK, EXIT_NO_SERVER, EXIT_BAD_ANSWER = 0, 3, 4


def add_arguments(parser):
    add_server_arguments(parser, "how long to wait for an answer")
    parser.add_argument("--json", action="store_true", help="print the raw /status JSON instead")


def run(args, config):
    url = args.url or status_url(config)
    try:
        status = fetch_status(url, config, args.timeout)
    except NoServer as e:
        print(f"zcmd status: {safe(e)}; is it running? Start it with `zcmd -y CONFIG serve`, or give "
              "its address with --url", file=sys.stderr)
        return EXIT_NO_SERVER
    except BadAnswer as e:
        print(f"zcmd status: {safe(e)}", file=sys.stderr)
        return EXIT_BAD_ANSWER
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(summary(status, url))
    return EXIT_OK


def summary(status, url):
    lines = [f"zspark {status.get('version', '?')}, node {status.get('node', '?')} on "
             f"{status.get('host', '?')} (pid {status.get('pid', '?')}), up "
             f"{duration(status.get('uptime_s', 0))}{', STOPPING' if status.get('stopping') else ''}"
             f"  [{url}]"]
    sources = status.get("sources", {})
    rows = [["sources", "accepted", "rejected", "refused", "events/s"]]
    for name, s in sorted(sources.items()):
        rows.append([f"  {name}", s.get("accepted", 0), s.get("rejected", 0), s.get("refused", 0),
                     f"{s.get('rate', 0.0):.1f}"])
    lines += table(rows, "lrrrr")
    for name, s in sorted(sources.items()):
        if s.get("last_rejection"):
            lines.append(f"  last rejection ({name}): {clip(s['last_rejection'], 100)}")
    forwarders = status.get("forwarders", {})
    if forwarders:
        now = status.get("time", time.time())
        rows = [["forwarders", "state", "lag", "delivered", "failed", "last error"]]
        for name, f in sorted(forwarders.items()):
            error = "-"
            if f.get("last_error"):
                error = clip(f["last_error"], 80)
                if f.get("last_error_time"):
                    error += f" ({duration(now - f['last_error_time'])} ago)"
            rows.append([f"  {name}", f.get("state", "?"), f.get("lag", 0), f.get("delivered", 0),
                         f.get("failed", 0), error])
        lines += table(rows, "llrrrl")
    else:
        lines.append("forwarders  none enabled (kafka, mongo and pub are off in the config)")
    processes = status.get("processes", {})
    if len(processes) > 1:  # the owner alone is on the first line
        rows = [["processes", "pid", "state", "restarts", "last exit"]]
        for name, p in processes.items():
            rows.append([f"  {name}", p.get("pid") or "-", p.get("state", "?"), p.get("restarts", 0),
                         p.get("last_exit") or "-"])
        lines += table(rows, "lrlrl")
    j = status["journal"]
    latency = j.get("sync_latency_ms", {})
    rows = [["journal", j.get("dir", "?")],
            ["  size", f"{size(j['bytes'])} of {size(j.get('max_bytes', 0))} "
                       f"({journal_percent(status):.1f}% full)"],
            ["  offsets", f"{j.get('first_offset', 0)} .. {j.get('end_offset', 0)} in "
                          f"{j.get('segments', 0)} segment(s)"],
            ["  sync", f"{j.get('sync', '?')}: {j.get('syncs', 0)} syncs, latency last "
                       f"{latency.get('last', 0):.2f} ms, avg {latency.get('avg', 0):.2f} ms, "
                       f"max {latency.get('max', 0):.2f} ms"]]
    if j.get("write_errors"):
        rows.append(["  errors", f"{j['write_errors']} failed writes (see the server's log)"])
    lines += table(rows, "ll")
    return "\n".join(safe(line) for line in lines)  # all of it came from the server


def table(rows, align):
    """Rows of cells as aligned text lines; `align` has one 'l' or 'r' per column."""
    cells = [[safe(c) for c in row] for row in rows]  # escaped before they are measured
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(align))]
    out = []
    for row in cells:
        parts = [c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(parts).rstrip())
    return out


def clip(text, limit):
    """`text` (a reason, an error: from a sender or a destination) on one safe line of at most
    `limit` characters: runs of whitespace become one space, other control characters escapes."""
    return shorten(" ".join(str(text).split()), limit)


def duration(seconds):
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def size(nbytes):
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
