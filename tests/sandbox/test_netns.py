"""sgagent.netns against the real kernel (root only)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time

import pytest

from sgagent import netns

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]


@pytest.fixture
def ns():
    name = f"sgt{secrets.token_hex(3)}-n"
    netns.create(name)
    yield name
    netns.delete(name)
    assert not netns.exists(name)


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def test_executor_runs_inside_namespace(ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "add", "sga", "type", "veth", "peer", "name", "sgb"],
                   check=True)
    with netns.NetnsExecutor(ns) as ex:
        names = {n for _, n in ex.call(socket.if_nameindex)}
        assert names == {"lo", "sga", "sgb"}
        assert ex.call(_inode, "/proc/thread-self/ns/net") == _inode(f"/run/netns/{ns}")
        # the caller stays where it was
        assert _inode("/proc/thread-self/ns/net") != _inode(f"/run/netns/{ns}")
        # a socket made inside belongs to the namespace (lo is down there: no route)
        sock = ex.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with sock, pytest.raises(OSError):
            sock.sendto(b"x", ("127.0.0.1", 9))
        with pytest.raises(ZeroDivisionError):
            ex.call(lambda: 1 / 0)
        assert ex.call(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(netns.NetnsExecutorClosedError):
        ex.call(int)


def test_executor_none_is_current_namespace() -> None:
    with netns.NetnsExecutor(None) as ex:
        assert ex.call(_inode, "/proc/thread-self/ns/net") == _inode("/proc/thread-self/ns/net")


def test_scratch_executor_is_a_fresh_namespace() -> None:
    with netns.NetnsExecutor.scratch() as ex:
        assert ex.call(_inode, "/proc/thread-self/ns/net") != _inode("/proc/thread-self/ns/net")
        assert [n for _, n in ex.call(socket.if_nameindex)] == ["lo"]


def test_missing_namespace_errors_name_it() -> None:
    with pytest.raises(netns.NetnsNotFoundError, match="sgt-no-such-ns"):
        netns.enter("sgt-no-such-ns")
    with pytest.raises(netns.NetnsError, match="sgt-no-such-ns"):
        netns.NetnsExecutor("sgt-no-such-ns")
    with pytest.raises(netns.NetnsError):
        netns.enter("../etc")


def test_argv_in() -> None:
    assert netns.argv_in(None, ["nft", "list", "ruleset"]) == ["nft", "list", "ruleset"]
    assert netns.argv_in("x", ["true"]) == ["ip", "netns", "exec", "x", "true"]


def test_create_twice_and_delete_kills_processes() -> None:
    name = f"sgt{secrets.token_hex(3)}-n"
    netns.create(name)
    try:
        assert netns.exists(name)
        with pytest.raises(netns.NetnsError, match="already exists"):
            netns.create(name)
        proc = subprocess.Popen(netns.argv_in(name, ["sleep", "30"]))
        deadline = time.monotonic() + 5
        while proc.pid not in netns.pids(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.pid in netns.pids(name)
    finally:
        netns.delete(name)
    assert proc.wait(5) != 0
    assert not netns.exists(name)
    netns.delete(name)  # missing_ok
    with pytest.raises(netns.NetnsNotFoundError):
        netns.delete(name, missing_ok=False)
