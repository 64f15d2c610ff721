"""Revocation (SEMANTICS section 4) with two real long-lived TCP connections into a sandbox host:
after a change the one the new rules refuse dies within a second, the other keeps working."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from .support import dump, write_atomic

pytestmark = pytest.mark.kernel

KEEP, CUT = "10.1.0.21", "10.1.0.22"
PORT = 7000


def doc(sources: list[str]) -> dict:
    return {"version": 1,
            "host": {"instance": "i-rev", "nics": [{"name": "eth0", "security_groups": ["sg-app"]}]},
            "security_groups": {"sg-app": {"rules": [
                {"id": "app", "direction": "inbound", "policy": "accept", "protocol": "tcp",
                 "ports": PORT, "source": sources}]}}}


class EchoServer:
    """A TCP echo server in the sandbox's host namespace; it never sends on its own."""

    def __init__(self, sb) -> None:
        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", PORT))
            s.listen(16)
            s.settimeout(0.2)
            return s
        self.sock = sb.call("host", listen)
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = conn.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()
        self.thread.join(2)


def connect(sb, peer: str, timeout: float = 2.0) -> socket.socket:
    sb.add_peer("eth0", peer)

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((peer, 0))
        s.settimeout(timeout)
        s.connect((sb.nic_address("eth0"), PORT))
        return s
    return sb.call("eth0", make)


def echoes(s: socket.socket, timeout: float = 1.0) -> bool:
    """Does the connection still carry data both ways (within ``timeout``)?"""
    token = f"ping-{time.monotonic_ns()}".encode()
    s.settimeout(timeout)
    try:
        s.sendall(token)
        got = b""
        while len(got) < len(token):
            chunk = s.recv(len(token) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == token
    except OSError:
        return False


@pytest.fixture
def echo(sandbox):
    server = EchoServer(sandbox)
    yield server
    server.close()


def run_change(sandbox, make_daemon, tmp_path: Path, revocation: bool):
    path = tmp_path / "host.yaml"
    path.write_text(dump(doc([f"{KEEP}/32", f"{CUT}/32"])))
    d = make_daemon({"file": {"path": str(path)}}, sandbox.host_ns, revocation=revocation,
                    resync_interval=30).start()
    d.wait_log("ready:")
    keep, cut = connect(sandbox, KEEP), connect(sandbox, CUT)
    assert echoes(keep) and echoes(cut)
    mark = d.mark()
    changed = time.monotonic()
    write_atomic(path, dump(doc([f"{KEEP}/32"])))
    return d, keep, cut, mark, changed


def test_revoked_connection_dies_the_other_survives(sandbox, echo, make_daemon, tmp_path):
    d, keep, cut, mark, changed = run_change(sandbox, make_daemon, tmp_path, revocation=True)
    m = d.wait_log(rf"revoked tcp {CUT}:(\d+) -> 10\.1\.0\.10:{PORT}", timeout=2.0, since=mark)
    elapsed = time.monotonic() - changed
    assert elapsed < 1.0, f"revocation took {elapsed:.3f}s after the change"
    assert int(m.group(1)) == cut.getsockname()[1]
    assert f"revoked tcp {KEEP}" not in d.log()[mark:]
    # the cut connection carries nothing any more; the other one still works
    assert not echoes(cut, timeout=1.0)
    assert echoes(keep)
    assert echoes(keep)
    # and a new connection from the refused peer is refused too
    with pytest.raises(OSError):
        connect(sandbox, CUT, timeout=0.5).close()
    keep.close()
    cut.close()
    assert d.stop() == 0


def test_without_revocation_the_connection_lives_on(sandbox, echo, make_daemon, tmp_path):
    d, keep, cut, mark, _ = run_change(sandbox, make_daemon, tmp_path, revocation=False)
    d.wait_log(r"applied the document .* \(update\)", since=mark)
    time.sleep(0.2)
    assert echoes(cut) and echoes(keep)  # established connections are not judged again
    assert "revoked" not in d.log()[mark:]
    keep.close()
    cut.close()
    assert d.stop() == 0
