"""The parts of gevent that zspark relies on beyond its documented API (setup.py pins gevent to
the range they were checked against): pywsgi's request handler and Input, the server's accept
hooks, and the hub's error printing. If an upgrade renames or drops one, this fails first, with
its name, instead of a limit silently no longer applying (for example a body read with no
deadline behind an answer, when `Input._chunked_input_error` no longer stops `_discard`)."""
import inspect
import unittest

from gevent import baseserver, hub, pywsgi, server


class GeventContract(unittest.TestCase):
    def assertHas(self, cls, *names):
        for name in names:
            with self.subTest(cls=cls.__name__, name=name):
                self.assertTrue(hasattr(cls, name) or name in getattr(cls, "__slots__", ()),
                                f"gevent's {cls.__name__} has no {name}: zspark/sources/httpserver.py "
                                f"(or logsetup.py) relies on it")

    def test_pywsgi_input_fields_read_by_the_handler(self):
        self.assertHas(pywsgi.Input, "_chunked_input_error", "chunked_input", "chunk_length", "position",
                       "content_length", "_discard")
        # _discard must skip a body once _chunked_input_error is set: the handler's way of
        # saying "do not read the rest of this body".
        self.assertIn("_chunked_input_error", inspect.getsource(pywsgi.Input._discard))

    def test_pywsgi_handler_methods_overridden_or_called(self):
        self.assertHas(pywsgi.WSGIHandler, "handle", "handle_one_request", "handle_one_response", "get_environ",
                       "run_application", "start_response", "finalize_headers", "_write_with_headers",
                       "_sendall", "log_request", "close_connection", "wsgi_input", "response_headers",
                       "provided_date", "response_use_chunked")
        source = inspect.getsource(pywsgi.WSGIHandler.handle_one_response)
        self.assertIn("run_application", source)
        self.assertIn("_discard", source)

    def test_server_accept_hooks(self):
        self.assertHas(server.StreamServer, "do_read", "do_handle", "_spawn")
        self.assertIn("self.wrap_socket = ", inspect.getsource(server.StreamServer.__init__))  # with TLS
        self.assertHas(baseserver.BaseServer, "start_accepting", "stop_accepting", "closed")
        self.assertIn("do_read", inspect.getsource(baseserver.BaseServer._do_read))

    def test_hub_error_printing(self):
        self.assertHas(hub.Hub, "print_exception", "handle_error")
        self.assertIn("self.format_context = ", inspect.getsource(hub.Hub.__init__))
        self.assertIn("print_exception", inspect.getsource(hub.Hub.handle_error))


if __name__ == "__main__":
    unittest.main()
