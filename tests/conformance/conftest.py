import os

import pytest

from .harness import enforce as _enforce

pytestmark = pytest.mark.kernel

@pytest.fixture
def enforce():
    if os.geteuid() != 0:
        pytest.skip("enforcement tests need root (network namespaces, nftables)")
    return _enforce
