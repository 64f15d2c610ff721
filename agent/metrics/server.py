"""The metrics endpoint: ``GET /metrics`` and ``GET /healthz`` in a background thread.

* Listens on ``127.0.0.1:9469`` unless told otherwise (``port=0`` picks a free port; the bound
  one is :attr:`MetricsServer.port`).  An IPv6 address (``::1``) works too.
* Optional TLS (``tls_cert``/``tls_key``, TLS 1.2 or later) and HTTP basic auth on ``/metrics``
  (credentials compared in constant time; ``/healthz`` stays open and says only ``ok``).
* Everything else is ``404``.  A bad or slow client never touches enforcement: requests are
  served on their own threads (at most :data:`MAX_CONNECTIONS` at once, more are closed at
  once), every socket read has a timeout, and a connection is cut after
  :data:`CONNECTION_DEADLINE` seconds whatever it does.  The TLS handshake happens on the
  connection's thread, never on the accepting one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import generate_latest

from .collector import CONTENT_TYPE

__all__ = ["MetricsServer", "DEFAULT_ADDRESS", "DEFAULT_PORT", "MAX_CONNECTIONS",
           "READ_TIMEOUT", "CONNECTION_DEADLINE"]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9469
MAX_CONNECTIONS = 16
READ_TIMEOUT = 5.0          # seconds per socket read/write
CONNECTION_DEADLINE = 30.0  # seconds a connection may live, whatever it does


class _Handler(BaseHTTPRequestHandler):
    server_version = "sgagent"
    sys_version = ""
    timeout = READ_TIMEOUT
    server: "_HTTPServer"

    def setup(self) -> None:
        sock = self.request
        sock.settimeout(READ_TIMEOUT)
        self._timer = threading.Timer(CONNECTION_DEADLINE, _cut, (sock,))
        self._timer.daemon = True
        self._timer.start()
        if self.server.ssl_context is not None:
            try:
                self.request = self.server.ssl_context.wrap_socket(sock, server_side=True)
            except (OSError, ValueError) as exc:   # handshake failed or timed out
                self._timer.cancel()
                log.debug("metrics: TLS handshake with %s failed: %s", self.client_address, exc)
                raise
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._timer.cancel()
            try:
                self.request.close()
            except OSError:
                pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("metrics: %s %s", self.client_address[0], format % args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        want = self.server.basic_auth
        if want is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        got = b""
        if scheme.lower() == "basic":
            try:
                got = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                got = b""
        # Constant time: compare the whole "user:password" whatever its length or content.
        return hmac.compare_digest(got, want)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/metrics":
            if not self._authorized():
                self._send(401, b"unauthorized\n",
                           headers={"WWW-Authenticate": 'Basic realm="sgagent", charset="UTF-8"'})
                return
            try:
                body = self.server.render()
            except Exception:  # noqa: BLE001
                log.exception("metrics: building the exposition failed")
                self._send(500, b"internal error\n")
                return
            self._send(200, body, CONTENT_TYPE)
        else:
            self._send(404, b"not found\n")

    def _not_found(self) -> None:
        self._send(404, b"not found\n")

    def __getattr__(self, name: str):
        # Every other method (POST, PUT, HEAD, ...) gets a 404, like every other path.
        if name.startswith("do_"):
            return self._not_found
        raise AttributeError(name)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 32
    allow_reuse_address = True

    def __init__(self, address: tuple, family: int, render, ssl_context: ssl.SSLContext | None,
                 basic_auth: bytes | None) -> None:
        self.address_family = family
        self.render = render
        self.ssl_context = ssl_context
        self.basic_auth = basic_auth
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: too many connections, closing one from %s", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics: connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """Serve a registry over HTTP(S) in a background thread; a context manager.

    ``registry`` is a :class:`sgagent.metrics.MetricsRegistry` (its fast ``exposition()`` is
    used) or any prometheus_client registry (``generate_latest``).
    """

    def __init__(self, registry, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT, *,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 basic_auth: tuple[str, str] | None = None) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (tls_cert and tls_key)")
        if basic_auth is not None:
            user, password = basic_auth
            if not user or ":" in user:
                raise ValueError("basic auth: the username must be non-empty and without ':'")
            if not password:
                raise ValueError("basic auth: the password must not be empty")
        self.registry = registry
        self.address = address
        self._port = int(port)
        if not 0 <= self._port <= 65535:
            raise ValueError(f"port {port} is not a port (0..65535)")
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self._auth = (f"{basic_auth[0]}:{basic_auth[1]}".encode() if basic_auth else None)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the kernel when created with ``port=0``)."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}/metrics"

    def _render(self) -> bytes:
        fast = getattr(self.registry, "exposition", None)
        return fast() if fast is not None else generate_latest(self.registry)

    def start(self) -> "MetricsServer":
        """Bind and start serving; raises ``OSError`` (e.g. the port is in use) at once."""
        if self._server is not None:
            return self
        ctx = None
        if self.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 \
                else socket.AF_INET
        except ValueError:
            family = socket.AF_INET   # a host name: let bind() resolve it
        if self._auth is not None and ctx is None and not _loopback(self.address):
            log.warning("metrics: basic auth without TLS on %s sends the password in the clear",
                        self.address)
        self._server = _HTTPServer((self.address, self._port), family, self._render, ctx,
                                   self._auth)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="sgagent-metrics", daemon=True)
        self._thread.start()
        log.info("metrics: serving %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port (connections in flight are cut by their deadline)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._port = server.server_address[1]
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"
