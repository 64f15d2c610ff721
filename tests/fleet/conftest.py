from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.daemon.support import Etcd, kill_all


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    yield
    kill_all()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A single-member etcd on 127.0.0.1 (no root needed)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    e = Etcd(tmp_path).start()
    try:
        yield e
    finally:
        if e.proc is not None and e.proc.poll() is None:
            e.kill()
