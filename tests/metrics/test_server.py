"""The endpoint: paths, TLS, basic auth, and clients that misbehave."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import httpx
import pytest

from sgagent.metrics import DEFAULT_ADDRESS, DEFAULT_PORT, AgentStats, MetricsServer, build_registry
from sgagent.metrics import server as server_mod

from .helpers import FakeKernel, free_port, reading


@pytest.fixture
def registry():
    return build_registry(AgentStats(), FakeKernel([reading(packets=3, nbytes=180)]))


def client(verify=True) -> httpx.Client:
    if isinstance(verify, str):                       # a CA file
        verify = ssl.create_default_context(cafile=verify)
    return httpx.Client(timeout=5.0, trust_env=False, verify=verify)


def test_defaults_are_documented_loopback_9469():
    assert (DEFAULT_ADDRESS, DEFAULT_PORT) == ("127.0.0.1", 9469)
    srv = MetricsServer(object())
    assert (srv.address, srv.port) == ("127.0.0.1", 9469)


def test_get_metrics_healthz_and_404(registry):
    with MetricsServer(registry, port=0) as srv, client() as c:
        assert srv.port != 0
        r = c.get(srv.url)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'sgagent_rule_packets_total{group="sg-web",rule="http",nic="eth0",' \
               'direction="inbound",policy="accept"} 3' in r.text
        assert c.get(srv.url + "?name[]=x").status_code == 200
        base = f"http://127.0.0.1:{srv.port}"
        r = c.get(base + "/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        for path in ("/", "/metricsx", "/metrics/", "/../etc/passwd", "/healthz/x"):
            assert c.get(base + path).status_code == 404, path
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
            assert c.request(method, base + "/metrics").status_code == 404, method
        assert c.get(srv.url).status_code == 200      # still serving


def test_port_is_released_on_close(registry):
    port = free_port()
    for _ in range(2):
        with MetricsServer(registry, "127.0.0.1", port) as srv, client() as c:
            assert srv.port == port
            assert c.get(srv.url).status_code == 200
    with pytest.raises(OSError):
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


def test_port_in_use_fails_at_start(registry):
    with MetricsServer(registry, port=0) as srv:
        with pytest.raises(OSError):
            MetricsServer(registry, port=srv.port).start()


def test_ipv6_loopback(registry):
    try:
        srv = MetricsServer(registry, "::1", 0).start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with client() as c:
            assert c.get(srv.url).status_code == 200
    finally:
        srv.close()


def test_tls_and_basic_auth(registry, tls_cert):
    cert, key = tls_cert
    with MetricsServer(registry, port=0, tls_cert=cert, tls_key=key,
                       basic_auth=("prometheus", "s3cret pass:word")) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        with client(verify=cert) as c:
            r = c.get(srv.url)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Basic")
            assert "sgagent_rule" not in r.text
            for auth in [("prometheus", "wrong"), ("other", "s3cret pass:word"),
                         ("prometheus", "s3cret pass:wor"), ("prometheus", "s3cret pass:word!")]:
                assert c.get(srv.url, auth=auth).status_code == 401, auth
            for header in ("Basic !!!notbase64", "Bearer abc", "Basic", ""):
                assert c.get(srv.url, headers={"Authorization": header}).status_code == 401
            r = c.get(srv.url, auth=("prometheus", "s3cret pass:word"))
            assert r.status_code == 200 and "sgagent_rule_packets_total" in r.text
            # healthz needs no credentials and says nothing else
            assert c.get(f"https://127.0.0.1:{srv.port}/healthz").text == "ok\n"
        # plain HTTP to the TLS port gets nothing, and breaks nothing
        with client() as c:
            with pytest.raises(httpx.HTTPError):
                c.get(f"http://127.0.0.1:{srv.port}/metrics")
        # a client that does not trust the certificate fails the handshake
        with client() as c:
            with pytest.raises(httpx.HTTPError):
                c.get(srv.url)
        with client(verify=cert) as c:
            assert c.get(srv.url, auth=("prometheus", "s3cret pass:word")).status_code == 200


def test_basic_auth_without_tls(registry):
    with MetricsServer(registry, port=0, basic_auth=("u", "p")) as srv, client() as c:
        assert c.get(srv.url).status_code == 401
        assert c.get(srv.url, auth=("u", "p")).status_code == 200


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        MetricsServer(object(), tls_cert="/x.crt")
    with pytest.raises(ValueError):
        MetricsServer(object(), tls_key="/x.key")
    with pytest.raises(ValueError):
        MetricsServer(object(), basic_auth=("a:b", "c"))
    with pytest.raises(ValueError):
        MetricsServer(object(), basic_auth=("a", ""))
    with pytest.raises(ValueError):
        MetricsServer(object(), port=70000)


def test_slow_and_silent_clients_do_not_block_scrapes(registry, tls_cert, monkeypatch):
    """Connections that send nothing (also to the TLS port, where the handshake would wait),
    half a request, or garbage: a scrape next to them is served at once."""
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT", 2.0)
    cert, key = tls_cert
    for tls in (False, True):
        kw = dict(tls_cert=cert, tls_key=key) if tls else {}
        with MetricsServer(registry, port=0, **kw) as srv, client(verify=cert) as c:
            idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(5)]
            half = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            half.sendall(b"GET /metr")
            junk = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            junk.sendall(b"\x00\xff" * 5000 + b"\r\n\r\n")
            try:
                start = time.monotonic()
                assert c.get(srv.url).status_code == 200
                assert time.monotonic() - start < 1.5, "a scrape waited for a silent client"
                # the silent ones are cut at the head deadline
                idle[0].settimeout(5)
                try:
                    data = idle[0].recv(100)
                except ConnectionResetError:
                    data = b""
                assert data == b"" and time.monotonic() - start < 5
            finally:
                for s in idle + [half, junk]:
                    s.close()
            assert c.get(srv.url).status_code == 200


def test_an_oversized_request_head_is_refused(registry):
    with MetricsServer(registry, port=0) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 431 ")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 8000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")       # just under the limit
        for bad in (b"GET /metrics\r\n\r\n", b"GET  /metrics HTTP/1.1\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", b"\x16\x03\x01 x y\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(bad)
                assert s.recv(100).startswith(b"HTTP/1.1 400 "), bad
        with client() as c:
            assert c.get(srv.url).status_code == 200


def test_at_the_cap_the_oldest_silent_connection_makes_room(registry, monkeypatch):
    monkeypatch.setattr(server_mod, "MAX_CONNECTIONS", 4)
    with MetricsServer(registry, port=0) as srv:
        hogs = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        try:
            time.sleep(0.3)
            with client() as c:         # a scraper gets in: the oldest silent one goes
                assert c.get(srv.url).status_code == 200
            hogs[0].settimeout(3)
            assert hogs[0].recv(10) == b"", "the oldest silent connection was not cut"
            for s in hogs[1:]:                      # the others are still open
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(10)
        finally:
            for s in hogs:
                s.close()


def test_at_the_cap_with_every_connection_answered_a_new_one_is_closed(monkeypatch):
    monkeypatch.setattr(server_mod, "MAX_CONNECTIONS", 4)
    gate = threading.Event()
    started = threading.Event()

    def slow_read():
        started.set()
        gate.wait(10)
        return [reading(packets=1)]

    reg = build_registry(AgentStats(), slow_read)
    with MetricsServer(reg, port=0) as srv:
        busy = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(4)]
        try:
            for s in busy:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert started.wait(5)
            time.sleep(0.3)             # the four heads are in: all four are being answered
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            extra.settimeout(3)
            try:
                assert extra.recv(10) == b"", "a connection over the limit is closed at once"
            except ConnectionResetError:
                pass
            extra.close()
            gate.set()
            for s in busy:              # none of the answered ones was dropped
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 ") and b"sgagent_rule_packets_total" in data
        finally:
            gate.set()
            for s in busy:
                s.close()
        with client() as c:
            assert c.get(srv.url).status_code == 200


def test_connection_deadline_cuts_a_trickling_client(registry, monkeypatch):
    monkeypatch.setattr(server_mod, "CONNECTION_DEADLINE", 1.0)
    with MetricsServer(registry, port=0) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        start = time.monotonic()
        try:
            for _ in range(40):            # a header byte every 0.2 s: never idle long enough
                s.sendall(b"X")
                time.sleep(0.2)
                if time.monotonic() - start > 3:
                    break
            s.settimeout(3)
            data = s.recv(100)
        except OSError:
            data = b""
        finally:
            s.close()
        assert time.monotonic() - start < 4.5
        assert b"200" not in data


def test_a_scrape_in_progress_does_not_block_another(registry):
    """Scrapes are served concurrently; the kernel collector serialises only its own read."""
    gate = threading.Event()
    kernel_calls = []

    def slow_read():
        kernel_calls.append(1)
        if len(kernel_calls) == 1:
            gate.wait(5)
        return [reading(packets=1)]

    reg = build_registry(AgentStats(), slow_read)
    with MetricsServer(reg, port=0) as srv, client() as c:
        t = threading.Thread(target=lambda: c.get(srv.url))
        t.start()
        time.sleep(0.2)
        with client() as c2:
            assert c2.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200
        gate.set()
        t.join(10)
        assert c.get(srv.url).status_code == 200


def test_tls_handshake_is_tls12_or_later(registry, tls_cert):
    cert, key = tls_cert
    with MetricsServer(registry, port=0, tls_cert=cert, tls_key=key) as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cert)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
