"""``auto`` and the variant detection, in fresh namespaces: nftables where sgagent's table is or
where the host has no iptables rules; else the iptables variant holding the host's rules (as
kube-proxy's wrapper decides), or the one holding sgagent's chains."""

from __future__ import annotations

import pytest

from sgagent.backends import choose, make_backend
from sgagent.compiler import compile_document
from sgagent.ipt.variant import detect
from sgagent.load import load_file
from sgagent.nft.backend import NftBackend

from .conftest import run_in

RS = "examples/alibaba/s2-ssh-from-ip-vpc.yaml"


def test_no_rules_at_all_is_nftables(ns):
    assert choose(ns).name == "nftables"


@pytest.mark.parametrize("variant", ["legacy", "nft"])
def test_host_rules_pick_their_variant(ns, variant):
    run_in(ns, f"iptables-{variant}", "-A", "INPUT", "-s", "192.0.2.9", "-j", "DROP")
    assert detect(ns) == variant
    c = choose(ns)
    assert (c.name, c.variant) == ("iptables", variant), c.why
    with make_backend("auto", ns) as be:
        assert be.name == "iptables" and be.variant == variant
        be.apply(compile_document(load_file(RS)))
    # sgagent's chains, once there, keep the choice even if the host's rules go
    run_in(ns, f"iptables-{variant}", "-D", "INPUT", "-s", "192.0.2.9", "-j", "DROP")
    c = choose(ns)
    assert (c.name, c.variant) == ("iptables", variant), c.why


def test_more_rules_win_and_sgagent_nft_table_means_nftables(ns):
    run_in(ns, "iptables-legacy", "-A", "INPUT", "-s", "192.0.2.9", "-j", "DROP")
    for i in range(3):
        run_in(ns, "iptables-nft", "-A", "INPUT", "-s", f"192.0.2.{i}", "-j", "DROP")
    assert detect(ns) == "nft"
    with NftBackend(ns) as be:
        be.apply(compile_document(load_file(RS)))
    assert choose(ns).name == "nftables"
