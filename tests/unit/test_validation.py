"""SEMANTICS sections 1, 2 and 7: what a host document may say, and how a bad one is refused."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest

from sgagent.evaluator import evaluate
from sgagent.load import DocumentError, load_file, parse_bytes, parse_data
from sgagent.model import SERVICES

from ._docs import errors, load, pkt, raw, rule


def one_group(*rules, **group):
    return raw({"sg-web": {"rules": list(rules), **group}})


def classic(*rules, **group):
    return raw({"sg-web": {"rules": list(rules), **group}}, network="classic",
               nics=[{"name": "eth0", "role": "intranet", "security_groups": ["sg-web"]},
                     {"name": "eth1", "role": "internet", "security_groups": ["sg-web"]}])


def has(errs: list[str], path: str, *words: str) -> bool:
    """Is there an error at exactly ``path`` whose description contains every word?"""
    for e in errs:
        where, _, what = e.partition(": ")
        if where == path and all(w.lower() in what.lower() for w in words):
            return True
    return False


def assert_error(data, path: str, *words: str) -> list[str]:
    errs = errors(data)
    assert has(errs, path, *words), f"no error at {path} mentioning {words}: {errs}"
    return errs


# --------------------------------------------------------------------------- section 7


def test_spec_example_message_verbatim():
    data = one_group(rule(), rule(), rule(), rule(ports=70000))
    assert errors(data) == ["security_groups.sg-web.rules[3].ports: 70000 is not a port (1..65535)"]


@pytest.mark.parametrize("where,path", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["host"].update(colour="red"), "host.colour"),
    (lambda d: d["host"]["nics"][0].update(mtu=1500), "host.nics[0].mtu"),
    (lambda d: d["security_groups"]["sg-web"].update(vpc="v-1"), "security_groups.sg-web.vpc"),
    (lambda d: d["security_groups"]["sg-web"]["rules"][0].update(prio=3),
     "security_groups.sg-web.rules[0].prio"),
])
def test_unknown_fields(where, path):
    data = one_group(rule())
    where(data)
    assert_error(data, path, "unknown field")


def test_unknown_field_in_group_peer_and_failsafe():
    data = one_group(rule(source={"group": "sg-web", "acount": "1001"}))
    assert_error(data, "security_groups.sg-web.rules[0].source.acount", "unknown field")
    data = one_group(rule())
    data["host"]["failsafe"] = [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                                 "source": "10.0.0.0/8", "policy": "accept"}]
    assert_error(data, "host.failsafe[0].policy", "unknown field")


@pytest.mark.parametrize("field,value,path,words", [
    ("direction", "sideways", "direction", ["sideways", "direction"]),
    ("policy", "maybe", "policy", ["maybe", "policy"]),
    ("protocol", "sctp", "protocol", ["sctp", "protocol"]),
    ("service", "gopher", "service", ["gopher", "service"]),
    ("nic", "wifi", "nic", ["intranet", "internet"]),
])
def test_unknown_enum_values_in_rules(field, value, path, words):
    r = rule(**{field: value})
    if field == "service":
        r.pop("protocol")
    assert_error(one_group(r), f"security_groups.sg-web.rules[0].{path}", *words)


@pytest.mark.parametrize("mutate,path,word", [
    (lambda d: d["host"].update(network="wan"), "host.network", "vpc"),
    (lambda d: d["host"].update(ordering="random"), "host.ordering", "priority"),
    (lambda d: d["host"]["nics"][0].update(role="dmz"), "host.nics[0].role", "vpc"),
    (lambda d: d["security_groups"]["sg-web"].update(type="premium"),
     "security_groups.sg-web.type", "basic"),
    (lambda d: d["security_groups"]["sg-web"].update(inner_access="maybe"),
     "security_groups.sg-web.inner_access", "maybe"),
    (lambda d: d["host"].update(defaults={"inbound": "reject"}), "host.defaults.inbound", "accept"),
    (lambda d: d.update(version=2), "version", "1"),
])
def test_unknown_enum_values_elsewhere(mutate, path, word):
    data = one_group(rule())
    mutate(data)
    assert_error(data, path, word)


@pytest.mark.parametrize("cidr,word", [
    ("10.0.0.0/33", "not a CIDR"),
    ("10.0.0.256", "not a CIDR"),
    ("banana", "not a CIDR"),
    ("2001:db8::/129", "not a CIDR"),
    ("", "not a CIDR"),
    ("10.0.0.1/24", "host bits"),
    ("2001:db8::1/64", "host bits"),
])
def test_malformed_cidrs(cidr, word):
    assert_error(one_group(rule(source=cidr)), "security_groups.sg-web.rules[0].source", word)


def test_host_bits_error_suggests_the_network():
    errs = assert_error(one_group(rule(source="192.168.1.7/24")),
                        "security_groups.sg-web.rules[0].source", "host bits")
    assert "192.168.1.0/24" in errs[0]


def test_malformed_cidrs_in_a_list_are_indexed():
    errs = errors(one_group(rule(source=["10.0.0.0/8", "10.1.2.3/8", "fish"])))
    assert has(errs, "security_groups.sg-web.rules[0].source[1]", "host bits")
    assert has(errs, "security_groups.sg-web.rules[0].source[2]", "fish", "not a CIDR")
    assert len(errs) == 2
    errs = errors(one_group(rule(source=["10.0.0.0/8", {"group": "sg-web", "acount": 1}])))
    assert errs == ["security_groups.sg-web.rules[0].source[1].acount: unknown field"]


def test_malformed_members_are_indexed():
    errs = errors(one_group(rule(), members=["10.0.0.5", "10.0.0.300", 7, "10.0.0.0/24"]))
    assert has(errs, "security_groups.sg-web.members[1]", "10.0.0.300", "not an address")
    assert has(errs, "security_groups.sg-web.members[2]", "7", "not an address")
    assert has(errs, "security_groups.sg-web.members[3]", "10.0.0.0/24", "not an address")
    assert len(errs) == 3
    assert_error(one_group(rule(), members="10.0.0.5"), "security_groups.sg-web.members", "list")


def test_members_accept_host_prefixes():
    doc = load(one_group(rule(), members=["10.0.0.5/32", "2001:db8::5/128"]))
    assert [str(m) for m in doc.security_groups["sg-web"].members] == ["10.0.0.5", "2001:db8::5"]


def test_cross_field_errors_are_reported_with_the_other_field_errors():
    # ports on icmp and a wrong-direction peer are found even when other fields are also wrong
    errs = errors(one_group(rule(protocol="icmp", ports=22, priority=0,
                                 destination="10.0.0.0/8")))
    assert has(errs, "security_groups.sg-web.rules[0].ports", "icmp", "no ports")
    assert has(errs, "security_groups.sg-web.rules[0].priority", "0")
    assert has(errs, "security_groups.sg-web.rules[0].destination", "outbound")
    errs = errors(raw({"sg-e": {"type": "enterprise", "inner_access": "drop",
                                "rules": [rule(ports=0)]}}))
    assert has(errs, "security_groups.sg-e.inner_access", "basic")
    assert has(errs, "security_groups.sg-e.rules[0].ports", "not a port")


@pytest.mark.parametrize("ports,words", [
    (0, ["0", "not a port"]),
    ("0", ["0", "not a port"]),
    (65536, ["65536", "not a port"]),
    ("65536/65536", ["65536", "not a port"]),
    ("1-65536", ["65536", "not a port"]),
    ("443-80", ["443", "above", "80"]),
    ("200/1", ["200", "above"]),
    ("30 to 20", ["above"]),
    ("http", ["not a port"]),
    ("22,x", ["not a port"]),
    ("-1/5", ["not a port range"]),
    ("-5", ["not a port"]),
    ("", ["empty"]),
    (True, ["not a port"]),
    ([], ["not a port"]),
    ({"from": 1}, ["not a port"]),
    ("22;23", ["not a port"]),
])
def test_bad_ports_refused_with_path(ports, words):
    assert_error(one_group(rule(), rule(ports=ports)), "security_groups.sg-web.rules[1].ports",
                 *words)


@pytest.mark.parametrize("priority", [0, 101, -1, "abc", 1.5, True, [1]])
def test_priority_outside_range(priority):
    assert_error(one_group(rule(priority=priority)), "security_groups.sg-web.rules[0].priority",
                 "priority")


@pytest.mark.parametrize("priority", [1, 100, "50"])
def test_priority_inside_range(priority):
    doc = load(one_group(rule(priority=priority)))
    assert doc.security_groups["sg-web"].rules[0].priority == int(priority)


@pytest.mark.parametrize("extra", [{"protocol": "tcp"}, {"ports": 22},
                                   {"protocol": "tcp", "ports": 22}])
def test_service_with_protocol_or_ports(extra):
    r = {"direction": "inbound", "service": "ssh", "source": "0.0.0.0/0", **extra}
    assert_error(one_group(r), "security_groups.sg-web.rules[0].service", "service", "excludes")


def test_rule_needs_protocol_or_service():
    r = {"direction": "inbound", "source": "0.0.0.0/0"}
    assert_error(one_group(r), "security_groups.sg-web.rules[0].protocol", "protocol or a service")


@pytest.mark.parametrize("protocol,source", [("icmp", "0.0.0.0/0"), ("icmpv6", "::/0"),
                                             ("gre", "0.0.0.0/0"), ("all", "0.0.0.0/0")])
def test_ports_on_portless_protocols(protocol, source):
    assert_error(one_group(rule(protocol=protocol, source=source, ports="22")),
                 "security_groups.sg-web.rules[0].ports", protocol, "no ports")


@pytest.mark.parametrize("protocol", ["icmp", "gre", "all", "ALL", "-1"])
def test_all_ports_spelling_is_fine_on_portless_protocols(protocol):
    doc = load(one_group(rule(protocol=protocol, ports="-1/-1")))
    assert doc.security_groups["sg-web"].rules[0].ports is None


def test_source_on_outbound_and_destination_on_inbound():
    r_out = {"direction": "outbound", "protocol": "tcp", "source": "10.0.0.0/8",
             "destination": "0.0.0.0/0"}
    r_in = {"direction": "inbound", "protocol": "tcp", "source": "10.0.0.0/8",
            "destination": "0.0.0.0/0"}
    errs = errors(one_group(r_out, r_in))
    assert has(errs, "security_groups.sg-web.rules[0].source", "outbound")
    assert has(errs, "security_groups.sg-web.rules[1].destination", "inbound")


def test_outbound_rule_with_only_a_source():
    r = {"direction": "outbound", "protocol": "tcp", "source": "10.0.0.0/8"}
    assert_error(one_group(r), "security_groups.sg-web.rules[0].source", "outbound")


@pytest.mark.parametrize("direction,missing", [("inbound", "source"), ("outbound", "destination")])
def test_rule_without_a_peer(direction, missing):
    r = {"direction": direction, "protocol": "tcp"}
    assert_error(one_group(r), f"security_groups.sg-web.rules[0].{missing}", "peer", missing)


def test_empty_peer_list_refused():
    assert_error(one_group(rule(source=[])), "security_groups.sg-web.rules[0].source", "empty")


def test_duplicate_rule_ids_in_one_group():
    data = one_group(rule(id="web"), rule(id="ssh"), rule(id="web"))
    assert_error(data, "security_groups.sg-web.rules[2].id", "web", "rules[0]")


def test_explicit_id_colliding_with_a_default_id():
    data = one_group(rule(), rule(id="sg-web/0"))
    assert_error(data, "security_groups.sg-web.rules[1].id", "sg-web/0")


def test_same_id_in_two_groups_is_fine():
    data = raw({"a": {"rules": [rule(id="web")]}, "b": {"rules": [rule(id="web")]}})
    load(data)


def test_bad_rule_id_and_group_name():
    assert_error(one_group(rule(id="has space")), "security_groups.sg-web.rules[0].id", "rule id")
    data = raw({"sg web": {"rules": []}}, nics=[{"name": "eth0"}])
    assert_error(data, "security_groups", "sg web", "group name")


def test_group_reference_to_an_undefined_group():
    data = one_group(rule(source={"group": "sg-ghost"}))
    assert_error(data, "security_groups.sg-web.rules[0].source.group", "sg-ghost", "not defined")


def test_group_reference_in_a_peer_list_is_indexed():
    data = one_group(rule(source=["10.0.0.0/8", {"group": "sg-ghost"}]))
    assert_error(data, "security_groups.sg-web.rules[0].source[1].group", "sg-ghost")


def test_group_reference_with_another_account():
    data = raw({"sg-web": {"rules": [rule(source={"group": "sg-db", "account": "2002"})]},
                "sg-db": {"account": "1001"}})
    assert_error(data, "security_groups.sg-web.rules[0].source.account", "1001", "2002")
    data = raw({"sg-web": {"rules": [rule(source={"group": "sg-db"})]},
                "sg-db": {"account": "2002"}})
    assert_error(data, "security_groups.sg-web.rules[0].source.account", "2002", "1001")


def test_group_reference_with_the_right_account():
    data = raw({"sg-web": {"rules": [rule(source={"group": "sg-db", "account": 2002})]},
                "sg-db": {"account": 2002}})
    load(data)


def test_numeric_accounts_accepted_as_strings():
    data = raw({"sg-web": {"account": 1001, "rules": [rule(source={"group": "sg-web",
                                                                       "account": 1001})]}})
    data["host"]["account"] = 1001
    doc = load(data)
    assert doc.host.account == "1001"
    assert doc.security_groups["sg-web"].account == "1001"
    assert doc.security_groups["sg-web"].rules[0].source[0].account == "1001"


def test_classic_rule_without_nic():
    assert_error(classic(rule(nic="internet"), rule()), "security_groups.sg-web.rules[1].nic",
                 "classic")


def test_classic_intranet_inbound_needs_a_single_ipv4_address():
    data = classic(rule(nic="intranet", source="10.0.0.0/24"),
                   rule(nic="intranet", source="10.0.0.7"),
                   rule(nic="intranet", source="10.0.0.8/32"),
                   rule(nic="internet", source="0.0.0.0/0"),
                   rule(direction="outbound", nic="intranet", destination="10.0.0.0/8"))
    errs = errors(data)
    assert errs == [e for e in errs if e.startswith("security_groups.sg-web.rules[0].source:")]
    assert has(errs, "security_groups.sg-web.rules[0].source", "/32")


def test_classic_ipv6_anywhere():
    data = classic(rule(nic="internet", source="2001:db8::/32"),
                   rule(direction="outbound", nic="internet", destination="::/0"),
                   members=["10.0.0.5", "2001:db8::5"])
    data["host"]["failsafe"] = [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                                 "source": "2001:db8::1"}]
    errs = errors(data)
    assert has(errs, "security_groups.sg-web.rules[0].source", "IPv6")
    assert has(errs, "security_groups.sg-web.rules[1].destination", "IPv6")
    assert has(errs, "security_groups.sg-web.members[1]", "IPv6")
    assert has(errs, "host.failsafe[0]", "IPv6")


def test_group_reference_on_an_enterprise_group():
    data = raw({"sg-e": {"type": "enterprise", "rules": [rule(source={"group": "sg-e"})]}})
    assert_error(data, "security_groups.sg-e.rules[0].source", "enterprise")


def test_group_reference_on_a_classic_internet_rule():
    data = classic(rule(nic="internet", source={"group": "sg-web"}),
                   rule(nic="intranet", source={"group": "sg-web"}))
    errs = errors(data)
    assert has(errs, "security_groups.sg-web.rules[0].source", "internet")
    assert not any("rules[1]" in e for e in errs)


def test_vpc_rule_for_the_internet_nic():
    assert_error(one_group(rule(nic="internet")), "security_groups.sg-web.rules[0].nic", "vpc")


def test_vpc_rule_for_the_intranet_nic_is_accepted():
    load(one_group(rule(nic="intranet")))


def test_mixed_group_types_on_one_nic():
    data = raw({"a": {"type": "basic"}, "b": {"type": "enterprise"}})
    assert_error(data, "host.nics[0].security_groups", "mixed", "basic", "enterprise")


def test_mixed_types_on_different_nics_is_fine():
    data = raw({"a": {"type": "basic"}, "b": {"type": "enterprise"}},
               nics=[{"name": "eth0", "security_groups": ["a"]},
                     {"name": "eth1", "security_groups": ["b"]}])
    load(data)


def test_nic_bound_to_an_undefined_group():
    data = raw({"a": {}}, nics=[{"name": "eth0", "security_groups": ["a", "ghost"]}])
    assert_error(data, "host.nics[0].security_groups[1]", "ghost", "not defined")


def test_enterprise_group_with_inner_access():
    data = raw({"sg-e": {"type": "enterprise", "inner_access": "accept"}})
    assert_error(data, "security_groups.sg-e.inner_access", "basic")


@pytest.mark.parametrize("mutate,path,words", [
    (lambda d: d["host"]["nics"].append({"name": "eth0"}), "host.nics[1].name", ["twice"]),
    (lambda d: d["host"]["nics"][0]["security_groups"].append("sg-web"),
     "host.nics[0].security_groups[1]", ["twice"]),
    (lambda d: d["host"]["nics"][0].update(role="internet"), "host.nics[0].role", ["vpc"]),
    (lambda d: d["host"].update(nics=[]), "host.nics", []),
    (lambda d: d["host"]["nics"][0].update(name="a very long interface"), "host.nics[0].name",
     ["interface name"]),
    (lambda d: d["host"].pop("instance"), "host.instance", ["required"]),
    (lambda d: d.pop("version"), "version", ["required"]),
])
def test_other_host_errors(mutate, path, words):
    data = one_group(rule())
    mutate(data)
    assert_error(data, path, *words)


def test_classic_nic_shape():
    data = classic(rule(nic="internet"))
    data["host"]["nics"][1]["security_groups"] = []
    assert_error(data, "host.nics", "same groups")
    data = classic(rule(nic="internet"))
    data["host"]["nics"][1]["role"] = "intranet"
    assert_error(data, "host.nics", "at most one intranet")
    data = classic(rule(nic="internet"))
    data["host"]["nics"][1]["role"] = "vpc"
    assert_error(data, "host.nics[1].role", "classic")


def test_failsafe_peer_must_be_addresses():
    data = one_group(rule())
    data["host"]["failsafe"] = [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                                 "source": {"group": "sg-web"}}]
    assert_error(data, "host.failsafe[0]", "not groups")


def test_several_errors_are_all_listed_model_stage():
    data = raw({
        "sg-web": {"rules": [rule(ports=70000), rule(protocol="icmp", ports=22),
                             rule(priority=0), rule(direction="sideways")]},
        "sg-db": {"type": "enterprise", "inner_access": "accept",
                  "rules": [rule(source="10.0.0.1/8")]},
    })
    errs = errors(data)
    expected = [("security_groups.sg-web.rules[0].ports", "70000"),
                ("security_groups.sg-web.rules[1].ports", "icmp"),
                ("security_groups.sg-web.rules[2].priority", "0"),
                ("security_groups.sg-web.rules[3].direction", "sideways"),
                ("security_groups.sg-db.inner_access", "basic"),
                ("security_groups.sg-db.rules[0].source", "host bits")]
    for path, word in expected:
        assert has(errs, path, word), (path, errs)
    assert len(errs) == len(expected)


def test_several_errors_are_all_listed_document_stage():
    data = raw({
        "sg-web": {"rules": [rule(id="a"), rule(id="a"), rule(nic="internet"),
                             rule(source={"group": "sg-ghost"})]},
        "sg-e": {"type": "enterprise", "rules": [rule(source={"group": "sg-web"})]},
    }, nics=[{"name": "eth0", "security_groups": ["sg-web", "sg-e", "sg-none"]}])
    errs = errors(data)
    expected = [("security_groups.sg-web.rules[1].id", "already"),
                ("security_groups.sg-web.rules[2].nic", "internet"),
                ("security_groups.sg-web.rules[3].source.group", "sg-ghost"),
                ("security_groups.sg-e.rules[0].source", "enterprise"),
                ("host.nics[0].security_groups[2]", "sg-none"),
                ("host.nics[0].security_groups", "mixed")]
    for path, word in expected:
        assert has(errs, path, word), (path, errs)
    assert len(errs) == len(expected)


def test_document_error_render_lists_every_error():
    data = one_group(rule(ports=0), rule(ports=70000))
    with pytest.raises(DocumentError) as info:
        parse_data(data, "web.yaml")
    text = info.value.render()
    lines = text.splitlines()
    assert lines[0] == "web.yaml: refused, 2 errors"
    assert lines[1].strip().startswith("security_groups.sg-web.rules[0].ports:")
    assert lines[2].strip().startswith("security_groups.sg-web.rules[1].ports:")


# --------------------------------------------------------------------------- sections 1 and 2


@pytest.mark.parametrize("spelling,canon", [
    ("inbound", "inbound"), ("ingress", "inbound"), ("Ingress", "inbound"), ("INBOUND", "inbound"),
    ("outbound", "outbound"), ("egress", "outbound"), ("EGRESS", "outbound"),
])
def test_direction_aliases(spelling, canon):
    peer = "source" if canon == "inbound" else "destination"
    r = {"direction": spelling, "protocol": "tcp", peer: "0.0.0.0/0"}
    assert load(one_group(r)).security_groups["sg-web"].rules[0].direction == canon


@pytest.mark.parametrize("spelling,canon", [
    ("accept", "accept"), ("allow", "accept"), ("Accept", "accept"), ("ACCEPT", "accept"),
    ("Allow", "accept"), ("drop", "drop"), ("deny", "drop"), ("Drop", "drop"), ("DROP", "drop"),
    ("DENY", "drop"), ("reject", "reject"), ("REJECT", "reject"),
])
def test_policy_aliases(spelling, canon):
    assert load(one_group(rule(policy=spelling))).security_groups["sg-web"].rules[0].policy == canon


def test_policy_defaults_to_accept_and_priority_to_1():
    r = load(one_group(rule())).security_groups["sg-web"].rules[0]
    assert (r.policy, r.priority) == ("accept", 1)


@pytest.mark.parametrize("spelling,canon", [
    ("tcp", "tcp"), ("TCP", "tcp"), ("Udp", "udp"), ("ICMP", "icmp"), ("icmpv6", "icmpv6"),
    ("GRE", "gre"), ("all", "all"), ("ALL", "all"), ("-1", "all"), (-1, "all"), (6, "tcp"),
])
def test_protocol_aliases(spelling, canon):
    source = "::/0" if canon == "icmpv6" else "0.0.0.0/0"
    r = load(one_group(rule(protocol=spelling, source=source))).security_groups["sg-web"].rules[0]
    assert r.protocol == canon


@pytest.mark.parametrize("spelling,ranges", [
    ("22/22", ((22, 22),)),
    ("1/200", ((1, 200),)),
    ("-1/-1", None),
    ("80", ((80, 80),)),
    (80, ((80, 80),)),
    ("80-443", ((80, 443),)),
    ("20 to 21", ((20, 21),)),
    ("20 TO 21", ((20, 21),)),
    ("22,3389", ((22, 22), (3389, 3389))),
    ("22, 3389", ((22, 22), (3389, 3389))),
    ("ALL", None),
    ("all", None),
    ("1/65535", ((1, 65535),)),
    ("65535", ((65535, 65535),)),
    ([22, "80-81"], ((22, 22), (80, 81))),
])
def test_port_spellings(spelling, ranges):
    r = load(one_group(rule(ports=spelling))).security_groups["sg-web"].rules[0]
    assert r.ports == ranges


@pytest.mark.parametrize("spelling,inside,outside", [
    ("22/22", [22], [21, 23]),
    ("1/200", [1, 100, 200], [201]),
    ("-1/-1", [1, 65535], []),
    ("80", [80], [79, 81]),
    ("80-443", [80, 443], [79, 444]),
    ("20 to 21", [20, 21], [19, 22]),
    ("22,3389", [22, 3389], [23, 3388, 3390]),
    ("ALL", [1, 65535], []),
])
def test_port_spellings_match_the_right_ports(spelling, inside, outside):
    doc = load(one_group(rule(ports=spelling)))
    for port in inside:
        assert evaluate(doc, pkt("192.0.2.1", "tcp", port)).verdict == "accept", port
    for port in outside:
        assert evaluate(doc, pkt("192.0.2.1", "tcp", port)).verdict == "drop", port


@pytest.mark.parametrize("text,ranges", [
    ("ports: 22/22", ((22, 22),)), ("ports: 80", ((80, 80),)), ("ports: 80-443", ((80, 443),)),
    ("ports: 20 to 21", ((20, 21),)), ("ports: 22,3389", ((22, 22), (3389, 3389))),
    ("ports: -1/-1", None), ("ports: ALL", None), ("ports: 1/200", ((1, 200),)),
])
def test_port_spellings_as_yaml_text(text, ranges):
    doc = parse_bytes(f"""
