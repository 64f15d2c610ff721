"""SEMANTICS section 3 (and the always-allowed traffic of section 5), case by case, on the oracle."""

from __future__ import annotations

import pytest

from sgagent.evaluator import Verdict, evaluate

from ._docs import load, pkt, raw, rule

WEB = "192.0.2.10"


def verdict(doc, *args, **kw) -> Verdict:
    return evaluate(doc, pkt(*args, **kw))


def decided(doc, *args, **kw) -> tuple:
    v = verdict(doc, *args, **kw)
    return v.verdict, v.group, v.rule


# --------------------------------------------------------------------------- priority ordering


def test_lower_priority_number_wins():
    doc = load(raw({"a": {"rules": [rule(id="d", policy="drop", priority=2),
                                    rule(id="a", policy="accept", priority=1)]}}))
    assert decided(doc, WEB) == ("accept", "a", "a")
    doc = load(raw({"a": {"rules": [rule(id="a", policy="accept", priority=2),
                                    rule(id="d", policy="drop", priority=1)]}}))
    assert decided(doc, WEB) == ("drop", "a", "d")


def test_lower_priority_number_wins_across_groups():
    doc = load(raw({"a": {"rules": [rule(id="a-accept", priority=5)]},
                    "b": {"rules": [rule(id="b-reject", policy="reject", priority=3)]}}))
    assert decided(doc, WEB) == ("reject", "b", "b-reject")


@pytest.mark.parametrize("refuse", ["drop", "reject"])
def test_equal_priority_refusal_beats_accept(refuse):
    # the accept comes first both in the list and in binding order; the refusal still wins
    doc = load(raw({"a": {"rules": [rule(id="acc", priority=7), rule(id="ref", policy=refuse,
                                                                     priority=7)]}}))
    assert decided(doc, WEB) == (refuse, "a", "ref")
    doc = load(raw({"a": {"rules": [rule(id="acc", priority=7)]},
                    "b": {"rules": [rule(id="ref", policy=refuse, priority=7)]}}))
    assert decided(doc, WEB) == (refuse, "b", "ref")


def test_equal_priority_and_policy_first_group_in_binding_order_decides():
    groups = {"a": {"rules": [rule(id="in-a", priority=3)]},
              "b": {"rules": [rule(id="in-b", priority=3)]}}
    doc = load(raw(groups, nics=[{"name": "eth0", "security_groups": ["b", "a"]}]))
    assert decided(doc, WEB) == ("accept", "b", "in-b")
    doc = load(raw(groups, nics=[{"name": "eth0", "security_groups": ["a", "b"]}]))
    assert decided(doc, WEB) == ("accept", "a", "in-a")


def test_equal_priority_and_policy_first_rule_in_the_list_decides():
    doc = load(raw({"a": {"rules": [rule(protocol="udp"), rule(ports="1-100"),
                                    rule(ports=80)]}}))
    assert decided(doc, WEB, "tcp", 80) == ("accept", "a", "a/1")
    doc = load(raw({"a": {"rules": [rule(policy="drop", ports=80), rule(policy="drop")]}}))
    assert decided(doc, WEB, "tcp", 80) == ("drop", "a", "a/0")


def test_non_matching_rules_take_no_part():
    doc = load(raw({"a": {"rules": [rule(id="other-port", policy="drop", ports=22),
                                    rule(id="other-peer", policy="drop", source="10.0.0.0/8"),
                                    rule(id="other-proto", policy="drop", protocol="udp"),
                                    rule(id="web", ports=80, priority=100)]}}))
    assert decided(doc, WEB, "tcp", 80) == ("accept", "a", "web")
    assert decided(doc, WEB, "tcp", 22) == ("drop", "a", "other-port")


def test_other_direction_takes_no_part():
    doc = load(raw({"a": {"rules": [rule(direction="outbound", policy="drop"),
                                    rule(id="in", priority=50)]}}))
    assert decided(doc, WEB) == ("accept", "a", "in")
    assert decided(doc, WEB, direction="outbound") == ("drop", "a", "a/0")


def test_groups_of_another_nic_take_no_part():
    doc = load(raw({"a": {"rules": [rule(id="a-drop", policy="drop")]},
                    "b": {"rules": [rule(id="b-accept")]}},
                   nics=[{"name": "eth0", "security_groups": ["a"]},
                         {"name": "eth1", "security_groups": ["b"]}]))
    assert decided(doc, WEB, nic="eth0") == ("drop", "a", "a-drop")
    assert decided(doc, WEB, nic="eth1") == ("accept", "b", "b-accept")


# --------------------------------------------------------------------------- sequential ordering


