import os
import secrets

import pytest

from sgagent.sandbox import Sandbox


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def sandboxes():
    """One sandbox per NIC layout, reused across documents (applies replace the ruleset and
    the conntrack table is emptied between documents)."""
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    made: dict[tuple, Sandbox] = {}

    def get(nics: list[tuple[str, str]]) -> Sandbox:
        key = tuple(nics)
        if key not in made:
            sb = Sandbox(list(nics), prefix=f"sgd{secrets.token_hex(3)}")
            sb.__enter__()
            made[key] = sb
        return made[key]

    yield get
    for sb in made.values():
        sb.__exit__(None, None, None)
