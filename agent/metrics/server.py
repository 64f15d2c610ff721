"""The metrics endpoint: ``GET /metrics`` and ``GET /healthz`` on one background thread.

* Listens on ``127.0.0.1:9469`` unless told otherwise (``port=0`` picks a free port; the bound
  one is :attr:`MetricsServer.port`).  An IPv6 address (``::1``) works too.
* Optional TLS (``tls_cert``/``tls_key``, TLS 1.2 or later) and HTTP basic auth on ``/metrics``
  (credentials compared in constant time; ``/healthz`` stays open and says only ``ok``).
* Everything else is ``404``.  One request per connection (``Connection: close``).

Clients cannot hold it shut, and never touch enforcement.  One asyncio event loop on its own
thread accepts and serves every connection, so a connection costs a few KiB rather than a
thread, and hundreds of idle or trickling clients do not starve a scrape:

* a connection must finish its TLS handshake and send its whole request head (at most
  :data:`MAX_HEAD` bytes; more is answered ``431``) within :data:`HEAD_TIMEOUT` seconds of
  being accepted, or it is cut; whatever it does, it is cut after :data:`CONNECTION_DEADLINE`;
* at most :data:`MAX_CONNECTIONS` are open at once.  At the cap, the oldest connection still
  waiting for its request head is dropped to make room for the new one (a flood of silent
  connections cannot lock a scraper out); if every open connection is being answered, the new
  one is closed at once;
* the exposition is built on one worker thread, never on the loop; scrapes that arrive while
  it is being built share that build, so a flood of scrapes costs one build at a time.  A
  response is written in chunks as the client reads it, so memory per connection stays small.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from urllib.parse import urlsplit

from prometheus_client.exposition import generate_latest

from .collector import CONTENT_TYPE

__all__ = ["MetricsServer", "DEFAULT_ADDRESS", "DEFAULT_PORT", "MAX_CONNECTIONS", "MAX_HEAD",
           "HEAD_TIMEOUT", "CONNECTION_DEADLINE"]

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9469
MAX_CONNECTIONS = 512       # open at once; well under systemd's default of 1024 open files
MAX_HEAD = 8192             # bytes of request line and headers
HEAD_TIMEOUT = 5.0          # seconds from accept to a complete request head, TLS handshake included
CONNECTION_DEADLINE = 30.0  # seconds a connection may live, whatever it does
WRITE_CHUNK = 65536         # bytes handed to the transport at a time
BACKLOG = 128

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _BadRequest(Exception):
    """A request head that cannot be answered normally: ``status`` says how instead."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    __slots__ = ("method", "path", "authorization")

    def __init__(self, method: str, path: str, authorization: list[str]) -> None:
        self.method, self.path, self.authorization = method, path, authorization


