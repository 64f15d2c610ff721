import os
import secrets

import pytest

from sgagent.backends import make_backend
from sgagent.nft.backend import NftBackend
from sgagent.sandbox import Sandbox


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.kernel)


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")


@pytest.fixture(scope="session")
def sandboxes():
    """One sandbox per NIC layout, reused across documents (applies replace the ruleset and
    the conntrack table is emptied between documents)."""
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    made: dict[tuple, tuple[Sandbox, dict]] = {}

    def get(nics: list[tuple[str, str]], rendering: str = "sets",
            backend: str = "nftables") -> tuple[Sandbox, NftBackend]:
        """The sandbox for this NIC layout and a backend per backend name and rendering that
        lives as long as it does, so that each document is applied as a difference from the
        previous one."""
        key = tuple(nics)
        if key not in made:
            sb = Sandbox(list(nics), prefix=f"sgd{secrets.token_hex(3)}")
            sb.__enter__()
            made[key] = (sb, {})
        sb, backends = made[key]
        if (backend, rendering) not in backends:
            for (name, _), other in list(backends.items()):
                if name != backend:  # one backend's rules at a time in a sandbox
                    other.flush()
                    other.close()
                    del backends[(name, _)]
            backends[(backend, rendering)] = make_backend(backend, sb.host_ns, rendering)
        return sb, backends[(backend, rendering)]

    yield get
    for sb, backends in made.values():
        for be in backends.values():
            be.close()
        sb.__exit__(None, None, None)
