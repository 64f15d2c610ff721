"""Helpers for the daemon tests: the daemon as a real subprocess, a real etcd, an HTTPS server,
documents, and reading the kernel of a namespace.

Every process started here is tracked and killed by the fixtures, also when a test fails.
Servers listen on 127.0.0.1 only; host documents use 10.0.0.0/8 inside namespaces.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- documents -------------------------------------------------------------------------------
def host_section(nic: str = "eth0", groups: list[str] | None = None,
                 instance: str = "i-test") -> dict[str, Any]:
    return {"instance": instance, "account": "1001", "network": "vpc",
            "nics": [{"name": nic, "role": "vpc", "security_groups": groups or ["sg-web"]}]}


def group(ports: list[int], sources: list[str] | str = "10.0.0.0/8",
          members: list[str] | None = None) -> dict[str, Any]:
    return {"account": "1001", "members": members or [],
            "rules": [{"id": f"tcp-{p}", "direction": "inbound", "policy": "accept",
                       "protocol": "tcp", "ports": p, "source": sources} for p in ports]}


def document(ports: list[int], sources: list[str] | str = "10.0.0.0/8", nic: str = "eth0",
             instance: str = "i-test") -> dict[str, Any]:
    return {"version": 1, "host": host_section(nic, ["sg-web"], instance),
            "security_groups": {"sg-web": group(ports, sources)}}


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the kernel of a namespace --------------------------------------------------------------
def live_table(ns: str) -> str:
    """``nft list table inet sgagent`` in ``ns`` without counter values ('' if none)."""
    p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-s", "list", "table", "inet", "sgagent"],
                       capture_output=True, text=True, timeout=10)
    return p.stdout if p.returncode == 0 else ""


def dports(ns: str) -> set[int]:
    """The ports of the live rules, read from their counters' identities (rule ids
    ``tcp-<port>``, see :func:`group`), whatever form the renderer gives the rules."""
    return {int(p) for p in re.findall(r'comment "[^"|]*\|in\|a\|[^"|]*\|tcp-(\d+)"',
                                        live_table(ns))}


# -- the daemon --------------------------------------------------------------------------------
class Daemon:
    """``python -m sgagent run --config PATH`` as a subprocess, its output in a log file."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "agent",
                 env: dict[str, str] | None = None, argv: list[str] | None = None,
                 rlimits: dict[int, int] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.lower().endswith("_proxy") and k not in ("NOTIFY_SOCKET",
                                                                      "WATCHDOG_USEC")}
        self.env.update(env or {})
        self.argv = argv
        self.rlimits = rlimits or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> "Daemon":
        argv = self.argv or [PYTHON, "-m", "sgagent", "run", "--config", str(self.config_path)]
        self._log = open(self.log_path, "ab")
        limits = dict(self.rlimits)

        def limit() -> None:  # in the child, before exec: resource.setrlimit(RLIMIT_*, n)
            import resource
            for what, n in limits.items():
                resource.setrlimit(what, (n, n))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT),
                                     start_new_session=True,
                                     preexec_fn=limit if limits else None)
        _PROCS.append(self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """Remember where the log is now; ``wait_log(since=...)`` looks only after it."""
        return len(self.log())

    def wait_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                m = rx.search(self.log()[since:])
                if m:
                    return m
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.log()[-4000:]}")
            return rx.search(self.log()[since:])
        try:
            return wait_until(found, timeout, 0.02, f"log line {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()[-4000:]}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


_PROCS: list[subprocess.Popen[bytes]] = []


def kill_all() -> None:
    """Kill every process these helpers started (fixture finalizer)."""
    while _PROCS:
        p = _PROCS.pop()
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


# -- etcd ------------------------------------------------------------------------------------
class Etcd:
    """A single-member etcd on 127.0.0.1 with a temporary data directory."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "etcd"
        self.dir.mkdir(exist_ok=True)
        self.port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> "Etcd":
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "sgtest", "--data-dir", str(self.dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"sgtest={peer}", "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "ETCD_UNSUPPORTED_ARCH": os.uname().machine})
        _PROCS.append(self.proc)
        log.close()
        wait_until(self._healthy, timeout, 0.05, "etcd to answer")
        return self

    def _healthy(self) -> bool:
        try:
            self.post("/v3/kv/range", {"key": _b64("/")})
            return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.request
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=5) as resp:
            return json.loads(resp.read())

    def put(self, key: str, value: str | dict[str, Any]) -> int:
        if not isinstance(value, str):
            value = json.dumps(value)
        r = self.post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(r["header"]["revision"])

    def delete(self, key: str) -> int:
        r = self.post("/v3/kv/deleterange", {"key": _b64(key)})
        return int(r["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.post("/v3/kv/compaction", {"revision": revision, "physical": True})

    def revision(self) -> int:
        r = self.post("/v3/kv/range", {"key": _b64("/"), "count_only": True})
        return int(r["header"]["revision"])


def _b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()


# -- HTTPS -----------------------------------------------------------------------------------
def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl); returns (ca, cert, key)."""
    d = workdir / "tls"
    d.mkdir(exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                                  "srv.pem"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True,  # noqa: E731
                                    timeout=30)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=sgagent test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class DocServer:
    """An HTTPS server for one document: ETag / If-None-Match, bearer token, start/stop."""

    def __init__(self, workdir: Path, token: str) -> None:
        self.ca, self.cert, self.key = make_tls(workdir)
        self.token = token
        self.port = free_port()
        self.body = b""
        self.etag_bytes: bytes | None = None  # sent instead of the body's digest if set
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/hosts/i-test"

    def set(self, text: str) -> None:
        self.set_raw(text.encode())

    def set_raw(self, raw: bytes) -> None:
        with self._lock:
            self.body = raw

    def etag(self) -> str:
        """The ETag header as http.server handles it (latin-1 text for raw bytes)."""
        if self.etag_bytes is not None:
            return self.etag_bytes.decode("latin-1")
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def start(self) -> "DocServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with server._lock:
                    body, etag = server.body, server.etag()
                    server.requests.append({"path": self.path,
                                            "auth": self.headers.get("Authorization"),
                                            "inm": self.headers.get("If-None-Match")})
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/yaml")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)


class TrickleServer:
    """A plain HTTP server on 127.0.0.1 that answers every request one byte per ``interval``:
    ``mode="head"`` trickles the response head, ``mode="body"`` sends the head at once and
    trickles a long body. Records, per connection, when it was accepted and when the client
    closed it (``None`` while open)."""

    def __init__(self, mode: str, interval: float = 1.0) -> None:
        assert mode in ("head", "body")
        self.mode, self.interval = mode, interval
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[dict[str, float | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/hosts/i-test"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            rec: dict[str, float | None] = {"accepted": time.monotonic(), "closed": None}
            with self._lock:
                self.connections.append(rec)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _serve(self, conn: socket.socket, rec: dict[str, float | None]) -> None:
        import select
        if self.mode == "head":
            pending = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            pending = b"#" * 100_000
        try:
            while not self._stop.is_set() and pending:
                readable, _, _ = select.select([conn], [], [], self.interval)
                if readable:
                    if not conn.recv(65536):  # the client closed the connection
                        rec["closed"] = time.monotonic()
                        return
                    continue
                conn.sendall(pending[:1])
                pending = pending[1:]
        except OSError:
            rec["closed"] = time.monotonic()
        finally:
            conn.close()

    def closed_after(self) -> list[float]:
        """Seconds each closed connection stayed open."""
        with self._lock:
            return [c["closed"] - c["accepted"] for c in self.connections  # type: ignore[operator]
                    if c["closed"] is not None]

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


# -- sd_notify listener ---------------------------------------------------------------------
class NotifySocket:
    """A NOTIFY_SOCKET to listen on, like systemd's (abstract name with '@', or a path)."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"sgagent-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.sock.bind(path)
            self.env_value = path
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, until: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode()))
            except socket.timeout:
                pass
            if until([m for _, m in self.messages]):
                break
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()
