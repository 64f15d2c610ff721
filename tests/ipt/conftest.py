import os
import secrets

import pytest

from sgagent import netns


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, iptables)")


@pytest.fixture
def ns(root):
    """A fresh named network namespace, removed afterwards (iptables, legacy or nf_tables,
    and ipsets are per namespace: nothing here reaches the root namespace's)."""
    name = f"sgi{secrets.token_hex(3)}"
    netns.create(name)
    yield name
    netns.delete(name)


def run_in(ns: str, *argv: str, text: str | None = None) -> str:
    import subprocess
    proc = subprocess.run(netns.argv_in(ns, list(argv)), input=text, capture_output=True,
                          text=True, timeout=60, check=True)
    return proc.stdout
