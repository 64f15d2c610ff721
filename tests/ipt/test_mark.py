"""An unchanged apply is cheap, and honest about it: an apply leaves a mark of what it loaded
and of the state it left; a later apply (another process: a fresh backend here) that finds the
kernel in that state renders nothing, and one that finds anything changed by hand -- a rule,
a jump, a set's elements -- renders and repairs it.  Element changes behind sgagent's back
are also what its drift watch reports.  Real namespaces, both variants; the repaired verdicts
are checked with real packets, both sides."""

from __future__ import annotations

import copy
import secrets
import threading

import pytest

from sgagent.compiler import compile_document
from sgagent.ipt.backend import IptBackend
from sgagent.ipt.kernel import MARK, IptKernel
from sgagent.load import parse_data
from sgagent.sandbox import Outcome, Probe, Sandbox

from .conftest import run_in
from .test_kernel import DOC, VARIANTS

RS = compile_document(parse_data(DOC))


def fresh(ns: str, variant: str, renders: list | None = None) -> IptBackend:
    """A backend as a new process has it (nothing rendered yet); ``renders`` collects what
    it renders."""
    be = IptBackend(ns, variant=variant)
    if renders is not None:
        render = be.render
        be.render = lambda rs: renders.append(rs) or render(rs)  # type: ignore[method-assign]
    return be


def marks(ns: str) -> list[str]:
    return [n for n in run_in(ns, "ipset", "list", "-n").split() if n.startswith(MARK)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_unchanged_apply_renders_nothing_and_a_changed_kernel_is_repaired(ns, variant):
    with fresh(ns, variant) as be:
        be.apply(RS)
        listing = be.live_text()
    assert len(marks(ns)) == 1 and MARK not in listing
    renders: list = []
    with fresh(ns, variant, renders) as be:
        result = be.apply(RS)
        assert renders == [] and result.mode == "delta"
        assert result.counters == len({k for c in RS.chains for k in c.counters})
        assert result.commands <= 4  # two saves, ipset list -n and save: reading only
        assert be.diff(RS) == ""
    # by hand: a rule appended to a chain of sgagent's, then the jump from INPUT removed
    chain = next(n for n in listing.split() if n.startswith("sgagent-in-"))
    for edit in (["-A", chain, "-j", "ACCEPT"], ["-D", "INPUT", "-j", "sgagent-INPUT"]):
        run_in(ns, f"iptables-{variant}", *edit)
        renders.clear()
        with fresh(ns, variant, renders) as be:
            be.apply(RS)
            assert len(renders) == 1 and be.live_text() == listing
        with fresh(ns, variant, renders) as be:
            be.apply(RS)
            assert len(renders) == 1  # and repaired, the mark holds again
    # another document renders (and the mark follows it)
    changed = copy.deepcopy(DOC)
    changed["security_groups"]["sg-a"]["rules"].pop(0)
    with fresh(ns, variant, renders) as be:
        be.apply(compile_document(parse_data(changed)))
        assert len(renders) == 2 and be.live_text() != listing
    assert len(marks(ns)) == 1
    with fresh(ns, variant) as be:
        assert be.flush()
    assert run_in(ns, "ipset", "list", "-n") == ""


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_lost_mark_costs_one_compare_that_sends_nothing(ns, variant):
    with fresh(ns, variant) as be:
        be.apply(RS)
        listing = be.live_text()
    for name in marks(ns):
        run_in(ns, "ipset", "destroy", name)
    renders: list = []
    with fresh(ns, variant, renders) as be:
        before = be.kernel.commands
        be.apply(RS)
        # the read, the mark: no restore, no second read
        assert len(renders) == 1 and be.kernel.commands - before == 5
    assert len(marks(ns)) == 1
    with fresh(ns, variant, renders) as be:
        be.apply(RS)
        assert len(renders) == 1 and be.live_text() == listing


def test_the_mark_names_the_rendering_and_the_variant():
    marks_ = {IptBackend(rendering=r, kernel=IptKernel(None, v)).mark(RS)
              for r in ("sets", "linear") for v in VARIANTS}
    assert len(marks_) == 4
    assert IptBackend(kernel=IptKernel(None, "nft")).mark(RS) == \
        IptBackend(kernel=IptKernel(None, "nft")).mark(compile_document(parse_data(DOC)))


def copy_member(ns: str, member: str, intruder: str) -> int:
    """Put ``intruder`` into every sgagent set that holds ``member`` (by hand, as someone
    with ``ipset add`` would): the intruder is looked up as the member is."""
    n = 0
    for line in run_in(ns, "ipset", "save").splitlines():
        parts = line.split()
        if parts[:1] == ["add"] and parts[1].startswith("sgagent") and parts[2] == member:
            run_in(ns, "ipset", "add", parts[1], intruder, *parts[3:])
            n += 1
    return n


@pytest.mark.parametrize("variant", VARIANTS)
def test_elements_added_by_hand_are_seen_by_the_watch_and_repaired_by_the_next_apply(
        root, variant):
    member = Probe("eth0", "inbound", "10.1.0.30", "tcp", 3306)    # db-from-peers: open
    intruder = Probe("eth0", "inbound", "10.1.0.31", "tcp", 3306)  # no member: dropped
    with Sandbox([("eth0", "vpc")], prefix=f"sgi{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 3306)
        ns = sb.host_ns
        seen = threading.Event()
        with fresh(ns, variant) as be:
            be.apply(RS)
            assert sb.probe_many([member, intruder]) == [Outcome.OPEN, Outcome.DROPPED]
            watch = be.kernel.watch(seen.set, interval=0.1)
            try:
                assert not seen.wait(0.5)
                assert copy_member(ns, "10.1.0.30", "10.1.0.31") > 0
                assert seen.wait(5.0)  # the drift watch reads the elements
            finally:
                watch.close()
        assert sb.probe_many([member, intruder]) == [Outcome.OPEN, Outcome.OPEN]
        renders: list = []
        with fresh(ns, variant, renders) as be:
            be.apply(RS)  # a plain apply, from a new process: the mark no longer holds
            assert len(renders) == 1
        assert sb.probe_many([member, intruder]) == [Outcome.OPEN, Outcome.DROPPED]
        with fresh(ns, variant, renders) as be:
            be.apply(RS)
            assert len(renders) == 1
