"""An apply is one transaction: a refused one leaves the previous ruleset exactly as it was,
and says why; there is no moment with neither the old nor the new rules in force."""

from __future__ import annotations

import copy
import secrets
import threading

import pytest

from sgagent import netns
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.backend.faults import Faulty
from sgagent.nft.backend import ApplyError, NftBackend
from sgagent.nft.kernel import NftKernel

DOC = {
    "version": 1,
    "host": {"instance": "i-a", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"rules": [
        {"id": f"r{i}", "direction": "inbound", "protocol": "tcp", "ports": 1000 + i,
         "source": f"10.{i // 250}.{i % 250}.1/32"} for i in range(2000)]}},
}


@pytest.fixture
def ns(root):
    name = f"sga{secrets.token_hex(3)}"
    netns.create(name)
    yield name
    netns.delete(name)


def other(doc: dict) -> dict:
    d = copy.deepcopy(doc)
    for r in d["security_groups"]["sg-a"]["rules"]:
        r["ports"] = r["ports"] + 5000
    return d


def test_refused_apply_leaves_the_previous_ruleset(ns):
    kernel = Faulty(NftKernel(ns))
    with NftBackend(ns, kernel=kernel) as be:
        be.apply(compile_document(parse_data(DOC)))
        before = be.live_text()
        kernel.refusing = True  # every transaction now ends with a command the kernel refuses
        for full in (False, True):
            with pytest.raises(ApplyError, match="nothing was changed"):
                be.apply(compile_document(parse_data(other(DOC))), full=full)
            assert be.live_text() == before
        kernel.refusing = False
        be.apply(compile_document(parse_data(other(DOC))))
        assert be.live_text() != before
        assert be.diff(compile_document(parse_data(other(DOC)))) == ""


def test_no_moment_without_rules(ns):
    """While documents A and B replace each other, a reader in the namespace only ever sees
    a complete table: A's or B's chain, never an empty or missing one."""
    a, b = compile_document(parse_data(DOC)), compile_document(parse_data(other(DOC)))
    seen: list[int] = []
    stop = threading.Event()

    def watch():
        from sgagent.nft.libnft import Nft
        nft = Nft()
        while not stop.is_set():
            out = nft.run("list chain inet sgagent in_eth0")
            seen.append(out.count("vmap"))
        nft.close()

    with NftBackend(ns) as be:
        be.apply(a)
        with netns.NetnsExecutor(ns) as ex:
            fut = ex.submit(watch)
            for i in range(6):
                be.apply(b if i % 2 == 0 else a, full=i % 4 == 3)
            stop.set()
            fut.result(timeout=30)
    assert seen and all(n >= 1 for n in seen), seen