version: 1
host:
  instance: i-1
  nics: [{{name: eth0, security_groups: [sg-web]}}]
security_groups:
  sg-web:
    rules:
      - direction: ingress
        protocol: TCP
        {text}
        source: 0.0.0.0/0
""".encode())
    assert doc.security_groups["sg-web"].rules[0].ports == ranges


def test_default_ports_are_all():
    r = load(one_group(rule(protocol="udp"))).security_groups["sg-web"].rules[0]
    assert r.ports is None and r.effective_ports is None


# Written out from SEMANTICS section 2, independently of the SERVICES table.
SPEC_SERVICES = {
    "ssh": ("tcp", [22]), "linux-login": ("tcp", [22]),
    "rdp": ("tcp", [3389]), "windows-login": ("tcp", [3389]),
    "http": ("tcp", [80]), "https": ("tcp", [443]), "telnet": ("tcp", [23]),
    "ftp": ("tcp", [20, 21]), "dns": ("udp", [53]), "mysql": ("tcp", [3306]),
    "postgresql": ("tcp", [5432]), "redis": ("tcp", [6379]), "mssql": ("tcp", [1433]),
    "oracle": ("tcp", [1521]), "ping": ("ping", []),
}


def test_service_table_is_complete():
    assert set(SERVICES) == set(SPEC_SERVICES)


@pytest.mark.parametrize("service", sorted(SPEC_SERVICES))
def test_service_maps_to_protocol_and_ports(service):
    proto, ports = SPEC_SERVICES[service]
    r = {"direction": "inbound", "service": service.upper(), "source": ["0.0.0.0/0", "::/0"]}
    doc = load(one_group(r))
    rl = doc.security_groups["sg-web"].rules[0]
    assert rl.service == service and rl.effective_protocol == proto
    if proto == "ping":
        assert evaluate(doc, pkt("192.0.2.1", "icmp", icmp_type=8)).verdict == "accept"
        assert evaluate(doc, pkt("2001:db8::1", "icmpv6", icmp_type=128)).verdict == "accept"
        assert evaluate(doc, pkt("192.0.2.1", "icmp", icmp_type=0)).verdict == "drop"
        assert evaluate(doc, pkt("192.0.2.1", "tcp", 80)).verdict == "drop"
        return
    assert rl.effective_ports == ((min(ports), max(ports)),)
    other = "udp" if proto == "tcp" else "tcp"
    for port in ports:
        assert evaluate(doc, pkt("192.0.2.1", proto, port)).verdict == "accept"
        assert evaluate(doc, pkt("2001:db8::1", proto, port)).verdict == "accept"
        assert evaluate(doc, pkt("192.0.2.1", other, port)).verdict == "drop"
    assert evaluate(doc, pkt("192.0.2.1", proto, min(ports) - 1)).verdict == "drop"
    assert evaluate(doc, pkt("192.0.2.1", proto, max(ports) + 1)).verdict == "drop"


def test_peer_forms():
    doc = load(one_group(rule(source="10.0.0.7"), rule(source=["10.1.0.0/16", "2001:db8::/32"]),
                         rule(source={"group": "sg-web"}), rule(source="2001:db8::1")))
    rules = doc.security_groups["sg-web"].rules
    assert rules[0].source == (ipaddress.ip_network("10.0.0.7/32"),)
    assert rules[1].source == (ipaddress.ip_network("10.1.0.0/16"),
                               ipaddress.ip_network("2001:db8::/32"))
    assert rules[2].source[0].group == "sg-web"
    assert rules[3].source == (ipaddress.ip_network("2001:db8::1/128"),)


def test_vpc_nic_intranet_is_accepted_and_defaults():
    doc = load(raw({"a": {"inner_access": "DROP", "rules": [rule(nic="Intranet")]}}))
    assert doc.host.network == "vpc" and doc.host.ordering == "priority"
    assert doc.host.nics[0].role == "vpc"
    assert doc.security_groups["a"].type == "basic"
    assert doc.security_groups["a"].inner_access == "drop"
    assert doc.security_groups["a"].rules[0].nic == "intranet"


def test_json_and_yaml_give_the_same_document():
    import json
    import yaml
    data = one_group(rule(ports="80-443", policy="ALLOW"), rule(direction="egress", protocol="ALL"))
    a = parse_bytes(json.dumps(data).encode())
    b = parse_bytes(yaml.safe_dump(data).encode())
    c = parse_bytes(yaml.safe_dump(data, default_flow_style=True).encode())  # a YAML {...}
    assert a == b == c


# --------------------------------------------------------------------------- loading bytes and files


def refused(raw_bytes: bytes) -> list[str]:
    with pytest.raises(DocumentError) as info:
        parse_bytes(raw_bytes, "doc.yaml")
    assert info.value.errors and info.value.source == "doc.yaml"
    return info.value.errors


@pytest.mark.parametrize("text,words", [
    (b"version: 1\nhost: [\n", ["not valid YAML", "line"]),
    (b"a: b: c\n", ["not valid YAML"]),
    (b"\tversion: 1\n", ["not valid YAML"]),
    (b"{\"version\": 1, \"host\": ", ["not valid JSON", "line 1"]),
    (b"{version: 1", ["not valid JSON"]),
    (b"a: 1\n---\nb: 2\n", ["not valid YAML", "another document"]),
    (b"!!python/object/apply:os.system [echo hi]\n", ["tag", "!!python/object", "not accepted"]),
])
def test_unparseable(text, words):
    errs = refused(text)
    assert len(errs) == 1 and all(w in errs[0] for w in words), errs


@pytest.mark.parametrize("text,kind", [
    (b"hello", "str"), (b"42", "int"), (b"- 1\n- 2\n", "list"), (b"[1, 2]", "list"),
    (b"", "empty"), (b"# only a comment\n", "empty"), (b"null", "empty"), (b"true", "bool"),
])
def test_not_a_mapping(text, kind):
    errs = refused(text)
    assert errs == [f"(document): a host document is a mapping, not {kind}"]


def test_wrong_types_named_by_path():
    errs = refused(b"version: 1\nhost:\n  instance: [1]\n  nics: {a: 1}\nsecurity_groups: [1]\n")
    assert has(errs, "host.instance", "string")
    assert has(errs, "host.nics", "")
    assert has(errs, "security_groups", "a mapping of group names to groups, not a list")
    errs = refused(b"version: 1\nhost: 3\n")
    assert has(errs, "host", "")
    errs = refused(b"version: 1\nhost: {instance: i, nics: [{name: eth0, security_groups: sg}]}\n"
                   b"security_groups: {sg: {rules: {direction: in}}}\n")
    assert has(errs, "host.nics[0].security_groups", "")
    assert has(errs, "security_groups.sg.rules", "")


def test_invalid_utf8():
    head = b"version: 1\nhost: "
    errs = refused(head + b"\xff\xfe\n")
    assert errs == [f"(document): not UTF-8 text (byte {len(head)})"]


def test_deep_nesting_does_not_crash():
    # libyaml's composer recursed without limit: this used to kill the interpreter (SIGSEGV).
    for text in (b"[" * 100_000, b"- " * 100_000, b"a: [" * 50_000, b"{" * 100_000,
                 b'{"a": ' * 100_000):
        errs = refused(text)
        assert "nested" in errs[0] or "not valid" in errs[0], errs


def test_moderate_nesting_is_reported_normally():
    errs = refused(b"version: 1\nhost: " + b"[" * 50 + b"]" * 50 + b"\n")
    assert has(errs, "host", "")


def _timed_refusal(raw_bytes: bytes) -> list[str]:
    start = time.monotonic()
    errs = refused(raw_bytes)
    assert time.monotonic() - start < 3, "took too long"
    return errs


def test_ten_megabytes_of_random_bytes():
    errs = _timed_refusal(random.Random(1).randbytes(10 * 1024 * 1024))
    assert errs[0].startswith("(document): not UTF-8")


def _garbage(seed: int, alphabet: bytes, n: int = 10 * 1024 * 1024) -> bytes:
    """n random bytes drawn from alphabet (fast: one translate over random bytes)."""
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return random.Random(seed).randbytes(n).translate(table)


def test_ten_megabytes_of_utf8_garbage_text():
    text = _garbage(2, b"abcxyz019 :-[]{}\n\t'\"#&*!|>%@`,?")
    errs = _timed_refusal(text)
    assert len(errs) == 1 and errs[0].startswith("(document): not valid YAML")


def test_ten_megabytes_of_multibyte_utf8_garbage():
    # every byte 0..255 as a code point: valid UTF-8, half of it two-byte sequences
    text = random.Random(3).randbytes(7 * 1024 * 1024).decode("latin-1").encode("utf-8")
    assert len(text) > 10 * 1024 * 1024
    errs = _timed_refusal(text)
    assert len(errs) == 1 and errs[0].startswith("(document): not valid YAML")


def test_ten_megabytes_of_plain_words():
    text = _garbage(4, b"abcdefgh ")
    assert _timed_refusal(text) == ["(document): a host document is a mapping, not str"]


def test_ten_megabytes_of_brackets():
    text = _garbage(5, b"[]{},: a")
    errs = _timed_refusal(text)
    assert len(errs) == 1 and errs[0].startswith("(document): ")


def test_over_the_size_limit(monkeypatch):
    import sgagent.load as load_mod
    monkeypatch.setattr(load_mod, "MAX_BYTES", 100)
    errs = refused(b"#" * 101)
    assert "limit" in errs[0]


def test_load_file_missing(tmp_path):
    with pytest.raises(DocumentError) as info:
        load_file(tmp_path / "nope.yaml")
    assert info.value.errors == ["no such file"]
    assert info.value.render() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_load_file_directory(tmp_path):
    with pytest.raises(DocumentError) as info:
        load_file(tmp_path)
    assert "directory" in info.value.errors[0]
    assert "\n" not in info.value.render()


def test_load_file_unreadable(tmp_path, monkeypatch):
    # (as root, chmod 0 does not stop a read: make open() fail the way it does for a user)
    from pathlib import Path
    p = tmp_path / "secret.yaml"
    p.write_text("version: 1\n")

    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(DocumentError) as info:
        load_file(p)
    assert info.value.errors == ["permission denied"]
    assert info.value.render() == f"{p}: permission denied"


def test_load_file_reports_its_name(tmp_path):
    p = tmp_path / "web.yaml"
    p.write_bytes(b"version: 1\nhost: \xff\n")
    with pytest.raises(DocumentError) as info:
        load_file(p)
    assert info.value.source == str(p)
    assert info.value.render().startswith(f"{p}: refused, 1 error")


def test_load_file_valid(tmp_path):
    p = tmp_path / "web.json"
    import json
    p.write_text(json.dumps(one_group(rule(service="ssh", protocol=None))))
    doc = load_file(p)
    assert doc.security_groups["sg-web"].rules[0].effective_ports == ((22, 22),)


def test_field_and_whole_document_errors_are_listed_in_one_round():
    """SEMANTICS section 7: every error at once, also when field errors and cross-document
    errors (an undefined group, a duplicate id) come together."""
    from sgagent.load import DocumentError, parse_data
    doc = {
        "version": 1,
        "host": {"instance": "i", "account": "1", "nics": [
            {"name": "eth0", "security_groups": ["sg-a", "sg-missing"]}]},
        "security_groups": {"sg-a": {"rules": [
            {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 70000,
             "source": "0.0.0.0/0"},
            {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
             "source": {"group": "sg-nope"}},
        ]}},
    }
    with pytest.raises(DocumentError) as info:
        parse_data(doc)
    errors = "\n".join(info.value.errors)
    assert "security_groups.sg-a.rules[0].ports: 70000 is not a port" in errors
    assert "host.nics[0].security_groups[1]: group 'sg-missing' is not defined" in errors
    assert "security_groups.sg-a.rules[1].id: 'web' is already the id of rules[0]" in errors
    assert "security_groups.sg-a.rules[1].source.group: group 'sg-nope' is not defined" in errors
