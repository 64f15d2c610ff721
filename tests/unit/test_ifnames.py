"""Interface names (SEMANTICS section 1) and the one function that writes names and strings into
ruleset text: a name is refused, or it reaches nftables as exactly itself, never as a pattern.
(The kernel half, loading such rulesets in a namespace, is tests/kernel/test_ifnames.py.)"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.load import DocumentError, parse_bytes
from sgagent.model import interface_name_problem
from sgagent.nft.names import counter_comment, nft_string, set_name
from sgagent.nft.render import render

from ._docs import errors, load, raw, rule


def doc_with_nic(name: str) -> dict:
    return raw({"sg-web": {"rules": [rule(ports=22, id="ssh")]}},
               nics=[{"name": name, "security_groups": ["sg-web"]}])


def kernel_takes(name: str) -> bool:
    """linux/net/core/dev.c dev_valid_name, with lib/ctype.c's isspace (bytes 9-13, 32, 0xa0)."""
    raw_name = name.encode("utf-8", "surrogatepass")
    return (0 < len(raw_name) < 16 and name not in (".", "..")
            and not any(b in b"/:" or b in (9, 10, 11, 12, 13, 32, 0xA0) for b in raw_name))


def nft_reads(text: str) -> list[str]:
    """The strings nft's scanner reads from ruleset text: ``quotedstring \\"[^"]*\\"``."""
    return re.findall(r'"([^"]*)"', text)


REFUSED = [
    ("eth*", "wildcard"), ("l*", "wildcard"), ("*", "wildcard"),       # patterns
    ("eth\\", "backslash"), ("eth\\*", "backslash"),                  # escapes
    ("eth0\n", "whitespace"), ("\neth0", "whitespace"),               # IFNAME_RE's `$`
    ("eth\x00", "control"), ("eth\x07", "control"), ("e\x7fth", "control"),
    ("e\x85th", "whitespace"), ("e\x9bth", "control"),
    ("é" * 9, "18 bytes"), ("x" * 16, "16 bytes"), ("", "0 bytes"),
    ("lo", "loopback"), (".", "'.'"), ("..", "'.'"),
    ("a/b", "slash"), ("a:b", "colon"), ("a b", "whitespace"), ("a\tb", "whitespace"),
    ("a\u2003b", "whitespace"), ("a\u00a0b", "whitespace"),
    ("à0", "0xa0"), ("Ġ", "0xa0"),                                    # the kernel's isspace
    ('a"b', "double quote"), ("a|b", "'|'"), ("eth%d", "'%'"),
]


@pytest.mark.parametrize("name,why", REFUSED)
def test_refused_names(name, why):
    errs = errors(doc_with_nic(name))
    assert errs[0].startswith("host.nics[0].name: ") and "is not an interface name" in errs[0]
    assert why in errs[0], errs
    assert "\n" not in errs[0] and "\x00" not in errs[0]


ACCEPTED = ["eth0", "ens3f0np0", "veth-1.2_a", "x" * 15, "é" * 7, "ａｂｃ", "a#b", "a'b",
            "a$b;{}", "@x", "-", "0", "Lo", "LO", "lo0", "eth0.100", "br-0123456789ab"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_names_reach_the_ruleset_as_themselves(name):
    doc = load(doc_with_nic(name))
    assert interface_name_problem(name) is None and kernel_takes(name)
    for rendering in ("sets", "linear"):
        text = render(compile_document(doc), rendering).text()
        assert f'iifname vmap {{ "{name}" : jump ' in text
        assert f'oifname vmap {{ "{name}" : jump ' in text
        # every quoted string nft reads from the text is the name or a comment beginning with it
        for s in nft_reads(text):
            assert s == name or s.startswith(name + "|"), s


def test_a_name_from_json_with_a_lone_surrogate_is_refused():
    text = json.dumps(doc_with_nic("PLACEHOLDER")).replace("PLACEHOLDER", "eth\\ud800")
    with pytest.raises(DocumentError) as info:
        parse_bytes(text.encode())
    assert info.value.errors[0].startswith("host.nics[0].name: 'eth\\ud800' is not an interface")


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(min_size=0, max_size=18),
                 st.text(st.characters(codec="utf-8"), min_size=1, max_size=16),
                 st.text(st.sampled_from('abé0*\\"|%:/ .\n\t\x00\x07lo'), max_size=6)))
