import functools
import os

import pytest

from .harness import enforce as _enforce

pytestmark = pytest.mark.kernel

# Every scenario on both backends (iptables: the variant the sandbox detects, nf_tables).
BACKENDS = ["nftables", "iptables"]


@pytest.fixture(params=BACKENDS)
def enforce(request):
    if os.geteuid() != 0:
        pytest.skip("enforcement tests need root (network namespaces, nftables, iptables)")
    return functools.partial(_enforce, backend_name=request.param)