def test_sequential_binding_order_decides_priority_ignored():
    groups = {"a": {"rules": [rule(id="a-accept", priority=100)]},
              "b": {"rules": [rule(id="b-drop", policy="drop", priority=1)]}}
    doc = load(raw(groups, ordering="sequential"))
    assert decided(doc, WEB) == ("accept", "a", "a-accept")
    doc = load(raw(groups, ordering="sequential",
                   nics=[{"name": "eth0", "security_groups": ["b", "a"]}]))
    assert decided(doc, WEB) == ("drop", "b", "b-drop")


def test_sequential_list_order_decides():
    doc = load(raw({"a": {"rules": [rule(id="first", priority=90),
                                    rule(id="second", policy="drop", priority=1)]}},
                   ordering="sequential"))
    assert decided(doc, WEB) == ("accept", "a", "first")
    doc = load(raw({"a": {"rules": [rule(id="first", ports=22),
                                    rule(id="second", policy="reject", priority=1)]}},
                   ordering="sequential"))
    assert decided(doc, WEB, "tcp", 80) == ("reject", "a", "second")


def test_same_document_differs_by_ordering():
    groups = {"a": {"rules": [rule(id="acc", priority=2), rule(id="dro", policy="drop",
                                                               priority=1)]}}
    assert decided(load(raw(groups)), WEB) == ("drop", "a", "dro")
    assert decided(load(raw(groups, ordering="sequential")), WEB) == ("accept", "a", "acc")


# --------------------------------------------------------------------------- which NIC


def classic_doc(*rules, **group):
    return load(raw({"sg": {"rules": list(rules), **group}}, network="classic",
                    nics=[{"name": "eth0", "role": "intranet", "security_groups": ["sg"]},
                          {"name": "eth1", "role": "internet", "security_groups": ["sg"]}]))


def test_classic_rule_applies_only_on_its_nic():
    doc = classic_doc(rule(id="pub", nic="internet", ports=80),
                      rule(id="priv", nic="intranet", ports=22, source="10.0.0.7"))
    assert decided(doc, WEB, "tcp", 80, nic="eth1") == ("accept", "sg", "pub")
    assert decided(doc, WEB, "tcp", 80, nic="eth0") == ("drop", None, "default")
    assert decided(doc, "10.0.0.7", "tcp", 22, nic="eth0") == ("accept", "sg", "priv")
    assert decided(doc, "10.0.0.7", "tcp", 22, nic="eth1") == ("drop", None, "default")


def test_classic_outbound_rule_applies_only_on_its_nic():
    doc = classic_doc(rule(id="no-out", direction="outbound", nic="internet", policy="drop"))
    assert decided(doc, WEB, nic="eth1", direction="outbound") == ("drop", "sg", "no-out")
    assert decided(doc, WEB, nic="eth0", direction="outbound") == ("accept", None, "default")


def test_vpc_nic_intranet_means_no_nic():
    doc = load(raw({"a": {"rules": [rule(id="r", nic="intranet", policy="drop", priority=2),
                                    rule(id="s", policy="accept", priority=3)]}}))
    assert decided(doc, WEB) == ("drop", "a", "r")


# --------------------------------------------------------------------------- defaults


def test_basic_defaults():
    doc = load(raw({"a": {"rules": []}}))
    assert verdict(doc, WEB) == Verdict("drop", None, "default", "default")
    assert verdict(doc, WEB, direction="outbound") == Verdict("accept", None, "default", "default")


def test_nic_without_groups_gets_basic_defaults():
    doc = load(raw({}, nics=[{"name": "eth0"}]))
    assert decided(doc, WEB) == ("drop", None, "default")
    assert decided(doc, WEB, direction="outbound") == ("accept", None, "default")


def test_enterprise_defaults():
    doc = load(raw({"e": {"type": "enterprise", "members": ["10.0.0.5"]}}))
    assert verdict(doc, WEB) == Verdict("drop", None, "default", "default")
    assert verdict(doc, WEB, direction="outbound") == Verdict("drop", None, "default", "default")
    # no inner access in an enterprise group
    assert verdict(doc, "10.0.0.5") == Verdict("drop", None, "default", "default")


@pytest.mark.parametrize("gtype,defaults,inbound,outbound", [
    ("basic", {"inbound": "accept"}, "accept", "accept"),
    ("basic", {"outbound": "drop"}, "drop", "drop"),
    ("basic", {"inbound": "accept", "outbound": "drop"}, "accept", "drop"),
    ("enterprise", {"outbound": "accept"}, "drop", "accept"),
    ("enterprise", {"inbound": "accept", "outbound": "accept"}, "accept", "accept"),
])
def test_host_defaults_override(gtype, defaults, inbound, outbound):
    doc = load(raw({"a": {"type": gtype}}, defaults=defaults))
    assert verdict(doc, WEB) == Verdict(inbound, None, "default", "default")
    assert verdict(doc, WEB, direction="outbound") == Verdict(outbound, None, "default", "default")


