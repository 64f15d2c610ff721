"""The netlink batch executor (sgagent.nft.batch, sgagent.nft.exprs) against libnftables: the
rules it encodes list exactly as the same text loaded by libnftables, its batches are atomic,
and a batch carrying a stale generation is refused with nothing changed."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgagent import netns
from sgagent.backend.objects import Rule
from sgagent.backend.transaction import (AddChain, AddCounter, AddRules, DeleteChain,
                                         FlushChain, Transaction)
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.batch import messages_of

from ..strategies import documents

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import docgen  # noqa: E402
import hvgen  # noqa: E402


@pytest.fixture(scope="module")
def ns():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    name = "sgnb" + secrets.token_hex(3)
    netns.create(name)
    yield name
    netns.delete(name)


def reloaded_over_netlink(ns: str, raw: dict) -> tuple[int, int]:
    """Load ``raw`` through libnftables, then flush every plain chain whose rules the batch
    encoder takes and add its rules again over netlink, in one batch: the table must list
    exactly as before.  (chains re-added, chains left to libnftables)"""
    with NftBackend(ns) as be:
        be.flush()
        applied = be.apply(compile_document(parse_data(raw))).objects
        before = be.live_text()
        ops, left = [], 0
        for name, (header, rules) in applied.chains.items():
            add = AddRules(name, rules)
            if header is not None:
                continue
            if rules and messages_of(add) is None:
                left += 1
                continue
            ops += [FlushChain(name), add]
        done = be.kernel.execute(Transaction(ops), genid=be.kernel.generation())
        assert done.channel == "netlink"
        assert be.live_text() == before
        be.flush()
        return len(ops) // 2, left


def test_the_class_chains_of_generated_tables_list_the_same_over_netlink(ns):
    for raw in (docgen.generate(400), hvgen.generate(2, 150)):
        chains, left = reloaded_over_netlink(ns, raw)
        # every plain chain, the NICs' own (state, DHCP, lookups) too
        assert chains > 100 and left == 0


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(raw=documents())
def test_every_rule_the_encoder_takes_lists_as_its_text(ns, raw):
    reloaded_over_netlink(ns, raw)


def test_a_batch_is_atomic_and_a_stale_generation_is_refused(ns):
    with NftBackend(ns) as be:
        be.flush()
        be.apply(compile_document(parse_data(docgen.generate(50))))
        before, gen = be.live_text(), be.kernel.generation()
        good = [AddChain("k_batchtest"), AddCounter("c_batchtest", "x|y"),
                AddRules("k_batchtest", (Rule("tcp dport 80 counter name c_batchtest return"),
                                         Rule("goto k_batchtest2")))]
        # the last operation fails (no such chain to jump to): nothing of it is committed
        with pytest.raises(Exception):
            be.kernel.execute(Transaction(good), genid=gen)
        assert be.live_text() == before and be.kernel.generation() == gen
        assert messages_of(DeleteChain("k_nosuch")) is not None
        # a foreign commit in between: a batch carrying the older generation is refused,
        # and goes through libnftables instead (which the caller asked for with genid)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "table", "ip", "someone"],
                       check=True)
        ok = [AddChain("k_batchtest2"), AddChain("k_batchtest")] + good[1:]
        done = be.kernel.execute(Transaction(ok), genid=gen)
        assert done.channel == "libnftables"
        listing = be.live_text()
        assert "tcp dport 80 counter name \"c_batchtest\" return" in listing \
            or "tcp dport 80 counter name c_batchtest return" in listing
        now = be.kernel.generation()
        done = be.kernel.execute(Transaction([FlushChain("k_batchtest")]), genid=now)
        assert done.channel == "netlink"
        assert "c_batchtest return" not in be.live_text()
        be.flush()
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "someone"],
                       check=True)


def test_shapes_it_does_not_know_go_to_libnftables():
    for text in ("tcp dport 99999", "quota 10 mbytes return", "log prefix \"x\" return",
                 "meta l4proto tcp counter name c reject with tcp fin"):
        assert messages_of(AddRules("k", (Rule(text),))) is None, text
    assert messages_of(AddChain("in_eth0", "type nat hook input priority filter;")) is None
