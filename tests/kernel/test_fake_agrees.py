"""The fake kernel (sgagent.backend.fake) claims to refuse what the kernel refuses: the same
transactions, sent to the real kernel of a namespace (as nft text, and -- elements only -- as
a netlink batch), are refused too, with nothing changed, and the accepted one is accepted."""

from __future__ import annotations

import secrets

import pytest

from sgagent import netns
from sgagent.backend.kernel import Refused
from sgagent.backend.transaction import AddChain, Transaction
from sgagent.nft.kernel import NftKernel

from ..unit.test_transaction import ACCEPTED, REFUSED, base_ops


@pytest.fixture(scope="module")
def kernel():
    import os
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    name = f"sgf{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with NftKernel(name) as k:
            yield k
    finally:
        netns.delete(name)


def loaded(k: NftKernel) -> str:
    k.delete_table()
    k.execute(Transaction(base_ops()))
    return k.listing()


@pytest.mark.parametrize("ops", REFUSED)
def test_the_kernel_refuses_what_the_fake_refuses(kernel, ops):
    before = loaded(kernel)
    gen = kernel.generation()
    with pytest.raises(Refused):
        kernel.execute(Transaction([AddChain("k_new"), *ops]))
    assert kernel.listing() == before and kernel.generation() == gen
    tx = Transaction(list(ops))
    if tx.elements_only:  # the netlink batch refuses it too (then libnftables does)
        with pytest.raises(Refused):
            kernel.execute(tx, genid=gen)
        assert kernel.listing() == before


@pytest.mark.parametrize("ops,left", ACCEPTED)
def test_the_kernel_takes_what_the_fake_takes(kernel, ops, left):
    loaded(kernel)
    kernel.execute(Transaction(ops))
    assert kernel.live().chains | kernel.live().sets | kernel.live().counters == left
