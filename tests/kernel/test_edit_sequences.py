"""Sequences of edits applied change-sized, as the daemon applies them, against a fresh full
apply and the oracle (issue 10's proof).

Hypothesis draws a document and a sequence of edits -- a rule changed, added or removed, a
group's members, a group added or removed, a binding added or removed, a NIC removed or added
back.  Each edited document is parsed by a :class:`~sgagent.load.DocumentCache` and compiled
against the previous one (``compile_document(doc, previous)``), then applied by one long-lived
backend in a sandbox, as a difference.  After each step:

* the kernel's table lists exactly as a fresh full apply of the same document does (canonical
  listing, counter values aside: ``NftBackend.diff`` through a scratch namespace);
* a fresh compile of the document renders nothing more to send (the generation stays);
* real packets get the evaluator's verdicts and move the counters of the rules it names
  (:func:`sgagent.verify.check`), both what must pass and what must be refused;
* the counters of rules kept across the step never went back.

Some steps are refused by the kernel (a transaction the kernel rejects whole: ``Faulty`` adds
an operation on a missing chain): the previous table stays, byte for byte, and the next step
applies from it.  Some steps follow someone else's ``nft flush table``: the next apply starts
from the kernel's true state and leaves the full document's table again.

SGAGENT_EDIT_EXAMPLES sets the number of sequences (default 12).
"""

from __future__ import annotations

import copy
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgagent.backend.faults import Faulty
from sgagent.backend.kernel import ApplyError
from sgagent.compiler import compile_document
from sgagent.evaluator import evaluate
from sgagent.load import DocumentCache, DocumentError
from sgagent.nft.backend import NftBackend
from sgagent.nft.kernel import NftKernel
from sgagent.verify import Expectation, check, outcome_of

from ..strategies import V4_PEERS, V6_PEERS, documents, probes, rules

EXAMPLES = int(os.environ.get("SGAGENT_EDIT_EXAMPLES", "12"))
STEPS = int(os.environ.get("SGAGENT_EDIT_STEPS", "5"))
PACKETS = int(os.environ.get("SGAGENT_EDIT_PACKETS", "8"))
TIMEOUT = 0.5
KINDS = ["rule", "rule", "rule_add", "rule_remove", "members", "group_add", "group_remove",
         "bind", "unbind", "nic_remove", "nic_add"]


@st.composite
def edit(draw, raw: dict) -> dict:
    """``raw`` with one edit made (a new dict; ``raw`` is left as it is)."""
    doc = copy.deepcopy(raw)
    classic = doc["host"]["network"] == "classic"
    groups = doc["security_groups"]
    names = sorted(groups)
    kind = draw(st.sampled_from(KINDS))
    name = draw(st.sampled_from(names))
    g = groups[name]
    refs = names if g.get("type", "basic") == "basic" else []
    if kind == "rule" and g.get("rules"):
        i = draw(st.integers(0, len(g["rules"]) - 1))
        g["rules"][i] = draw(rules(not classic, refs, classic))
    elif kind in ("rule", "rule_add"):
        g.setdefault("rules", []).append(draw(rules(not classic, refs, classic)))
    elif kind == "rule_remove" and g.get("rules"):
        del g["rules"][draw(st.integers(0, len(g["rules"]) - 1))]
    elif kind == "members":
        pool = V4_PEERS + ([] if classic else V6_PEERS)
        g["members"] = draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))
    elif kind == "group_add":
        new = f"sg-n{len(names)}"
        groups[new] = {"type": g.get("type", "basic"), "members": list(g.get("members", [])),
                       "rules": draw(st.lists(rules(not classic, refs, classic), max_size=4))}
        if "inner_access" in g:
            groups[new]["inner_access"] = g["inner_access"]
        nic = draw(st.sampled_from(doc["host"]["nics"]))
        nic["security_groups"].append(new)
    elif kind == "group_remove" and len(names) > 1:
        del groups[name]   # refused as invalid while something still refers to it
        for nic in doc["host"]["nics"]:
            nic["security_groups"] = [x for x in nic["security_groups"] if x != name]
    elif kind in ("bind", "unbind"):
        nic = draw(st.sampled_from(doc["host"]["nics"]))
        if kind == "bind" and name not in nic["security_groups"]:
            nic["security_groups"].append(name)
        elif kind == "unbind" and len(nic["security_groups"]) > 1:
            nic["security_groups"] = [x for x in nic["security_groups"] if x != name]
    elif kind == "nic_remove" and not classic and len(doc["host"]["nics"]) > 1:
        doc["host"]["nics"].pop()
    elif kind == "nic_add" and not classic and len(doc["host"]["nics"]) == 1:
        doc["host"]["nics"].append({"name": "eth1", "role": "vpc",
                                    "security_groups": [name]})
    return doc


