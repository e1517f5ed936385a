"""Hostile input, property-based (hypothesis): event.normalize and the journal codec, the HTTP
handler over raw sockets, the ZeroMQ sockets. Whatever arrives, zspark answers or rejects it with
a reason, counts the rejection, and keeps serving.

Two settings profiles: `ci` (the default: few examples, derandomized so every run tries the same
inputs, no example database written) and `long` (ZSPARK_HYPOTHESIS_PROFILE=long: many more
random examples, failures remembered in .hypothesis/, which git ignores).
"""
import os

from hypothesis import HealthCheck, settings

# Generating events is slower than hypothesis expects, and the servers under test are shared by
# the examples of one test: neither is a problem with the test.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.load_profile(os.environ.get("ZSPARK_HYPOTHESIS_PROFILE", "ci"))
