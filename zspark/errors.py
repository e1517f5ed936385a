"""Every exception zspark raises on purpose, in one hierarchy: what went wrong decides the class,
and the class decides what the caller does.

    ZsparkError
      DeliveryError                 a sink could not deliver a batch (zspark/forwarder.py)
        TransientDeliveryError      the destination is down, slow or busy: retry the batch later
        PermanentDeliveryError      the destination refuses for good and cannot say which record:
                                    no retry mends it, and passing the batch over would lose it
      InputRefused                  a sender's input is refused (its str() is the reason to give it)
        InvalidEvent                an event that cannot be accepted (zspark/event.py)
          BatchRejected             one item of a batch is invalid (zspark/ingest.py)
      StartupError                  the server or a command cannot start
        ConfigError                 a config value that cannot be used (zspark/config.py)
        KeyFileError                a TLS or CURVE key file that cannot be used
          TlsError, CurveError      (zspark/sources/curve.py)
        Unreachable                 a sink's healthcheck found its destination unreachable
        ServiceError, PortInUse     a local development service (zspark/localservices.py)
      JournalError                  the journal cannot take or hold records (zspark/journal/journal.py:
                                    JournalFull, TooLargeForJournal, JournalClosed, JournalLocked,
                                    UnsafeJournal)
      CommandError                  a command-line command failed (zspark/commands/: UsageError,
                                    DeliveryFailed, NoServer, BadAnswer, RotateFailed)

A record the destination refuses for good, among others it takes, is not an exception: `send`
returns it with its reason, and the forwarder dead-letters it (see zspark/sinks/__init__.py).

The classes that belong to one module are defined there, under these bases; their old import
paths keep working.
"""
from .safetext import one_line


class ZsparkError(Exception):
    """The root of zspark's own exceptions."""


# -- delivery ---------------------------------------------------------------------------------

class DeliveryError(ZsparkError):
    """A sink could not deliver a batch; nothing of it counts as delivered."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying: the destination is down, timed out or busy (the forwarder backs off)."""


class PermanentDeliveryError(DeliveryError):
    """The destination refuses the batch for good and cannot say which record: the forwarder
    stops (state `failed`), its cursor where it was, until the cause is fixed and it restarts."""


# What a sink's send may raise that is worth retrying. An OSError is the machine's or the
# network's trouble (a refused or reset connection, a timeout, a full disk, descriptors running
# out), which passes as a destination's outage does; a bug in a sink is a TypeError, a KeyError...
# never an OSError. Anything else stops the forwarder (see zspark/forwarder.py).
RETRYABLE = (TransientDeliveryError, OSError)


def describe(e):
    """An exception for a log line or /status: a DeliveryError's message (written to be read
    there), else its type and message."""
    return str(e) if isinstance(e, DeliveryError) else f"{type(e).__name__}: {e}"


# -- refusals of input ----------------------------------------------------------------------------

class InputRefused(ZsparkError):
    """A sender's input is refused; str() is the reason to give the sender."""


class InvalidEvent(InputRefused, ValueError):
    """The event cannot be accepted; str() is the reason to give the sender.

    The reason names the sender's own keys and values, so it is made one safe line here, once
    for every message: it goes to the log, to /status and to `zcmd status` as it is."""

    def __init__(self, reason):
        super().__init__(one_line(reason))


# -- start-up ---------------------------------------------------------------------------------------

class StartupError(ZsparkError):
    """The server cannot start (a port in use, the journal locked...); the message says why."""


class ConfigError(StartupError):
    """A config value that cannot be used; the message names the key and the file."""


class KeyFileError(StartupError):
    """A key or certificate file that cannot be used; the message names the config key."""


class TlsError(KeyFileError):
    """The TLS certificate or key cannot be used."""


class Unreachable(StartupError):
    """A sink's healthcheck found its destination unreachable; the message says what and why."""


# -- the journal ------------------------------------------------------------------------------------

class JournalError(ZsparkError):
    """The journal could not take the records (a write or fsync failed, or it is closed)."""


# -- commands ---------------------------------------------------------------------------------------

class CommandError(ZsparkError):
    """A command-line command failed; the message is for the operator."""
