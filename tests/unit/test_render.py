"""The nftables text (nft/render.py): table, base chains, dispatch, state, reject, counters.

What every rendering shares is checked for each of them (``RENDERINGS``); how a decision's
statements look (one nft rule per match, or map lookups) is checked per rendering.
"""

from __future__ import annotations

import re

import pytest

from sgagent.compiler import compile_document
from sgagent.ir import CounterKey
from sgagent.nft import render as render_mod
from sgagent.nft.names import chain_name, counter_name, parse_comment

from ._docs import load, raw, rule

RENDERINGS = tuple(getattr(render_mod, "RENDERINGS", ("linear",)))
BASE = ("input", "forward", "output")
REJECT_CHAIN_BODY = ["meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"]


def render_text(rs, rendering: str = "linear") -> str:
    out = render_mod.render(rs, rendering) if len(RENDERINGS) > 1 else render_mod.render(rs)
    return out.text() if callable(out.text) else out.text


def document(**host):
    return load(raw({
        "web": {"members": ["10.0.0.5", "2001:db8::5"], "rules": [
            rule(id="http", ports=80, source=["0.0.0.0/0", "::/0"]),
            rule(id="no-telnet", policy="reject", ports=23),
            rule(id="no-dns", policy="reject", protocol="udp", ports=53),
            rule(id="no-icmp", policy="reject", protocol="icmp"),
            rule(id="no-bad", policy="reject", protocol="all", source="198.51.100.0/24"),
            {"id": "no-ssh", "direction": "inbound", "service": "ssh", "policy": "reject",
             "source": "::/0"},
            rule(id="from-db", source={"group": "db"}, priority=2),
            rule(id="block", direction="outbound", policy="drop", destination="203.0.113.0/24"),
        ]},
        "db": {"members": ["10.0.1.1"], "rules": [rule(id="db-in", ports=5432)]},
    }, nics=[{"name": "eth0", "security_groups": ["web"]},
             {"name": "eth1", "security_groups": ["db", "web"]}], **host))