def _parse_head(head: bytes) -> _Request:
    """The request line and the headers we look at (``head`` ends with an empty line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _BadRequest(400)
    method, target = parts[0], parts[1]
    authorization = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400)
        if name.lower() == "authorization":
            authorization.append(value.strip())
    try:
        path = urlsplit(target).path
    except ValueError:
        raise _BadRequest(400) from None
    return _Request(method, path, authorization)


def _authorized(want: bytes | None, authorization: list[str]) -> bool:
    if want is None:
        return True
    got = b""
    if len(authorization) == 1:          # none, or several: not authorized
        scheme, _, token = authorization[0].partition(" ")
        if scheme.lower() == "basic":
            try:
                got = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                got = b""
    # Constant time: compare the whole "user:password" whatever its length or content.
    return hmac.compare_digest(got, want)


def _head(status: int, content_type: str, length: int, extra: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", "Server: sgagent",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {content_type}",
             f"Content-Length: {length}", "Cache-Control: no-store", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Server:
    """Everything that runs on the event loop's thread."""

    def __init__(self, listener: socket.socket, ssl_context: ssl.SSLContext | None,
                 basic_auth: bytes | None, render) -> None:
        self.listener = listener
        self.ssl_context = ssl_context
        self.basic_auth = basic_auth
        self.render = render
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sgagent-metrics-render")
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_loop_exception)
        # Open connections, oldest first; True while a connection waits for its request head.
        self.conns: dict[asyncio.Task, bool] = {}
        self.rendering: asyncio.Future | None = None
        self._out_of_files_logged = False

    # -- the thread -------------------------------------------------------------------------
    def run(self, ready: threading.Event) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.create_task(self.accept_loop())
            ready.set()
            loop.run_forever()
            # closing: cut every connection, stop accepting, release the port
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if self.rendering is not None:
                self.rendering.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            for _ in range(2):          # let the transports' close callbacks run
                loop.run_until_complete(asyncio.sleep(0))
        finally:
            self.listener.close()
            loop.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """From any thread."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:            # the loop is closed already
            pass

    # -- connections ------------------------------------------------------------------------
    async def accept_loop(self) -> None:
        loop = self.loop
        while True:
            try:
                conn, peer = await loop.sock_accept(self.listener)
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES:
                    # No file descriptor for a new connection: make room, wait a moment.
                    if not self._out_of_files_logged:
                        log.warning("metrics: cannot accept connections: %s", exc)
                        self._out_of_files_logged = True
                    self._evict_one()
                    await asyncio.sleep(0.1)
                else:                   # the client gave up already (ECONNABORTED...)
                    log.debug("metrics: accept: %s", exc)
                    await asyncio.sleep(0.01)
                continue
            self._out_of_files_logged = False
            if len(self.conns) >= MAX_CONNECTIONS and not self._evict_one():
                log.debug("metrics: %d connections being answered; closing the one from %s",
                          len(self.conns), peer)
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self.serve(conn, peer))
            self.conns[task] = True
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self.conns.pop(task, None)

    def _evict_one(self) -> bool:
        """Cut the oldest connection still waiting for its request head; False if none."""
        for task, waiting in self.conns.items():
            if waiting:
                del self.conns[task]
                task.cancel()
                log.debug("metrics: %d connections open; cut the oldest silent one",
                          MAX_CONNECTIONS)
                return True
        return False

    async def serve(self, conn: socket.socket, peer) -> None:
        loop = self.loop
        task = asyncio.current_task()
        writer: asyncio.StreamWriter | None = None
        handed_over = closed = False
        try:
            async with asyncio.timeout(CONNECTION_DEADLINE):
                try:
                    async with asyncio.timeout(HEAD_TIMEOUT):
                        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
                        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                        handed_over = True   # from here on the transport closes the socket
                        transport, _ = await loop.connect_accepted_socket(
                            lambda: protocol, conn, ssl=self.ssl_context,
                            ssl_handshake_timeout=HEAD_TIMEOUT if self.ssl_context else None)
                        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                        head = await reader.readuntil(b"\r\n\r\n")
                    request: _Request | _BadRequest = _parse_head(head)
                except asyncio.LimitOverrunError:
                    request = _BadRequest(431)
                except _BadRequest as bad:
                    request = bad
                if task in self.conns:
                    self.conns[task] = False      # being answered: not dropped at the cap
                status, body, content_type, extra = await self.answer(request)
                head_only = isinstance(request, _Request) and request.method == "HEAD"
                await _write(writer, _head(status, content_type, len(body), extra),  # type: ignore[arg-type]
                             b"" if head_only else body)
                writer.close()                    # type: ignore[union-attr]
                await writer.wait_closed()        # type: ignore[union-attr]  # all sent
                closed = True
        except asyncio.CancelledError:
            log.debug("metrics: connection from %s cut", peer)
            raise
        except TimeoutError:
            log.debug("metrics: connection from %s cut: too slow", peer)
        except asyncio.IncompleteReadError:
            log.debug("metrics: connection from %s closed before its request was complete", peer)
        except Exception as exc:  # noqa: BLE001 - a client's failure is its own
            log.debug("metrics: connection from %s failed: %s", peer, exc)
        finally:
            if writer is not None and not closed:
                writer.transport.abort()
            elif not handed_over:
                conn.close()

    async def answer(self, request: "_Request | _BadRequest"
                     ) -> tuple[int, bytes, str, dict[str, str]]:
        text = "text/plain; charset=utf-8"
        if isinstance(request, _BadRequest):
            return request.status, f"{_REASONS[request.status].lower()}\n".encode(), text, {}
        if request.method != "GET":
            return 404, b"not found\n", text, {}
        if request.path == "/healthz":
            return 200, b"ok\n", text, {}
        if request.path != "/metrics":
            return 404, b"not found\n", text, {}
        if not _authorized(self.basic_auth, request.authorization):
            return 401, b"unauthorized\n", text, \
                {"WWW-Authenticate": 'Basic realm="sgagent", charset="UTF-8"'}
        try:
            body = await self.exposition()
        except Exception:  # noqa: BLE001
            log.exception("metrics: building the exposition failed")
            return 500, b"internal error\n", text, {}
        return 200, body, CONTENT_TYPE, {}

    async def exposition(self) -> bytes:
        """The rendered registry; callers that arrive during a build share it."""
        fut = self.rendering
        if fut is None:
            fut = self.rendering = self.loop.run_in_executor(self.pool, self.render)

            def done(f: asyncio.Future) -> None:
                if self.rendering is f:
                    self.rendering = None
                if not f.cancelled():
                    f.exception()       # retrieved, even if every waiter went away
            fut.add_done_callback(done)
        return await asyncio.shield(fut)


async def _write(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    """Head and body, a chunk at a time as the client takes them (flow control keeps at most
    a few chunks in memory per connection)."""
    writer.write(head)
    view = memoryview(body)
    for i in range(0, len(view), WRITE_CHUNK):
        await writer.drain()
        writer.write(view[i:i + WRITE_CHUNK])


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # Connection-level failures (a client resetting a TLS handshake...) are the client's.
    log.debug("metrics: %s", context.get("message"), exc_info=context.get("exception"))


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
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the kernel when created with ``port=0``)."""
        return self._server.listener.getsockname()[1] if self._server is not None else self._port

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
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.address, self._port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        server = _Server(listener, ctx, self._auth, self._render)
        ready = threading.Event()
        self._thread = threading.Thread(target=server.run, args=(ready,), name="sgagent-metrics",
                                        daemon=True)
        self._server = server
        self._thread.start()
        ready.wait()
        log.info("metrics: serving %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, cut the connections and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._port = server.listener.getsockname()[1]
        server.stop()
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