def test_any_string_is_refused_or_rendered_exactly(name):
    """Validation refuses it, or the compiled text carries exactly it in every place."""
    try:
        doc = load(doc_with_nic(name))
    except DocumentError as exc:
        assert exc.errors[0].startswith("host.nics[0].name: ")
        return
    assert kernel_takes(name), "validation accepted a name the kernel refuses"
    assert name != "lo" and not set(name) & set('*\\"')
    text = render(compile_document(doc), "sets").text()
    bare = re.sub(r'"[^"]*"', '""', text)                     # the text outside strings
    assert bare.count("{") == bare.count("}") and len(bare.splitlines()) == len(text.splitlines())
    strings = nft_reads(text)
    assert strings.count(name) == len(re.findall(r"\t[io]ifname vmap \{ ", text)) == 4
    assert all(s == name or s.startswith(name + "|") for s in strings)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=20))
def test_nft_string_is_exact_or_refuses(text):
    try:
        quoted = nft_string(text)
    except ValueError:
        assert not text or set(text) & set('"\\*') or any(
            ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
        return
    assert quoted == f'"{text}"' and nft_reads(quoted) == [text]


def test_nft_string_refuses_what_nft_would_misread():
    for bad in ['a"b', "a\\b", "a*", "*", "a\nb", "a\x00", "", "\ud800"]:
        with pytest.raises(ValueError):
            nft_string(bad)


def test_counter_comments_go_through_the_same_function(monkeypatch):
    """Comments are quoted by nft_string, not escaped: the old quote() wrote `\\"`, which nft
    reads as the end of the string."""
    from sgagent.nft import objects
    seen = []
    monkeypatch.setattr(objects, "nft_string", lambda s: seen.append(s) or f'"{s}"')
    objs = render(compile_document(load(doc_with_nic("eth0"))), "sets")
    objs.text()
    assert sorted(seen) == sorted(objs.counters.values())


@pytest.mark.parametrize("field,value", [("group", "sg-web\n"), ("id", "ssh\n")])
def test_group_names_and_rule_ids_are_matched_whole(field, value):
    """NAME_RE and RULE_ID_RE ended in `$`, which matched before a trailing newline: the newline
    then reached set names and counter comments."""
    if field == "group":
        data = raw({value: {"rules": [rule(ports=22)]}},
                   nics=[{"name": "eth0", "security_groups": [value]}])
        path = "security_groups"
    else:
        data = raw({"sg-web": {"rules": [rule(ports=22, id=value)]}})
        path = "security_groups.sg-web.rules[0].id"
    errs = errors(data)
    assert any(e.startswith(f"{path}: 'ssh\\n'") or e.startswith(f"{path}: 'sg-web\\n'")
               for e in errs), errs


def test_set_names_of_unsafe_names_are_hashed():
    assert set_name("sg-web", 4) == "g4_sg-web"
    assert re.fullmatch(r"g4_x[0-9a-f]{12}", set_name("sg-web\n", 4))


def test_counter_comment_of_a_valid_name_renders():
    doc = load(doc_with_nic("é" * 7))
    objs = render(compile_document(doc), "sets")
    for comment in objs.counters.values():
        assert nft_string(comment) == f'"{comment}"'
    assert any(counter_comment_nic(c) == "é" * 7 for c in objs.counters.values())


def counter_comment_nic(comment: str) -> str:
    return comment.split("|", 1)[0]


def test_counter_comment_round_trip_uses_the_separator_refused_in_names():
    from sgagent.ir import CounterKey
    from sgagent.nft.names import parse_comment
    key = CounterKey("eth0", "inbound", "sg-web", "ssh", "accept")
    assert parse_comment(counter_comment(key)) == key
