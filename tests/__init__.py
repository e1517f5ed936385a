"""zspark's test suites (nose2). The tests talk to in-process servers over real sockets, so the
test process is gevent-patched like `zcmd` itself."""
from gevent import monkey

monkey.patch_all()
