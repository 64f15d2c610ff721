"""Issue 9, item 5: clients that connect and send nothing, or a byte a second, cannot hold the
metrics endpoint shut. 200 of each are held open; a real scrape next to them must be served at
once (plain HTTP, and HTTPS with basic auth), and the silent ones are cut at the head deadline."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

import httpx
import pytest

from sgagent.metrics import AgentStats, MetricsServer, build_registry
from sgagent.metrics import server as server_mod

from .helpers import FakeKernel, reading

IDLE = 200
TRICKLING = 200
HEAD_TIMEOUT = 3.0     # shortened for the test (the default is documented in the module)
PROMPT = 5.0           # a generous bound for "was served, did not hang"
AUTH = ("prometheus", "s3cret")


@pytest.fixture
def registry():
    return build_registry(AgentStats(), FakeKernel([reading(packets=3, nbytes=180)]))


def client_hello() -> bytes:
    """The first flight of a TLS client, to be sent a byte at a time (the handshake is held)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class Holders:
    """``IDLE`` connections that send nothing and ``TRICKLING`` ones that send one byte of
    ``payload`` every second, from one thread; everything is closed and joined on exit."""

    def __init__(self, port: int, payload: bytes) -> None:
        self.idle = [socket.create_connection(("127.0.0.1", port), timeout=5)
                     for _ in range(IDLE)]
        self.trickling = [socket.create_connection(("127.0.0.1", port), timeout=5)
                          for _ in range(TRICKLING)]
        self.payload = payload
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._trickle, name="trickle")

    def _trickle(self) -> None:
        for i in range(min(len(self.payload), 60)):   # bounded: at most a minute
            for s in self.trickling:
                try:
                    s.send(self.payload[i:i + 1], socket.MSG_DONTWAIT)
                except OSError:
                    pass                                # cut by the server: fine
            self.sent = i + 1
            if self.stop.wait(1.0):
                return

    def __enter__(self) -> "Holders":
        self.thread.start()
        deadline = time.monotonic() + 5
        while self.sent == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.idle + self.trickling:
            s.close()
        assert not self.thread.is_alive()

    def all_cut(self, within: float) -> bool:
        """True once every held connection has been closed by the server."""
        pending = {s.fileno(): s for s in self.idle + self.trickling}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + within
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(200):
                s = pending.get(fd)
                if s is None:
                    continue
                try:
                    data = s.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:                         # reset: cut
                    data = b""
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    pending.pop(fd)
                    poller.unregister(fd)
        return not pending


def scrape_promptly(c: httpx.Client, url: str, **kw) -> httpx.Response:
    start = time.monotonic()
    r = c.get(url, **kw)
    assert time.monotonic() - start < PROMPT, "a scrape waited for the held connections"
    return r


def test_plain_http_is_served_next_to_400_held_connections(registry, monkeypatch):
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT", HEAD_TIMEOUT)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
    with MetricsServer(registry, port=0) as srv, Holders(srv.port, request) as held, \
            httpx.Client(timeout=PROMPT, trust_env=False) as c:
        for _ in range(3):
            r = scrape_promptly(c, srv.url)
            assert r.status_code == 200 and "sgagent_rule_packets_total" in r.text
        r = scrape_promptly(c, f"http://127.0.0.1:{srv.port}/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        # the held ones are cut at the head deadline; the server still serves afterwards
        assert held.all_cut(HEAD_TIMEOUT + 5), "connections outlived the head deadline"
        assert held.sent < len(request), "a byte-a-second client finished its request"
        assert scrape_promptly(c, srv.url).status_code == 200


def test_tls_with_basic_auth_is_served_next_to_400_held_connections(registry, tls_cert,
                                                                    monkeypatch):
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT", HEAD_TIMEOUT)
    cert, key = tls_cert
    verify = ssl.create_default_context(cafile=cert)
    with MetricsServer(registry, port=0, tls_cert=cert, tls_key=key, basic_auth=AUTH) as srv, \
            Holders(srv.port, client_hello()) as held, \
            httpx.Client(timeout=PROMPT, trust_env=False, verify=verify) as c:
        for _ in range(3):
            r = scrape_promptly(c, srv.url, auth=AUTH)
            assert r.status_code == 200 and "sgagent_rule_packets_total" in r.text
        assert scrape_promptly(c, srv.url).status_code == 401       # still refused without
        assert scrape_promptly(c, srv.url, auth=(AUTH[0], "wrong")).status_code == 401
        assert held.all_cut(HEAD_TIMEOUT + 5), "handshakes outlived the head deadline"
        assert scrape_promptly(c, srv.url, auth=AUTH).status_code == 200
