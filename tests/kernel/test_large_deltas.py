"""Large differences as one netlink batch (issue 10): the edit sequences of
:mod:`tests.kernel.test_edit_sequences` -- packets checked against the oracle, counters kept,
refused steps leaving the table intact, steps after someone else's flush -- with every change
of a chain counted as one that rebuilds much of the table.  The kernel took the first full load
as a netlink batch, so the applier sends each such change as a difference whose changed
interval sets and maps are added again whole (with the chains that look them up) instead of
replacing the whole table."""

from __future__ import annotations

import pytest

from sgagent.backend import applier
from sgagent.backend.transaction import DeleteSet
from sgagent.nft.kernel import NftKernel

from .test_edit_sequences import layouts  # noqa: F401 - the fixture, used by the test below
from .test_edit_sequences import test_edit_sequences_applied_change_sized as sequences


@pytest.fixture(autouse=True)
def every_chain_change_is_large(monkeypatch):
    monkeypatch.setattr(applier, "REPLACE_MIN_CHAINS", 0)
    monkeypatch.setattr(applier, "REPLACE_SHARE", 0.0)
    sent = []   # large differences the kernel committed as a netlink batch
    execute = NftKernel.execute

    def counting(self, tx, **kw):
        done = execute(self, tx, **kw)
        if not tx.full and done.channel == "netlink" and any(
                isinstance(op, DeleteSet) for op in tx):
            sent.append(len(tx))
        return done
    monkeypatch.setattr(NftKernel, "execute", counting)
    yield
    assert sent, "no large difference went as a netlink batch"


test_edit_sequences_applied_as_large_differences = sequences