def expectations(doc, raw) -> list[Expectation]:
    out = []
    for nic, direction, peer, proto, port in raw:
        v = evaluate(doc, Expectation(nic, direction, peer, proto, port).packet())
        out.append(Expectation(nic, direction, peer, proto, port, outcome_of(v.verdict, False),
                               v.group, v.rule))
    return out


def flush_table(ns: str) -> None:
    """Someone else empties the sgagent table (nft by hand)."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "table", "inet", "sgagent"],
                   check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def layouts(sandboxes):
    """The sandbox for a document's kind: both NICs exist even when the document has one,
    so that a NIC can be removed and added back."""
    def get(raw: dict):
        if raw["host"]["network"] == "classic":
            return sandboxes([("eth0", "intranet"), ("eth1", "internet")])[0]
        return sandboxes([("eth0", "vpc"), ("eth1", "vpc")])[0]
    return get


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_edit_sequences_applied_change_sized(layouts, data):
    raw = data.draw(documents(max_groups=3, max_rules=5))
    sb = layouts(raw)
    kernel = Faulty(NftKernel(sb.host_ns))
    backend = NftBackend(sb.host_ns, kernel=kernel)
    cache = DocumentCache()
    try:
        doc = cache.parse_data(copy.deepcopy(raw))
        rs = compile_document(doc)
        backend.apply(rs)
        applied = (doc, rs)
        counts = {r.key: r.packets for r in backend.counters()}
        for step in range(data.draw(st.integers(1, STEPS), label="steps")):
            raw = data.draw(edit(raw), label=f"edit {step}")
            try:
                doc = cache.parse_data(copy.deepcopy(raw))
            except DocumentError:
                continue   # refused as invalid: nothing is applied (tested elsewhere)
            rs = compile_document(doc, applied)
            fate = data.draw(st.sampled_from(["applied"] * 4 + ["refused", "after a flush"]),
                             label=f"fate {step}")
            if fate == "refused":
                before, gen = backend.live_text(), kernel.generation()
                kernel.refusing = True
                with pytest.raises(ApplyError):
                    backend.apply(rs)
                kernel.refusing = False
                assert backend.live_text() == before and kernel.generation() == gen
                continue   # the next step is compiled against the applied one again
            if fate == "after a flush":
                flush_table(sb.host_ns)
            backend.apply(rs)
            applied = (doc, rs)
            # exactly what a fresh full apply loads
            assert backend.diff(compile_document(doc)) == ""
            now = {r.key: r.packets for r in backend.counters()}
            if fate == "applied":   # a flush empties the counters with the table
                gone_back = {k: (counts[k], v) for k, v in now.items()
                             if k in counts and v < counts[k]}
                assert not gone_back, f"counters went back: {gone_back}"
            # a fresh compile has nothing more to send; packets agree with the oracle
            gen = kernel.generation()
            exps = expectations(doc, data.draw(probes(raw, PACKETS), label=f"probes {step}"))
            report = check(doc, exps, timeout=TIMEOUT, sandbox=sb, backend=backend)
            assert kernel.generation() == gen, "a fresh compile of the edited document " \
                "rendered something the incremental apply had not"
            assert report.ok, "kernel and oracle disagree\n" + report.table()
            counts = {r.key: r.packets for r in backend.counters()}
    finally:
        backend.close()
