"""Interface names in the kernel (SEMANTICS section 1): any string is either refused by
validation, or its ruleset loads and filters exactly the interface of that name -- not one
whose name merely starts with it (a wildcard), not loopback.

One namespace for every example; in it, for each accepted name N, a veth called N and one with a
similar name S (N plus a character, or N with its last character changed), each on its own
subnet. A document drops outbound udp/9 on N. A datagram out of S must pass and count nothing; one
out of N must be dropped and counted once on N's rule; and the vmaps listed back as JSON must
hold N byte for byte."""

from __future__ import annotations

import errno
import json
import secrets
import socket
import subprocess

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from sgagent import netns
from sgagent.compiler import compile_document
from sgagent.load import DocumentError, parse_data
from sgagent.nft.backend import NftBackend

PEERS = ("sgkpeer0", "sgkpeer1")
NETS = ("10.200.0", "10.201.0")


def document(name: str) -> dict:
    return {"version": 1,
            "host": {"instance": "i-k", "account": "1",
                     "nics": [{"name": name, "security_groups": ["sg-k"]}]},
            "security_groups": {"sg-k": {"rules": [
                {"id": "probe", "direction": "outbound", "policy": "drop", "protocol": "udp",
                 "ports": 9, "destination": "10.0.0.0/8"}]}}}


def similar(name: str) -> str:
    """A different valid name that a prefix pattern made of ``name`` would also match, or
    that differs from it in the last character only."""
    if len(name.encode()) <= 14:
        return name + "x"
    return name[:-1] + ("y" if name[-1] == "x" else "x")


class Lab:
    """The namespace, its backend, and the two veths of the current example."""

    def __init__(self) -> None:
        self.ns = f"sgk{secrets.token_hex(3)}"
        netns.create(self.ns)
        self.exec = netns.NetnsExecutor(self.ns)
        self.be = NftBackend(self.ns)
        self.names: list[str] = []

    def close(self) -> None:
        self.be.close()
        self.exec.close()
        netns.delete(self.ns)

    def links(self, names: list[str]) -> None:
        def make() -> None:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                for peer in PEERS:
                    for idx in ipr.link_lookup(ifname=peer):
                        ipr.link("del", index=idx)          # and its other end with it
                for name, peer, net in zip(names, PEERS, NETS):
                    ipr.link("add", ifname=name, kind="veth", peer=peer)
                    for n in (name, peer):
                        ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
                    ipr.addr("add", index=ipr.link_lookup(ifname=name)[0],
                             address=f"{net}.1", prefixlen=24)
        self.exec.call(make)

    def send(self, net: str) -> bool:
        """One udp/9 datagram to ``net``.2; False if the firewall refused it (EPERM)."""
        def go() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(b"x", (f"{net}.2", 9))
                except PermissionError as exc:
                    assert exc.errno == errno.EPERM
                    return False
                return True
        return self.exec.call(go)

    def probe_packets(self) -> dict[str, int]:
        return {r.key.nic: r.packets for r in self.be.counters() if r.key.rule == "probe"}

    def vmap_names(self) -> list[str]:
        out = subprocess.run(netns.argv_in(self.ns, ["nft", "-j", "list", "table", "inet",
                                                     "sgagent"]),
                             check=True, capture_output=True, text=True).stdout
        names = []
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                vmap = expr.get("vmap")
                if vmap and vmap["key"].get("meta", {}).get("key") in ("iifname", "oifname"):
                    names += [elem[0] for elem in vmap["data"]["set"]]
        return names


@pytest.fixture(scope="module")
def lab():
    import os
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    lab = Lab()
    yield lab
    lab.close()


NAMES = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),            # mostly refused
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Zs", "Zl", "Zp")),
            min_size=1, max_size=3),                                            # any script
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15),
    st.sampled_from(["eth0", "é" * 7, "x" * 15, "a#b", "a'b", "a$b;{}", "@x", "l", "e",
                     "eth*", "l*", "*", "eth\\", "lo", "eth0\n", "eth\x00", "é" * 9]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_a_name_is_refused_or_matches_exactly_that_interface(lab, name):
    try:
        doc = parse_data(document(name))
    except DocumentError as exc:
        assert exc.errors[0].startswith("host.nics[0].name: ")
        event("refused")
        return
    assume(name not in PEERS)
    event("loaded")
    other = similar(name)
    lab.links([name, other])
    lab.be.apply(compile_document(doc))
    assert lab.vmap_names() == [name] * 4          # input, forward (in and out), output
    before = lab.probe_packets()[name]             # counters of a name seen before are kept
    assert lab.send(NETS[1]), "a datagram out of a similar name was dropped"
    assert lab.probe_packets() == {name: before}
    assert not lab.send(NETS[0]), "a datagram out of the managed NIC passed"
    assert lab.probe_packets() == {name: before + 1}


def test_the_wedging_names_are_refused_before_the_kernel(lab):
    """`eth\\` used to apply and then wedge every later apply; `l*` filtered loopback."""
    for name in ("eth\\", "l*", "*", "lo"):
        with pytest.raises(DocumentError):
            parse_data(document(name))
    lab.links(["eth0", "eth0x"])
    lab.be.apply(compile_document(parse_data(document("eth0"))))
    assert lab.be.diff(compile_document(parse_data(document("eth0")))) == ""
