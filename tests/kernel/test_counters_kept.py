"""SEMANTICS section 8: counters of rules an apply keeps never go backwards, whether the apply
sends a difference, replaces the table whole, or only changes group members."""

from __future__ import annotations

import copy
import secrets

from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.sandbox import Outcome, Probe, Sandbox
from sgagent.nft.backend import NftBackend

DOC = {
    "version": 1,
    "host": {"instance": "i-c", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"members": ["10.1.0.30"], "rules": [
        {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "198.51.100.0/24"},
        {"id": "db-from-peers", "direction": "inbound", "protocol": "tcp", "ports": 3306,
         "source": {"group": "sg-a"}},
    ]}},
}


def packets(be: NftBackend) -> dict[str, int]:
    return {r.key.rule: r.packets for r in be.counters() if r.key.group}


def test_kept_rules_keep_counting_across_applies(root):
    with Sandbox([("eth0", "vpc")], prefix=f"sgk{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 80)
        sb.ensure_tcp_listener("host", 3306)
        hit = [Probe("eth0", "inbound", "198.51.100.7", "tcp", 80),
               Probe("eth0", "inbound", "10.1.0.30", "tcp", 3306)]
        with NftBackend(sb.host_ns) as be:
            be.apply(compile_document(parse_data(DOC)))
            assert sb.probe_many(hit) == [Outcome.OPEN, Outcome.OPEN]
            seen = packets(be)
            assert seen == {"web": 1, "db-from-peers": 1}

            # A difference: a rule added, the kept ones untouched.
            more = copy.deepcopy(DOC)
            more["security_groups"]["sg-a"]["rules"].append(
                {"id": "ssh", "direction": "inbound", "service": "ssh", "source": "10.0.0.0/8"})
            assert be.apply(compile_document(parse_data(more))).mode == "delta"
            assert packets(be) == {**seen, "ssh": 0}

            # Only members change: the member-set fast path.
            members = copy.deepcopy(more)
            members["security_groups"]["sg-a"]["members"].append("10.1.0.31")
            result = be.apply(compile_document(parse_data(members)))
            assert result.mode == "delta" and result.commands <= 3
            assert packets(be) == {**seen, "ssh": 0}

            # A whole replacement (as after someone edited the table) keeps them too.
            be.apply(compile_document(parse_data(members)), full=True)
            assert packets(be) == {**seen, "ssh": 0}

            # ... and they go on counting from there.
            sb.probe_many(hit)
            assert packets(be) == {"web": 2, "db-from-peers": 2, "ssh": 0}
