"""Shared fixtures of the metrics tests: fake readings, free ports, promtool, a self-signed cert."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .helpers import FakeKernel


@pytest.fixture
def fake_kernel():
    return FakeKernel()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    return path


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "metrics.crt", d / "metrics.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=sgagent-test", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return str(cert), str(key)


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and nftables")