def chains_of(text: str) -> dict[str, list[str]]:
    """chain name -> its statements, from the rendered text."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.fullmatch(r"\tchain (\S+) \{", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line == "\t}":
            current = None
        elif current is not None:
            current.append(line.strip())
    return out


def nic_chains(text: str) -> dict[str, list[str]]:
    return {k: v for k, v in chains_of(text).items() if re.match(r"(in|out)_", k)}


def declared_counters(text: str) -> list[tuple[str, str]]:
    return re.findall(r'\tcounter (\S+) \{ comment "((?:[^"\\]|\\.)*)"; \}', text)


def maps_of(text: str) -> dict[str, dict[str, str]]:
    """map name -> {key: value}."""
    out = {}
    for name, body in re.findall(r"\tmap (\S+) \{ (.*) \}$", text, flags=re.M):
        m = re.search(r"elements = \{ (.*) \};", body)
        items = m.group(1).split(", ") if m else []
        out[name] = dict(i.rsplit(" : ", 1) for i in items)
    return out


def key(rule_id, group="web", nic="eth0", direction="inbound", policy="reject"):
    return CounterKey(nic, direction, group, rule_id, policy)


def refs(statement: str, k: CounterKey) -> bool:
    return re.search(rf"\bcounter name {counter_name(k)}\b", statement) is not None


@pytest.fixture(scope="module", params=RENDERINGS)
def rendered(request):
    rs = compile_document(document())
    return rs, render_text(rs, request.param)


@pytest.fixture(scope="module")
def linear():
    rs = compile_document(document())
    return rs, render_text(rs, "linear")


# --------------------------------------------------------------------------- every rendering


def test_one_table_inet_sgagent(rendered):
    _, text = rendered
    lines = text.splitlines()
    assert lines[0] == "table inet sgagent {"
    assert lines[-1] == "}"
    assert text.count("table ") == 1
    assert all(line.startswith("\t") for line in lines[1:-1])


@pytest.mark.parametrize("hook", BASE)
def test_base_chains_policy_accept(rendered, hook):
    _, text = rendered
    body = chains_of(text)[hook]
    assert re.fullmatch(rf"type filter hook {hook} priority \S+; policy accept;", body[0])
    assert sum(1 for s in body if "type filter hook" in s) == 1


def vmap(statement: str) -> tuple[str, dict[str, str]]:
    m = re.fullmatch(r"(iifname|oifname) vmap \{ (.*) \}", statement)
    assert m, statement
    items = dict(re.fullmatch(r'"([^"]+)" : jump (\S+)', i.strip()).groups()
                 for i in m.group(2).split(","))
    return m.group(1), items


def test_dispatch_by_interface(rendered):
    _, text = rendered
    ch = chains_of(text)
    expect_in = {n: chain_name(n, "inbound") for n in ("eth0", "eth1")}
    expect_out = {n: chain_name(n, "outbound") for n in ("eth0", "eth1")}
    assert [vmap(s) for s in ch["input"][1:]] == [("iifname", expect_in)]
    assert [vmap(s) for s in ch["output"][1:]] == [("oifname", expect_out)]
    assert [vmap(s) for s in ch["forward"][1:]] == [("iifname", expect_in),
                                                    ("oifname", expect_out)]
    for target in list(expect_in.values()) + list(expect_out.values()):
        assert target in ch


def test_unmanaged_interfaces_appear_nowhere(rendered):
    _, text = rendered
    assert set(re.findall(r'"([^"]+)" : jump', text)) == {"eth0", "eth1"}
    assert '"lo"' not in text and "eth2" not in text
    for name, body in chains_of(text).items():  # interfaces only in the base chains' dispatch
        if name not in BASE:
            assert not any("ifname" in s for s in body), name


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_nic_with_an_unusual_name(rendering):
    doc = load(raw({"a": {"rules": [rule()]}}, nics=[{"name": "eth@0", "security_groups": ["a"]}]))
    text = render_text(compile_document(doc), rendering)
    name = chain_name("eth@0", "inbound")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", name)
    assert f'"eth@0" : jump {name}' in text
    assert name in chains_of(text)


def test_stateful_preamble_before_any_rule(rendered):
    _, text = rendered
    chains = nic_chains(text)
    assert len(chains) == 4
    for name, body in chains.items():
        assert body[0] == "ct state established,related return", name
        invalid = body.index("ct state invalid drop")
        first_counted = min(i for i, s in enumerate(body) if "counter" in s)
        assert invalid < first_counted, name
        # the last statement is the counted default verdict
        assert re.fullmatch(r"counter name c_\w+ (return|drop)", body[-1]), body[-1]


def test_dhcp_and_neighbour_discovery_in_the_preamble(rendered):
    _, text = rendered
    chains = chains_of(text)
    inbound = chains[chain_name("eth0", "inbound")]
    outbound = chains[chain_name("eth0", "outbound")]
    pre_in = inbound[:inbound.index("ct state invalid drop")]
    pre_out = outbound[:outbound.index("ct state invalid drop")]
    assert any(re.search(r"udp sport 67 udp dport 68 return$", s) for s in pre_in)
    assert any(re.search(r"udp sport 547 udp dport 546 return$", s) for s in pre_in)
    assert any(re.search(r"udp sport 68 udp dport 67 return$", s) for s in pre_out)
    assert any(re.search(r"udp sport 546 udp dport 547 return$", s) for s in pre_out)
    nd = [s for s in pre_in if s.startswith("icmpv6 type")]
    assert len(nd) == 1 and nd[0].endswith(" return")
    for t in ("133", "134", "135", "136", "137"):
        assert re.search(rf"\b{t}\b", nd[0])


def test_one_named_counter_per_key_with_a_decodable_comment(rendered):
    rs, text = rendered
    keys = [k for c in rs.chains for k in c.counters]
    declared = declared_counters(text)
    names = [n for n, _ in declared]
    assert len(names) == len(set(names)) == len(keys) == len(set(keys))
    by_name = dict(declared)
    for k in keys:
        assert parse_comment(by_name[counter_name(k)]) == k
    # every counter referred to (by a rule or as a map value) is declared, and used
    used = set(re.findall(r"\bc_[0-9a-f]{20}\b", text))
    assert used == set(names)


def test_every_set_and_map_referred_to_is_declared(rendered):
    _, text = rendered
    declared = set(re.findall(r"\t(?:set|map) (\S+) \{", text))
    used = set(re.findall(r"@([A-Za-z0-9_.-]+)", text))
    assert used <= declared
    assert re.search(r"\tset g4_db \{ type ipv4_addr; elements = \{ 10\.0\.1\.1 \}; \}", text)
    assert re.search(r"\tset g6_web \{ type ipv6_addr; elements = \{ 2001:db8::5 \}; \}", text)


def test_inner_access_after_rules_before_default(rendered):
    _, text = rendered
    body = chains_of(text)[chain_name("eth0", "inbound")]
    inner = CounterKey("eth0", "inbound", None, "default", "accept")
    default = CounterKey("eth0", "inbound", None, "default", "drop")
    assert body[-3:] == [f"ip saddr @g4_web counter name {counter_name(inner)} return",
                         f"ip6 saddr @g6_web counter name {counter_name(inner)} return",
                         f"counter name {counter_name(default)} drop"]
    assert not any(refs(s, inner) or refs(s, default) for s in body[:-3])


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_host_defaults_change_the_final_verdict(rendering):
    rs = compile_document(document(defaults={"inbound": "accept", "outbound": "drop"}))
    ch = chains_of(render_text(rs, rendering))
    accept = CounterKey("eth0", "inbound", None, "default", "accept")
    drop = CounterKey("eth0", "outbound", None, "default", "drop")
    assert ch[chain_name("eth0", "inbound")][-1] == f"counter name {counter_name(accept)} return"
    assert ch[chain_name("eth0", "outbound")][-1] == f"counter name {counter_name(drop)} drop"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_counter_comment_round_trip_for_odd_identities(rendering):
    doc = load(raw({"g.1_x-y": {"rules": [rule(id="a:b@c/d-e.f_g"), rule()]}},
                   failsafe=[{"direction": "outbound", "protocol": "udp",
                              "destination": "10.0.0.0/8"}],
                   nics=[{"name": "eth@0", "security_groups": ["g.1_x-y"]}]))
    rs = compile_document(doc)
    comments = dict(declared_counters(render_text(rs, rendering)))
    keys = [k for c in rs.chains for k in c.counters]
    assert {parse_comment(comments[counter_name(k)]) for k in keys} == set(keys)
    assert CounterKey("eth@0", "outbound", None, "failsafe/0", "accept") in keys
    assert CounterKey("eth@0", "inbound", "g.1_x-y", "a:b@c/d-e.f_g", "accept") in keys


def test_same_rule_on_two_nics_has_two_counters(rendered):
    _, text = rendered
    a, b = key("http", policy="accept"), key("http", nic="eth1", policy="accept")
    assert counter_name(a) != counter_name(b)
    assert counter_name(a) in text and counter_name(b) in text


# --------------------------------------------------------------------------- linear rendering


def statements_for(text: str, k: CounterKey) -> list[str]:
    return [s for s in chains_of(text)[chain_name(k.nic, k.direction)] if refs(s, k)]


def rejects(statement: str, proto: str, chains: dict[str, list[str]]) -> bool:
    """Does this statement reject the way SEMANTICS section 3 says for ``proto`` (tcp reset,
    otherwise ICMP administratively prohibited), inline or by a jump to a reject chain?"""
    m = re.search(r"\b(?:goto|jump) (\S+)$", statement)
    if m:
        return chains.get(m.group(1)) == REJECT_CHAIN_BODY
    if proto == "tcp":
        return statement.endswith("reject with tcp reset")
    return statement.endswith("reject with icmpx admin-prohibited")


def test_linear_reject_tcp_is_a_tcp_reset(linear):
    _, text = linear
    chains = chains_of(text)
    for rid in ("no-telnet", "no-ssh"):
        stmts = statements_for(text, key(rid))
        assert stmts, rid
        assert all(rejects(s, "tcp", chains) for s in stmts), stmts


@pytest.mark.parametrize("rid", ["no-dns", "no-icmp"])
def test_linear_reject_other_protocols_is_admin_prohibited(linear, rid):
    _, text = linear
    stmts = statements_for(text, key(rid))
    assert stmts
    assert all(rejects(s, "other", chains_of(text)) for s in stmts), stmts


def test_linear_reject_all_protocols_resets_tcp_and_prohibits_the_rest(linear):
    _, text = linear
    chains = chains_of(text)
    stmts = statements_for(text, key("no-bad"))
    assert all("198.51.100.0/24" in s for s in stmts)
    if len(stmts) == 1:  # one jump to a chain that does both
        assert rejects(stmts[0], "any", chains) and re.search(r"(goto|jump) ", stmts[0])
    else:
        assert len(stmts) == 2
        assert "meta l4proto tcp" in stmts[0] and rejects(stmts[0], "tcp", chains)
        assert rejects(stmts[1], "other", chains)


def test_linear_accept_and_drop_verdicts(linear):
    _, text = linear
    accept = statements_for(text, key("http", policy="accept"))
    assert len(accept) == 2 and all(s.endswith(" return") for s in accept)  # v4 and v6
    drop = statements_for(text, key("block", direction="outbound", policy="drop"))
    assert drop and all(s.endswith(" drop") and "daddr 203.0.113.0/24" in s for s in drop)
    group = statements_for(text, key("from-db", policy="accept"))
    assert any(s.startswith("ip saddr @g4_db ") for s in group)


def test_linear_rules_appear_in_decision_order(linear):
    rs, text = linear
    for chain in rs.chains:
        body = chains_of(text)[chain_name(chain.nic, chain.direction)]
        spans = []
        for d in chain.decisions:
            idx = [i for i, s in enumerate(body) if refs(s, d.counter)]
            if d.matches:
                assert idx, d.counter
                spans.append((min(idx), max(idx)))
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))


# --------------------------------------------------------------------------- set rendering


COUNT = re.compile(r"counter name \"?(c_[0-9a-f]+)\"?")


def target(verdict: str, chains: dict[str, list[str]]) -> tuple[str, list[str]]:
    """A map element's verdict is a goto to a decision's chain: (counter it counts on, the
    statements that follow the count)."""
    m = re.fullmatch(r"goto (\S+)", verdict)
    assert m, verdict
    body = chains[m.group(1)]
    counters = {c for s in body for c in COUNT.findall(s)}
    assert len(counters) == 1, body
    return counters.pop(), [" ".join(COUNT.sub("", s).split()) for s in body]


def counting_statements(text: str) -> list[tuple[str, str, list[str], bool]]:
    """Every place a packet is counted and decided in the set rendering: (counter, match,
    what follows the count, whether by a map), from class chains' rules and from verdict-map
    elements (which jump to a decision's counting chain)."""
    maps, chains = maps_of(text), chains_of(text)
    out = []
    for name, body in chains.items():
        if not name.startswith("k_"):
            continue
        for s in body:
            m = COUNT.search(s)
            if m:
                out.append((m.group(1), s[:m.start()].strip(), [s[m.end():].strip()], False))
            lookup = re.fullmatch(r"(.*) vmap @(\S+)", s)
            if lookup:
                for k, v in maps[lookup.group(2)].items():
                    counter, rest = target(v, chains)
                    out.append((counter, f"{lookup.group(1)} {k}", rest, True))
    return out


@pytest.mark.skipif("sets" not in RENDERINGS, reason="no set rendering")
def test_sets_address_lookups_per_family_then_a_class_chain():
    rs = compile_document(document())
    text = render_text(rs, "sets")
    maps, chains = maps_of(text), chains_of(text)
    for c in rs.chains:
        body = chains[chain_name(c.nic, c.direction)]
        lookups = [s for s in body if " vmap @" in s]
        addr = "saddr" if c.direction == "inbound" else "daddr"
        want = [f"{ip} {addr} vmap @{kind}{fam}_{chain_name(c.nic, c.direction)}"
                for ip, fam in (("ip", 4), ("ip6", 6)) for kind in "ha"
                if any(m.family == fam for d in c.decisions for m in d.matches)]
        assert lookups == want  # per family with rules: exactly (hash), then by interval
        groups = [s for s in body if re.fullmatch(rf"ip6? {addr} @g[46]_\S+ goto k_\S+", s)]
        # after them, the member set of each group that is a peer, while they are few (for
        # members inside no network)
        want_groups = {(m.family, m.group) for d in c.decisions for m in d.matches if m.group}
        assert len(groups) == len(want_groups)
        for s in groups:
            fam = 6 if s.startswith("ip6") else 4
            assert body.index(s) > body.index(f"{'ip' if fam == 4 else 'ip6'} {addr} vmap "
                                              f"@a{fam}_{chain_name(c.nic, c.direction)}")
        tail_chain = "t_" + chain_name(c.nic, c.direction)
        if lookups:  # the NIC chain ends as its class chains do: inner access, default
            last = max(i for i, r in enumerate(body) if " vmap @" in r or " goto k_" in r)
            assert body[last + 1:] == chains[tail_chain]
        for s in lookups:
            for k, v in maps[s.rsplit("@", 1)[1]].items():
                m = re.fullmatch(r"goto (k_\S+)", v)
                assert m, (k, v)
                # a class chain decides by protocol and port, then goes to the tail (or, for
                # a single address, to the class chain of the networks around it)
                name = m.group(1)
                while chains[name][-1] != f"goto {tail_chain}":
                    assert re.fullmatch(r"goto k_\S+", chains[name][-1]), chains[name]
                    name = chains[name][-1].split()[1]
                assert not any("saddr" in r or "daddr" in r for r in chains[name])


@pytest.mark.skipif("sets" not in RENDERINGS, reason="no set rendering")
@pytest.mark.parametrize("many", [False, True])
def test_sets_verdicts_follow_the_deciding_rule(many):
    doc = document()
    if many:  # more deciding rules per protocol than fit as rules: verdict maps
        doc = load(raw({"web": {"rules": [
            rule(id=f"r{i}", policy=["accept", "drop", "reject"][i % 3], ports=100 + i)
            for i in range(12)] + [rule(id=f"u{i}", protocol="udp", policy="reject", ports=i + 1)
                                   for i in range(10)]}}))
    rs = compile_document(doc)
    text = render_text(rs, "sets")
    owner = {counter_name(k): k for c in rs.chains for k in c.counters}
    seen = set()
    # the class chains' tail (inner access, default) is checked with the NIC chains
    found = [f for f in counting_statements(text) if owner[f[0]].rule != "default"]
    assert all(by_map for *_, by_map in found) == many
    for counter, match, rest, by_map in found:
        policy = owner[counter].policy
        seen.add(policy)
        if by_map:
            want = {"accept": ["return"], "drop": ["drop"],
                    "reject": [s.strip() for s in REJECT_CHAIN_BODY]}[policy]
        elif policy == "reject":  # tcp reset for tcp, icmpx admin-prohibited otherwise
            want = ["reject with tcp reset" if match.startswith(("tcp ", "meta l4proto tcp"))
                    else "reject with icmpx admin-prohibited"]
        else:
            want = [{"accept": "return", "drop": "drop"}[policy]]
        assert rest == want, (counter, match, rest)
    assert seen == {"accept", "drop", "reject"}


@pytest.mark.skipif("sets" not in RENDERINGS, reason="no set rendering")
def test_sets_reject_keys_are_the_rules_own():
    found = counting_statements(render_text(compile_document(document()), "sets"))
    telnet = [m for c, m, *_ in found if c == counter_name(key("no-telnet"))]
    assert telnet and all(m == "tcp dport 23" for m in telnet)
    icmp = [m for c, m, *_ in found if c == counter_name(key("no-icmp"))]
    assert icmp and all(m in ("meta l4proto icmp", "icmp type 0-255") for m in icmp)
