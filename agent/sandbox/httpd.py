"""A real HTTP(S) server in a namespace, and the curl client command line.

The server is Python's ``http.server`` (threaded), dual-stack on
``[::]:port``; its listening socket is created in the namespace's executor
thread and then served from an ordinary thread.  For TLS a self-signed
certificate is made with ``openssl req`` in the sandbox temp directory; the
TLS handshake runs in the per-connection thread, never in the accept loop.
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import subprocess
import threading
from typing import Any

from ..netns import NetnsExecutor
from .errors import SandboxError

__all__ = ["HttpServer", "curl_argv", "make_self_signed_cert"]

_BODY = b"sgagent sandbox\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "sgagent-sandbox"
    timeout = 5

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # silence access log
        pass


class _DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    block_on_close = False
    tls_context: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # runs in the per-connection thread
        request.settimeout(5.0)
        if self.tls_context is None:
            super().finish_request(request, client_address)
            return
        try:  # wrap_socket detaches ``request``: the TLS socket must be closed here
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
        pass


def make_self_signed_cert(workdir: str) -> tuple[str, str]:
    """(cert, key) paths of a self-signed EC certificate, made once per dir."""
    cert = os.path.join(workdir, "https-cert.pem")
    key = os.path.join(workdir, "https-key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    argv = [
        "openssl", "req", "-x509", "-nodes", "-days", "2",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-subj", "/CN=sgagent-sandbox",
        "-keyout", key, "-out", cert,
    ]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SandboxError("openssl not found (install openssl)") from None
    except subprocess.CalledProcessError as exc:
        raise SandboxError(f"openssl req failed: {exc.stderr.strip()}") from None
    return cert, key


class HttpServer:
    """HTTP (or HTTPS) on ``[::]:port`` inside the executor's namespace."""

    def __init__(self, executor: NetnsExecutor, port: int, tls: bool = False, workdir: str | None = None) -> None:
        self.port = port
        self.tls = tls
        ctx = None
        if tls:
            if workdir is None:
                raise SandboxError("an HTTPS server needs a work directory for its certificate")
            cert, key = make_self_signed_cert(workdir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)

        def make() -> _DualStackServer:
            return _DualStackServer(("::", port), _Handler)

        try:
            self._server = executor.call(make)
        except OSError as exc:
            raise SandboxError(f"cannot start HTTP server on port {port} in {executor.name}: {exc}") from exc
        self._server.tls_context = ctx
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-http-{port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def curl_argv(source: str, target: str, port: int, tls: bool, timeout: float) -> list[str]:
    """curl command fetching ``/`` from target:port, source-bound to ``source``."""
    host = f"[{target}]" if ":" in target else target
    scheme = "https" if tls else "http"
    argv = [
        "curl", "-sS", "-f", "-g", "-o", "/dev/null",
        "--noproxy", "*",
        "--interface", source,
        "--connect-timeout", f"{timeout:g}",
        "--max-time", f"{timeout + 2:g}",
    ]
    if tls:
        argv.append("-k")
    return [*argv, f"{scheme}://{host}:{port}/"]
