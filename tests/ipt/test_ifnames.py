"""Interface names iptables would read otherwise, with real packets in both variants: a name
with a trailing '+' (a wildcard to ``-i``/``-o``, so matched through a ``hash:net,iface``
ipset) and one with a leading '!' (literal to iptables 1.8) filter exactly the interface of
that name -- not the ones a pattern or a negation would also match.

For each name N, a veth called N and two with similar names (N without its last character,
N plus a character; for '!x0', x0), each on its own subnet.  The document drops outbound
udp/9 on N: a datagram out of N is refused and counted once on N's rule, one out of each
similar interface passes and counts nothing."""

from __future__ import annotations

import errno
import socket

import pytest

from sgagent import netns
from sgagent.compiler import compile_document
from sgagent.ipt.backend import IptBackend
from sgagent.load import parse_data

from .conftest import run_in

VARIANTS = ["legacy", "nft"]
CASES = {"y0+": ["y0", "y0+x"], "+": ["x", "+x"], "!x0": ["x0", "!x0x"]}


def document(name: str) -> dict:
    return {"version": 1,
            "host": {"instance": "i-k", "account": "1",
                     "nics": [{"name": name, "security_groups": ["sg-k"]}]},
            "security_groups": {"sg-k": {"rules": [
                {"id": "probe", "direction": "outbound", "policy": "drop", "protocol": "udp",
                 "ports": 9, "destination": "10.0.0.0/8"}]}}}


def sent(ex: netns.NetnsExecutor, net: str) -> bool:
    """One udp/9 datagram to ``net``.2; False if the firewall refused it (EPERM)."""
    def go() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", (f"{net}.2", 9))
            except PermissionError as exc:
                assert exc.errno == errno.EPERM
                return False
            return True
    return ex.call(go)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(CASES))
def test_a_name_iptables_reads_as_a_pattern_matches_exactly_that_interface(ns, variant, name):
    links = [name, *CASES[name]]
    for i, link in enumerate(links):
        run_in(ns, "ip", "link", "add", link, "type", "veth", "peer", "name", f"sgp{i}")
        for n in (link, f"sgp{i}"):
            run_in(ns, "ip", "link", "set", n, "up")
        run_in(ns, "ip", "addr", "add", f"10.{200 + i}.0.1/24", "dev", link)
    with IptBackend(ns, variant=variant) as be, netns.NetnsExecutor(ns) as ex:
        rs = compile_document(parse_data(document(name)))
        be.apply(rs)
        assert be.diff(rs) == ""  # the live rules and sets read back as they were written
        outcome = {link: sent(ex, f"10.{200 + i}.0") for i, link in enumerate(links)}
        assert outcome == {link: link != name for link in links}
        counted = {r.key.nic: r.packets for r in be.counters() if r.key.rule == "probe"}
        assert counted == {name: 1}
