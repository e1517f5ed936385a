"""A real headless Chromium for tests, and a web server for the pages it loads.

`Browser` drives Debian's /usr/bin/chromium through /usr/bin/chromedriver (selenium), with a
fresh profile each time; it raises AssertionError when either is missing, so that the browser
tests fail rather than skip (scripts/test installs both as root). `run(script)` runs JavaScript
in the page and returns what it passes to `done(...)`.

`PageServer` serves pages from another origin than zspark's (another port on 127.0.0.1), as a
site using zspark would.
"""
import os

from gevent.pywsgi import WSGIServer

from .support import TempDir

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Browser:
    def __init__(self):
        missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
        if missing:
            raise AssertionError(f"{', '.join(missing)} missing: the browser tests need Debian's chromium and "
                                 "chromium-driver (scripts/test installs them when run as root)")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = TempDir(prefix="zspark-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile.path}"):
            options.add_argument(flag)
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except BaseException:
            self.profile.remove()
            raise
        self.driver.set_script_timeout(20)

    def open(self, url):
        self.driver.get(url)

    def run(self, script, *args):
        """Run `script` (the body of a function with `done` and `args` in scope) in the page;
        return the value it passes to done()."""
        return self.driver.execute_async_script(
            "var done = arguments[arguments.length - 1], args = Array.prototype.slice.call(arguments, 0, -1);\n"
            + script, *args)

    def cookies(self):
        """Every cookie the browser holds (Chrome DevTools' form: name, value, domain, expires,
        httpOnly, sameSite...)."""
        return self.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]

    def clear_cookies(self):
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})

    def close(self):
        try:
            self.driver.quit()
        finally:
            self.profile.remove()


class PageServer:
    """Serves `pages` ({path: HTML text}, changed at will) on a free port of 127.0.0.1."""

    def __init__(self):
        self.pages = {}
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)
        self.server.start()
        self.origin = f"http://127.0.0.1:{self.server.address[1]}"

    def add(self, path, html):
        """Serve `html` at `path`; returns its URL."""
        self.pages[path] = html
        return self.origin + path

    def _app(self, environ, start_response):
        html = self.pages.get(environ["PATH_INFO"])
        if html is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")])
        return [html.encode("utf-8")]

    def close(self):
        self.server.stop(timeout=1)
