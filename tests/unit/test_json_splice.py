"""A JSON document text read group by group (issue 10): DocumentCache.parse_bytes parses only
the group whose value changed in the text, with exactly the result of reading the text whole --
the same Document, or the same errors in the same order -- over random sequences of document
edits written in several JSON layouts, and of raw text edits (valid or not: broken syntax,
keys twice, NaN, deep nesting)."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.load import MAX_DEPTH, DocumentCache, DocumentError, json_layout, parse_bytes, spliced

from .test_compiler import gen_document
from .test_host_edits import host_edit


def whole(raw: bytes):
    try:
        return parse_bytes(raw)
    except DocumentError as exc:
        return exc.errors


def cached(cache: DocumentCache, raw: bytes):
    try:
        return cache.parse_bytes(raw)
    except DocumentError as exc:
        return exc.errors


def text_edit(text: str, rnd: random.Random) -> str:
    """``text`` with a few characters replaced, inserted or deleted somewhere, or one of the
    JSON problems parse_text names put in."""
    kind = rnd.choice(["chars", "chars", "insert", "delete", "twice", "nan", "deep", "bom"])
    i = rnd.randrange(len(text))
    if kind == "chars":
        return text[:i] + "".join(rnd.choices('{}[],:"0a \n\\', k=rnd.randint(1, 3))) + \
            text[i + rnd.randint(0, 3):]
    if kind == "insert":
        return text[:i] + rnd.choice([' ', '1', '"x"', ', "k": 1', '{}', '[1]']) + text[i:]
    if kind == "delete":
        return text[:i] + text[i + rnd.randint(1, 5):]
    key = text.find('"direction"', i)
    if key < 0:
        key = text.find('"direction"')
    if key < 0:
        return text
    if kind == "twice":
        return text[:key] + '"direction": "inbound", ' + text[key:]
    if kind == "nan":
        return text[:key] + '"priority": NaN, ' + text[key:]
    if kind == "deep":
        return text[:key] + '"x": ' + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + ", " + \
            text[key:]
    return "\ufeff" + text


def dumps(raw: dict, layout: tuple) -> bytes:
    indent, sort = layout
    return json.dumps(raw, indent=indent, sort_keys=sort).encode()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_document_edits_read_as_a_whole_read(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    layout = (rnd.choice([None, 1, 2]), rnd.randrange(2) == 0)
    cache = DocumentCache()
    cache.parse_bytes(dumps(raw, layout))
    for _ in range(8):
        new = host_edit(raw, rnd)
        text = dumps(new, layout)
        want = whole(text)
        assert cached(cache, text) == want
        if not isinstance(want, list):
            raw = new


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_text_edits_read_as_a_whole_read(seed):
    rnd = random.Random(seed)
    text = dumps(gen_document(rnd), (rnd.choice([None, 1]), False)).decode()
    cache = DocumentCache()
    cache.parse_bytes(text.encode())
    for _ in range(6):
        new = text_edit(text, rnd)
        want = whole(new.encode())
        assert cached(cache, new.encode()) == want
        if not isinstance(want, list):
            text = new


def _doc() -> dict:
    return {"version": 1, "host": {"instance": "i", "nics": [
        {"name": "eth0", "security_groups": ["a", "b"]}]},
        "security_groups": {n: {"rules": [
            {"direction": "inbound", "protocol": "tcp", "ports": 22 + k, "source": "10.0.0.0/8"}
            for k in range(3)]} for n in ("a", "b", "c")}}


def test_an_edit_inside_one_group_parses_that_group_alone():
    raw = _doc()
    text = json.dumps(raw, indent=1)
    data, spans = json_layout(text)
    assert data == raw and list(spans) == [("host",)] + [("security_groups", n) for n in "abc"]
    assert [json.loads(text[x:y]) for x, y in spans.values()] == \
        [raw["host"], *raw["security_groups"].values()]
    new = json.loads(text)
    new["security_groups"]["b"]["rules"][1]["ports"] = 8080
    new_text = json.dumps(new, indent=1)
    got, new_spans = spliced((text, spans), data, new_text)
    assert got == new
    for n in ("a", "c"):  # the very same objects: not parsed again
        assert got["security_groups"][n] is data["security_groups"][n]
    assert got["security_groups"]["b"] is not data["security_groups"]["b"]
    assert [json.loads(new_text[x:y]) for x, y in new_spans.values()] == \
        [new["host"], *new["security_groups"].values()]


def test_a_binding_edit_parses_the_host_alone():
    raw = _doc()
    text = json.dumps(raw)
    data, spans = json_layout(text)
    new = json.loads(text)
    new["host"]["nics"][0]["security_groups"] = ["b"]
    got, _ = spliced((text, spans), data, json.dumps(new))
    assert got == new and got["host"] is not data["host"]
    assert got["security_groups"] is data["security_groups"]


def test_an_edit_across_two_groups_or_outside_them_is_read_whole():
    raw = _doc()
    text = json.dumps(raw)
    data, spans = json_layout(text)
    two = json.loads(text)
    two["security_groups"]["a"]["rules"][0]["ports"] = 1
    two["security_groups"]["c"]["rules"][0]["ports"] = 1
    assert spliced((text, spans), data, json.dumps(two)) is None
    both = json.loads(text)
    both["host"]["nics"][0]["security_groups"] = ["a"]
    both["security_groups"]["a"]["rules"][0]["ports"] = 1
    assert spliced((text, spans), data, json.dumps(both)) is None
    renamed = text.replace('"b": {', '"bb": {')
    assert spliced((text, spans), data, renamed) is None


def test_a_key_twice_inside_the_edited_group_is_refused_as_a_whole_read_refuses_it():
    raw = _doc()
    text = json.dumps(raw)
    cache = DocumentCache()
    cache.parse_bytes(text.encode())
    bad = text.replace('"ports": 23', '"ports": 23, "ports": 24', 1)
    errors = cached(cache, bad.encode())
    assert errors == whole(bad.encode())
    assert errors and "appears twice" in errors[0]


def test_yaml_is_read_whole_and_the_same():
    cache = DocumentCache()
    text = "version: 1\nhost:\n  instance: i\n  nics: [{name: eth0}]\n"
    assert json_layout(text) is None
    assert cache.parse_bytes(text.encode()) == parse_bytes(text.encode())
