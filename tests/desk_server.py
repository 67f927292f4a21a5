"""The desk served by uvicorn on a free loopback port in a thread of the test, and a small HTTP client."""

from __future__ import annotations

import http.cookiejar
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import uvicorn

from ledger_pipelines.desk.app import DeskApp, server_config
from ledger_pipelines.desk.auth import RateLimit, Sessions

KEY = b"k" * 32


@contextmanager
def serving(desk, reports, limiter: RateLimit | None = None, proxies: list[str] | None = None):
    """The desk's app in the server configuration ``ledger-pipelines desk`` runs it with."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = DeskApp(desk, reports, Sessions(KEY, 8), limiter).build()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, proxies=proxies))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """A browser without JavaScript: cookies kept, redirects not followed (the tests look at them)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, path: str, form: dict | None = None, headers: dict | None = None) -> tuple[int, dict, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(urllib.request.Request(self.base + path, data=data, headers=headers or {}),
                                  timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def csrf(self, path: str = "/login") -> str:
        _, _, body = self.request(path)
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    def login(self, name: str, password: str) -> int:
        status, _, _ = self.request("/login", {"csrf": self.csrf(), "name": name, "password": password, "next": "/breaks"})
        return status