def test_rules_come_before_host_defaults():
    doc = load(raw({"a": {"rules": [rule(id="no", policy="drop", ports=22)]}},
                   defaults={"inbound": "accept"}))
    assert decided(doc, WEB, "tcp", 22) == ("drop", "a", "no")
    assert decided(doc, WEB, "tcp", 23) == ("accept", None, "default")


INNER = Verdict("accept", None, "default", "inner-access")


def test_inner_access_accepts_members_of_the_nics_groups():
    doc = load(raw({"a": {"members": ["10.0.0.5", "2001:db8::5"]},
                    "b": {"members": ["10.0.0.6"], "inner_access": "accept"}}))
    for peer in ("10.0.0.5", "2001:db8::5", "10.0.0.6"):
        assert verdict(doc, peer, "udp", 53) == INNER
        assert verdict(doc, peer, "icmp" if ":" not in peer else "icmpv6", icmp_type=3) == INNER
    assert verdict(doc, "10.0.0.7").verdict == "drop"


def test_inner_access_only_for_groups_with_inner_access_accept():
    doc = load(raw({"a": {"members": ["10.0.0.5"], "inner_access": "drop"},
                    "b": {"members": ["10.0.0.6"]}}))
    assert verdict(doc, "10.0.0.5") == Verdict("drop", None, "default", "default")
    assert verdict(doc, "10.0.0.6") == INNER


def test_inner_access_only_for_groups_bound_to_the_nic():
    doc = load(raw({"a": {"members": ["10.0.0.5"]}, "b": {"members": ["10.0.0.6"]}},
                   nics=[{"name": "eth0", "security_groups": ["a"]},
                         {"name": "eth1", "security_groups": ["b"]}]))
    assert verdict(doc, "10.0.0.5", nic="eth0") == INNER
    assert verdict(doc, "10.0.0.6", nic="eth0").verdict == "drop"
    assert verdict(doc, "10.0.0.6", nic="eth1") == INNER


def test_inner_access_is_inbound_only():
    doc = load(raw({"a": {"members": ["10.0.0.5"]}}, defaults={"outbound": "drop"}))
    assert verdict(doc, "10.0.0.5", direction="outbound") == \
        Verdict("drop", None, "default", "default")


def test_inner_access_only_over_the_intranet_nic_in_classic():
    doc = classic_doc(members=["10.0.0.5"])
    assert verdict(doc, "10.0.0.5", nic="eth0") == INNER
    assert verdict(doc, "10.0.0.5", nic="eth1") == Verdict("drop", None, "default", "default")


@pytest.mark.parametrize("ordering", ["priority", "sequential"])
def test_inner_access_comes_after_every_rule(ordering):
    doc = load(raw({"a": {"members": ["10.0.0.5"],
                          "rules": [rule(id="low", policy="drop", priority=100, ports=22)]}},
                   ordering=ordering))
    assert decided(doc, "10.0.0.5", "tcp", 22) == ("drop", "a", "low")
    assert verdict(doc, "10.0.0.5", "tcp", 23) == INNER


def test_inner_access_comes_before_host_defaults():
    doc = load(raw({"a": {"members": ["10.0.0.5"]}}, defaults={"inbound": "drop"}))
    assert verdict(doc, "10.0.0.5") == INNER
    assert verdict(doc, "10.0.0.9") == Verdict("drop", None, "default", "default")


# --------------------------------------------------------------------------- matching


def test_ipv4_any_does_not_match_ipv6_and_back():
    doc = load(raw({"a": {"rules": [rule(id="v4", source="0.0.0.0/0")]}}))
    assert decided(doc, "203.0.113.1") == ("accept", "a", "v4")
    assert decided(doc, "2001:db8::1") == ("drop", None, "default")
    assert decided(doc, "::ffff:203.0.113.1") == ("drop", None, "default")
    doc = load(raw({"a": {"rules": [rule(id="v6", source="::/0")]}}))
    assert decided(doc, "2001:db8::1") == ("accept", "a", "v6")
    assert decided(doc, "203.0.113.1") == ("drop", None, "default")


