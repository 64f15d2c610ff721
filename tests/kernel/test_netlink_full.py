"""A full load over netlink (sgagent.nft.batch, exprs, setdefs) against libnftables: the
table, its counters, sets and maps with interval elements, base chains, anonymous sets and
every rule shape the renderers write go in as one netlink batch, and the kernel lists exactly
what libnftables' load of the same text (what ``sgagent compile`` prints) lists; a refused
full batch leaves the previous ruleset as it was."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from sgagent import netns
from sgagent.backend.kernel import Refused
from sgagent.backend.objects import Rule
from sgagent.backend.transaction import NO_TABLE, replace
from sgagent.compiler import compile_document
from sgagent.load import load_file, parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.kernel import NftKernel, normalised
from sgagent.nft.render import RENDERINGS, render

from ..strategies import documents

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import docgen  # noqa: E402
import hvgen  # noqa: E402

EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml"))


@pytest.fixture(scope="module")
def kernels():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    names = ["sgnf" + secrets.token_hex(3) for _ in range(2)]
    for n in names:
        netns.create(n)
    a, b = NftKernel(names[0]), NftKernel(names[1])
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        for n in names:
            netns.delete(n)


def same_as_libnftables(kernels, rs, rendering: str) -> None:
    over_netlink, through_text = kernels
    objs = render(rs, rendering)
    for k in kernels:
        k.delete_table()
    done = over_netlink.execute(replace(NO_TABLE, objs))
    assert done.channel == "netlink"
    through_text._run(lambda nft: nft.run(objs.text()))
    got, want = over_netlink.listing(), through_text.listing()
    assert want and normalised(got) == normalised(want)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_examples_load_over_netlink_as_libnftables_loads_them(kernels, rendering):
    for path in EXAMPLES:
        try:
            doc = load_file(path)
        except Exception:   # an example of a refused document (failsafe-lockout ...)
            continue
        same_as_libnftables(kernels, compile_document(doc), rendering)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_generated_tables_load_over_netlink_as_libnftables_loads_them(kernels, rendering):
    for raw in (docgen.generate(1500, seed=3), hvgen.generate(3, 200)):
        same_as_libnftables(kernels, compile_document(parse_data(raw)), rendering)


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(raw=documents())
def test_every_generated_document_loads_over_netlink_as_libnftables_loads_it(kernels, raw):
    # documents() draws flow logs, rate limits, audit rules, rejects, groups and networks
    for rendering in RENDERINGS:
        same_as_libnftables(kernels, compile_document(parse_data(raw)), rendering)


def test_a_refused_full_batch_leaves_the_ruleset_intact(kernels):
    k = kernels[0]
    with NftBackend(k.netns_name, kernel=k) as be:
        be.flush()
        result = be.apply(compile_document(parse_data(docgen.generate(200, seed=4))))
        assert result.channel == "netlink" and result.mode == "full"
        before, gen = be.live_text(), k.generation()
        objs = render(compile_document(parse_data(docgen.generate(300, seed=5))), "sets")
        chain = next(n for n, (h, rules) in objs.chains.items() if h is None and rules)
        header, rules = objs.chains[chain]
        # the last rule goes to a chain that does not exist: the kernel refuses the batch,
        # libnftables the text, and nothing of either is committed
        objs.chains[chain] = (header, rules + (Rule("goto k_nosuchchain"),))
        with pytest.raises(Refused):
            k.execute(replace(k.live(), objs))
        assert be.live_text() == before and k.generation() == gen
        be.close = lambda: None   # the kernel belongs to the fixture


SCRATCH = """
import sys
from sgagent.backend.transaction import NO_TABLE, replace
from sgagent.compiler import compile_document
from sgagent.load import load_file
from sgagent.nft.kernel import NftKernel
from sgagent.nft.render import render
objs = render(compile_document(load_file(sys.argv[1])), "sets")
with NftKernel() as k, k.scratch() as scratch:
    done = scratch.execute(replace(NO_TABLE, objs))
    print(done.channel, bool(scratch.listing()), bool(k.listing()))
"""


def test_a_scratch_kernel_loads_into_its_own_namespace(kernels):
    # in a throwaway namespace of its own (unshare), so that a batch sent to the wrong
    # namespace could not reach this machine's: the scratch namespace holds the table, the
    # process's own stays empty
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRATCH,
                          str(ROOT / "examples" / "defaults-tencent.yaml")],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["netlink", "True", "False"]


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(raw=documents())
def test_the_live_names_are_what_was_loaded(kernels, raw):
    # live() dumps names over netlink: every chain, named set and map (by kind) and counter
    # (the suppressed-record ones of flow logs too), no anonymous set
    k = kernels[0]
    objs = render(compile_document(parse_data(raw)), "sets")
    k.delete_table()
    assert not k.live().table
    k.execute(replace(NO_TABLE, objs))
    live = k.live()
    assert live.table and live.chains == set(objs.chains)
    assert live.sets == {f"{s.kind} {name}" for name, s in objs.sets.items()}
    assert live.counters == set(objs.counters)
