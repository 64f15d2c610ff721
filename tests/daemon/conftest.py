from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from sgagent import netns

from .support import Daemon, DocServer, Etcd, kill_all


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """Every process a test started dies with the test, pass or fail."""
    yield
    kill_all()


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and nftables")


@pytest.fixture
def ns(root: None) -> Iterator[str]:
    """A fresh, empty named network namespace (removed afterwards, also on failure)."""
    name = "sgdn" + secrets.token_hex(4)
    netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
    try:
        yield name
    finally:
        netns.delete(name)


@pytest.fixture
def sandbox(root: None) -> Iterator[Any]:
    from sgagent.sandbox import Sandbox
    sb = Sandbox([("eth0", "vpc")], prefix="sgdm" + secrets.token_hex(3))
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Callable[..., Daemon]:
    made: list[Daemon] = []

    def make(source: dict[str, Any], netns_name: str, name: str = "agent",
             env: dict[str, str] | None = None, **overrides: Any) -> Daemon:
        cfg: dict[str, Any] = {"source": source, "netns": netns_name,
                               "state_dir": str(tmp_path / "state"), "resync_interval": 1.0,
                               "log_level": "debug"}
        cfg.update(overrides)
        d = Daemon(cfg, tmp_path, name, env)
        made.append(d)
        return d

    yield make  # type: ignore[misc]
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture
def etcd(root: None, tmp_path: Path) -> Iterator[Etcd]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    e = Etcd(tmp_path).start()
    try:
        yield e
    finally:
        if e.proc is not None and e.proc.poll() is None:
            e.kill()


@pytest.fixture
def docserver(tmp_path: Path) -> Iterator[DocServer]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    s = DocServer(tmp_path, token="s3cret-token-" + secrets.token_hex(4))
    try:
        yield s
    finally:
        s.stop()
