"""The request headers object pywsgi and the app read, built from the fields that
httpframing.parse_head validated.

pywsgi reads headers through the email package's parser, which takes a control character such as
\\x85 for a line break and so can see a header the strict parser did not (a hidden
Content-Length); it also costs a fifth of the CPU of a small keep-alive request. `Headers` holds
exactly the (name, value) pairs of the strict reading and answers as the email parser's message
answers for the same block (`get` and `getheader` give the first field of a name in any case,
`headers` every field line): tests/test_http_headers.py compares the two.
"""


class Headers:
    """The part of pywsgi's OldMessage that pywsgi's get_environ and zspark read (pywsgi's
    read_request, which used the rest, is not called: httpserver.RequestHandler frames requests)."""

    def __init__(self, pairs):
        self._pairs = pairs

    def get(self, name, default=None):
        """The first header called `name` (in any case), as the email message answers."""
        name = name.lower()
        for key, value in self._pairs:
            if key.lower() == name:
                return value
        return default

    getheader = get

    @property
    def headers(self):
        return [f"{key}: {value}\r\n" for key, value in self._pairs]

    @property
    def typeheader(self):
        return self.get("content-type")
