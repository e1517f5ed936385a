"""Open-file descriptors: the process's limit, raised at start to what it is allowed, and the
share of it that HTTP connections may take.

Every connection, journal segment, cursor, reader and broker or database socket is a descriptor.
Services are often started with a soft limit of 1,024 and a much higher hard limit; the soft one
is raised to the hard one (no privilege needed). What HTTP connections may hold is capped below
the limit (`http.max_connections`, lowered here when the limit is smaller) so that the journal,
the forwarders and the destinations always have descriptors left; running out anyway is never
fatal (the forwarders and cursors retry, the accept loops back off).
"""
import logging
import resource

log = logging.getLogger("zspark.descriptors")

# Descriptors kept for everything but HTTP connections: journal segments and readers, cursors,
# the lock, dead-letter and state files, Kafka and MongoDB sockets, ZeroMQ's own, the event loop's.
RESERVED = 256


def raise_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; log both; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _kernel_max(soft)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open files limit raised from %d to %d (the hard limit)", soft, target)
            return target
        except (OSError, ValueError) as e:
            log.warning("open files limit %d could not be raised to %d: %s", soft, target, e)
            return soft
    log.info("open files limit %d (hard limit %s)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft


def connection_cap(wanted, limit, also_held=0, listeners=1):
    """How many HTTP connections each of `listeners` HTTP listeners may hold (the main one and
    http.pixel.bind's each have the cap): `wanted`, or fewer when the descriptor limit would
    leave the rest of the process without descriptors (at least a few are always allowed);
    `also_held`: the connections each listener takes beyond the cap (for /imok)."""
    room = max(16, (limit - RESERVED) // listeners - also_held)
    if wanted > room:
        log.warning("http.max_connections %d is more than the open files limit %d leaves room for%s; "
                    "allowing %d connections%s (raise the limit, e.g. LimitNOFILE= in systemd or "
                    "ulimit -n, for more)", wanted, limit,
                    f" with {listeners} HTTP listeners" if listeners > 1 else "", room,
                    " on each" if listeners > 1 else "")
        return room
    return wanted


def _kernel_max(fallback):
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return fallback