def test_cidr_containment():
    doc = load(raw({"a": {"rules": [rule(source=["10.1.0.0/16", "2001:db8:1::/48"])]}}))
    assert verdict(doc, "10.1.255.255").verdict == "accept"
    assert verdict(doc, "10.2.0.0").verdict == "drop"
    assert verdict(doc, "2001:db8:1:ffff::1").verdict == "accept"
    assert verdict(doc, "2001:db8:2::1").verdict == "drop"


def test_outbound_rules_match_the_destination():
    doc = load(raw({"a": {"rules": [rule(id="no-dns", direction="outbound", protocol="udp",
                                         ports=53, policy="drop", destination="8.8.8.8")]}}))
    assert decided(doc, "8.8.8.8", "udp", 53, direction="outbound") == ("drop", "a", "no-dns")
    assert decided(doc, "8.8.4.4", "udp", 53, direction="outbound") == \
        ("accept", None, "default")


def test_group_peer_matches_the_current_members():
    def doc(members):
        return load(raw({"web": {"rules": [rule(id="from-db", source={"group": "db"})]},
                         "db": {"members": members}},
                        nics=[{"name": "eth0", "security_groups": ["web"]}]))
    d1 = doc(["10.0.0.9", "2001:db8::9"])
    assert decided(d1, "10.0.0.9") == ("accept", "web", "from-db")
    assert decided(d1, "2001:db8::9") == ("accept", "web", "from-db")
    assert decided(d1, "10.0.0.10") == ("drop", None, "default")
    d2 = doc(["10.0.0.10"])
    assert decided(d2, "10.0.0.9") == ("drop", None, "default")
    assert decided(d2, "10.0.0.10") == ("accept", "web", "from-db")
    assert decided(doc([]), "10.0.0.9") == ("drop", None, "default")


def test_group_peer_is_not_inner_access():
    # members of a referenced group that is not bound to the NIC get no inner access
    doc = load(raw({"web": {}, "db": {"members": ["10.0.0.9"]}},
                   nics=[{"name": "eth0", "security_groups": ["web"]}]))
    assert decided(doc, "10.0.0.9") == ("drop", None, "default")


@pytest.mark.parametrize("peer,proto,itype,expected", [
    ("192.0.2.1", "icmp", 8, "accept"),
    ("192.0.2.1", "icmp", 0, "drop"),
    ("192.0.2.1", "icmp", 3, "drop"),
    ("192.0.2.1", "icmp", 13, "drop"),
    ("2001:db8::1", "icmpv6", 128, "accept"),
    ("2001:db8::1", "icmpv6", 129, "drop"),
    ("2001:db8::1", "icmpv6", 1, "drop"),
])
def test_ping_is_echo_request_of_each_family(peer, proto, itype, expected):
    doc = load(raw({"a": {"rules": [{"direction": "inbound", "service": "ping",
                                     "source": ["0.0.0.0/0", "::/0"]}]}}))
    assert verdict(doc, peer, proto, icmp_type=itype).verdict == expected


def test_ping_does_not_match_tcp_or_udp():
    doc = load(raw({"a": {"rules": [{"direction": "inbound", "service": "ping",
                                     "source": "0.0.0.0/0"}]}}))
    assert verdict(doc, WEB, "tcp", 8).verdict == "drop"
    assert verdict(doc, WEB, "udp", 8).verdict == "drop"
    assert verdict(doc, WEB, "gre").verdict == "drop"
    assert verdict(doc, "2001:db8::1", "icmpv6", icmp_type=128).verdict == "drop"  # v4 peer only


@pytest.mark.parametrize("proto,port,itype", [
    ("tcp", 1, None), ("tcp", 65535, None), ("udp", 53, None), ("icmp", None, 8),
    ("icmp", None, 0), ("gre", None, None), ("sctp", None, None), ("esp", None, None),
])
def test_all_matches_everything_of_the_family(proto, port, itype):
    doc = load(raw({"a": {"rules": [rule(id="everything", protocol="all", policy="reject")]}}))
    assert decided(doc, WEB, proto, port, icmp_type=itype) == ("reject", "a", "everything")
    v6proto = "icmpv6" if proto == "icmp" else proto
    assert decided(doc, "2001:db8::1", v6proto, port, icmp_type=itype) == \
        ("drop", None, "default")


@pytest.mark.parametrize("proto,family_peer,itype,match", [
    ("icmp", "192.0.2.1", 3, True),
    ("icmp", "192.0.2.1", 8, True),
    ("icmpv6", "2001:db8::1", 1, True),
    ("gre", "192.0.2.1", None, True),
])
def test_portless_protocols_match_every_type(proto, family_peer, itype, match):
    doc = load(raw({"a": {"rules": [rule(protocol=proto, source=["0.0.0.0/0", "::/0"])]}}))
    assert (verdict(doc, family_peer, proto, icmp_type=itype).verdict == "accept") is match
    # and nothing else
    assert verdict(doc, family_peer, "tcp", 80).verdict == "drop"


