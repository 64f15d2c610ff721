"""A membership change is sent as element updates straight over netlink (nft/elements.py):
it must be enforced on real packets, leave exactly what a fresh load would, be refused whole
(nothing changed) when the kernel refuses any part, and never be sent over a ruleset someone
else changed since."""

from __future__ import annotations

import copy
import secrets

import pytest

from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.backend.faults import Faulty
from sgagent.nft.backend import ApplyError, NftBackend
from sgagent.nft.kernel import NftKernel
from sgagent.sandbox import Outcome, Probe, Sandbox

DOC = {
    "version": 1,
    "host": {"instance": "i-m", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {
        "sg-a": {"rules": [
            {"id": "db-from-app", "direction": "inbound", "protocol": "tcp", "ports": 3306,
             "source": {"group": "sg-app"}},
            {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
             "source": "10.1.0.0/24"},
            {"id": "ssh", "direction": "inbound", "service": "ssh", "source": "10.0.0.0/8"},
        ]},
        "sg-app": {"members": ["10.1.0.30", "10.2.0.40"]},
    },
}


def with_members(*members: str) -> dict:
    doc = copy.deepcopy(DOC)
    doc["security_groups"]["sg-app"]["members"] = list(members)
    return doc


@pytest.fixture
def sandbox(root):
    with Sandbox([("eth0", "vpc")], prefix=f"sgm{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 3306)
        sb.ensure_tcp_listener("host", 80)
        sb.ensure_tcp_listener("host", 22)
        with NftBackend(sb.host_ns, kernel=Faulty(NftKernel(sb.host_ns))) as be:
            be.apply(compile_document(parse_data(DOC)))
            yield sb, be


def db(peer: str) -> Probe:
    return Probe("eth0", "inbound", peer, "tcp", 3306)


def test_members_change_over_netlink_and_are_enforced(sandbox):
    sb, be = sandbox
    # 10.1.0.31 joins inside 10.1.0.0/24 (a narrow network: the exact map, whose row exists:
    # 10.1.0.30's), 10.2.0.41 inside 10.0.0.0/8 only (a wide one: found through the member
    # set), 10.2.0.40 leaves.
    doc = with_members("10.1.0.30", "10.1.0.31", "10.2.0.41")
    result = be.apply(compile_document(parse_data(doc)))
    assert (result.mode, result.channel) == ("delta", "netlink")
    assert result.commands == 4  # the member set: 2 in, 1 out; the exact map: 1 in
    exact = result.objects.exact["h4_in_eth0"]
    assert "10.1.0.31" in exact and "10.2.0.41" not in exact and "10.2.0.40" not in exact
    assert sb.probe_many([db("10.1.0.31"), db("10.2.0.41"), db("10.2.0.40"), db("10.1.0.32")]) \
        == [Outcome.OPEN, Outcome.OPEN, Outcome.DROPPED, Outcome.DROPPED]
    # and the networks' own rules still hold for them
    assert sb.probe_many([Probe("eth0", "inbound", "10.1.0.31", "tcp", 80),
                          Probe("eth0", "inbound", "10.2.0.41", "tcp", 22),
                          Probe("eth0", "inbound", "10.2.0.41", "tcp", 80)]) \
        == [Outcome.OPEN, Outcome.OPEN, Outcome.DROPPED]
    assert be.diff(compile_document(parse_data(doc))) == ""


def test_a_new_class_goes_over_netlink_too(sandbox):
    sb, be = sandbox
    # alone in its class: 10.3.0.0/24 (narrow) holds no member yet, a new class chain is needed
    # (a plain chain and rules of the shapes the netlink batch encodes: one batch still)
    doc = with_members("10.1.0.30", "10.2.0.40", "10.1.0.99")
    doc["security_groups"]["sg-a"]["rules"].append(
        {"id": "alt-ssh", "direction": "inbound", "protocol": "tcp", "ports": 2222,
         "source": "10.3.0.0/24"})
    be.apply(compile_document(parse_data(doc)))
    doc["security_groups"]["sg-app"]["members"].append("10.3.0.5")
    result = be.apply(compile_document(parse_data(doc)))
    assert (result.mode, result.channel) == ("delta", "netlink")
    assert sb.probe_many([db("10.3.0.5"), db("10.3.0.6"),
                          Probe("eth0", "inbound", "10.3.0.5", "tcp", 80)]) \
        == [Outcome.OPEN, Outcome.DROPPED, Outcome.DROPPED]
    assert be.diff(compile_document(parse_data(doc))) == ""


def test_a_refused_batch_changes_nothing(sandbox):
    sb, be = sandbox
    before = be.live_text()
    be.kernel.refusing = True  # the netlink batch, then the same change as text, then full
    with pytest.raises(ApplyError):
        be.apply(compile_document(parse_data(with_members("10.1.0.30", "10.2.0.41"))))
    assert be.kernel.refused == 2
    assert be.live_text() == before
    assert sb.probe_many([db("10.2.0.41"), db("10.2.0.40")]) == [Outcome.DROPPED, Outcome.OPEN]
    be.kernel.refusing = False
    doc = with_members("10.1.0.30", "10.2.0.41")
    be.apply(compile_document(parse_data(doc)))
    assert be.diff(compile_document(parse_data(doc))) == ""


def test_never_sent_over_a_ruleset_changed_since(sandbox):
    sb, be = sandbox
    sb.run("host", ["nft", "add table ip someone_else"])  # another commit: a new generation
    result = be.apply(compile_document(parse_data(with_members("10.1.0.30", "10.2.0.41"))))
    assert (result.mode, result.channel) == ("full", "netlink")
    assert sb.probe_many([db("10.2.0.41"), db("10.2.0.40")]) == [Outcome.OPEN, Outcome.DROPPED]
