"""The fault suite: zspark's worst days, repeatable, with figures.

Each module puts `zcmd serve` (a child process) through one kind of fault while it forwards to the
real local broker and database, and checks from outside that no acknowledged event is lost:

    test_sigkill      killed with SIGKILL at random moments under mixed HTTP and ZeroMQ load
    test_outages      the broker, then the database, down for a stretch under load (RSS bounded,
                      the backlog drains without a restart)
    test_journal_full the journal at its size cap: 503 + Retry-After, ingest resumes by itself
    test_disk_full    a real ENOSPC from a small tmpfs (an injected one where mounting is impossible)
    test_corruption   bytes flipped, segments truncated and deleted: only damaged records are lost
    test_sigterm      stopped with SIGTERM while the forwarders are busy: exit 0, cursors saved

Every test prints its seed first and a one-line summary of its counts last (sent, acknowledged,
delivered, duplicated, rejected), on stderr. Randomness comes from that seed:
`ZSPARK_FAULT_SEED=N scripts/test tests.faults` replays a run; `ZSPARK_FAULTS_LONG=1` makes the
runs bigger and longer (more kills, longer outages, more damage).
"""
