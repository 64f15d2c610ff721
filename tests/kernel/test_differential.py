"""The kernel against the oracle: for generated documents and packets, the verdict a real
packet gets in a namespace, and the rule whose counter it moves, equal the evaluator's.
Each document is applied as a difference from the previous one (the backend lives as long as
the sandbox), and the kernel must then hold exactly what a fresh full load would.

SGAGENT_DIFF_EXAMPLES sets the number of documents (default 200; a long soak: 5000); the
iptables backend runs a quarter of them (each apply there is a few processes).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.verify import Expectation, check, outcome_of
from sgagent.evaluator import evaluate

from ..strategies import V4_PEERS, V6_PEERS, documents, probes

EXAMPLES = int(os.environ.get("SGAGENT_DIFF_EXAMPLES", "200"))
PACKETS = int(os.environ.get("SGAGENT_DIFF_PACKETS", "30"))
TIMEOUT = float(os.environ.get("SGAGENT_DIFF_TIMEOUT", "0.5"))


def expectations(doc, raw) -> list[Expectation]:
    out = []
    for nic, direction, peer, proto, port in raw:
        e = Expectation(nic, direction, peer, proto, port)
        v = evaluate(doc, e.packet())
        out.append(Expectation(nic, direction, peer, proto, port, outcome_of(v.verdict, False),
                               v.group, v.rule))
    return out


def _run(sandboxes, data, rendering: str, members_only: bool = False,
         backend_name: str = "nftables") -> None:
    raw_doc = data.draw(documents())
    doc = parse_data(raw_doc)
    sb, backend = sandboxes([(n.name, n.role) for n in doc.host.nics], rendering, backend_name)
    if members_only:
        # Apply the document, then the same one with other members: only member sets change,
        # unless a new member lands where the rendering assumed none would (then it re-renders).
        backend.apply(compile_document(doc))
        pool = V4_PEERS + (V6_PEERS if raw_doc["host"]["network"] == "vpc" else [])
        for g in raw_doc["security_groups"].values():
            g["members"] = data.draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))
        doc = parse_data(raw_doc)
    exps = expectations(doc, data.draw(probes(raw_doc, PACKETS)))
    report = check(doc, exps, timeout=TIMEOUT, sandbox=sb, backend=backend)
    assert report.ok, "kernel and oracle disagree\n" + report.table()
    # The difference the backend sent left exactly what a fresh full load would.
    assert backend.diff(compile_document(doc)) == ""


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_set_rendering_agrees_with_oracle(sandboxes, data):
    _run(sandboxes, data, "sets")


@settings(max_examples=max(EXAMPLES // 10, 5), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_linear_rendering_agrees_with_oracle(sandboxes, data):
    _run(sandboxes, data, "linear")


@settings(max_examples=max(EXAMPLES // 4, 5), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_membership_changes_agree_with_oracle(sandboxes, data):
    _run(sandboxes, data, "sets", members_only=True)


@settings(max_examples=max(EXAMPLES // 4, 5), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_iptables_set_rendering_agrees_with_oracle(sandboxes, data):
    _run(sandboxes, data, "sets", backend_name="iptables")


@settings(max_examples=max(EXAMPLES // 20, 5), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_iptables_linear_rendering_agrees_with_oracle(sandboxes, data):
    _run(sandboxes, data, "linear", backend_name="iptables")


@settings(max_examples=max(EXAMPLES // 10, 5), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_iptables_membership_changes_agree_with_oracle(sandboxes, data):
    _run(sandboxes, data, "sets", members_only=True, backend_name="iptables")