def test_tcp_rule_does_not_match_udp_on_the_same_port():
    doc = load(raw({"a": {"rules": [rule(protocol="tcp", ports=53)]}}))
    assert verdict(doc, WEB, "udp", 53).verdict == "drop"
    assert verdict(doc, WEB, "tcp", 53).verdict == "accept"


# --------------------------------------------------------------------------- section 5


def failsafe_doc(**host):
    return load(raw({"e": {"type": "enterprise",
                           "rules": [rule(id="no-ssh", policy="drop", ports=22, priority=1)]}},
                    failsafe=[{"direction": "inbound", "protocol": "tcp", "ports": 22,
                               "source": "10.0.0.0/8"},
                              {"direction": "outbound", "service": "dns",
                               "destination": "10.0.0.2"}],
                    nics=[{"name": "eth0", "security_groups": ["e"]}, {"name": "eth1"}], **host))


def test_failsafe_comes_before_rules():
    doc = failsafe_doc()
    assert verdict(doc, "10.1.2.3", "tcp", 22) == Verdict("accept", None, "failsafe/0", "failsafe")
    assert decided(doc, "192.0.2.1", "tcp", 22) == ("drop", "e", "no-ssh")
    assert decided(doc, "10.1.2.3", "tcp", 23) == ("drop", None, "default")


def test_failsafe_is_per_direction_and_on_every_managed_nic():
    doc = failsafe_doc()
    assert verdict(doc, "10.0.0.2", "udp", 53, direction="outbound") == \
        Verdict("accept", None, "failsafe/1", "failsafe")
    assert verdict(doc, "10.0.0.2", "udp", 53, direction="inbound").verdict == "drop"
    assert verdict(doc, "10.1.2.3", "tcp", 22, nic="eth1") == \
        Verdict("accept", None, "failsafe/0", "failsafe")


@pytest.mark.parametrize("peer,direction,sport,dport", [
    ("192.0.2.1", "inbound", 67, 68), ("10.0.0.1", "outbound", 68, 67),
    ("fe80::1", "inbound", 547, 546), ("ff02::1:2", "outbound", 546, 547),
])
def test_dhcp_client_traffic_is_always_allowed(peer, direction, sport, dport):
    doc = load(raw({"e": {"type": "enterprise",
                          "rules": [rule(policy="drop", protocol="all", direction=direction,
                                         **({"source": ["0.0.0.0/0", "::/0"]}
                                            if direction == "inbound"
                                            else {"destination": ["0.0.0.0/0", "::/0"]}))]}}))
    assert verdict(doc, peer, "udp", dport, direction=direction, sport=sport) == \
        Verdict("accept", None, "allowance", "allowance")
    # the same ports the other way round, or with another source port, are judged as usual
    assert verdict(doc, peer, "udp", sport, direction=direction, sport=dport).verdict == "drop"
    assert verdict(doc, peer, "udp", dport, direction=direction, sport=1234).verdict == "drop"
    assert verdict(doc, peer, "tcp", dport, direction=direction, sport=sport).verdict == "drop"


@pytest.mark.parametrize("itype", [133, 134, 135, 136, 137])
@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_neighbour_and_router_discovery_always_allowed(itype, direction):
    doc = load(raw({"e": {"type": "enterprise"}}))
    assert verdict(doc, "fe80::1", "icmpv6", direction=direction, icmp_type=itype) == \
        Verdict("accept", None, "allowance", "allowance")


@pytest.mark.parametrize("itype", [1, 128, 129])
def test_other_icmpv6_is_judged(itype):
    doc = load(raw({"e": {"type": "enterprise"}}))
    assert verdict(doc, "fe80::1", "icmpv6", icmp_type=itype).verdict == "drop"


def test_icmpv4_with_nd_type_numbers_is_judged():
    doc = load(raw({"e": {"type": "enterprise"}}))
    assert verdict(doc, "192.0.2.1", "icmp", icmp_type=135).verdict == "drop"


def test_allowances_come_before_drop_rules():
    doc = load(raw({"a": {"rules": [rule(policy="drop", protocol="icmpv6", source="::/0"),
                                    rule(policy="drop", protocol="udp")]}}))
    assert verdict(doc, "fe80::1", "icmpv6", icmp_type=135).reason == "allowance"
    assert verdict(doc, "192.0.2.1", "udp", 68, sport=67).reason == "allowance"
